"""`apply.py pr` on the real SGLang 0.5.17 checkout (from the PyPI wheel): branch, commits, mails, PR.md,
the git am / apply self-check, and refusals that change nothing (CPU only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sglang_sage import dep3, fetch, patcher, pr, pr_text, upstream_style
from sglang_sage import errors as ec
from sglang_sage import overlay as overlay_mod
from sglang_sage.apply_cli import main
from sglang_sage.errors import SageError

REPO = Path(__file__).resolve().parents[2]
PATCHES = REPO / "patches"
REPORT = REPO / "reports/0.5.17/nvidia-h200/report.json"
BRANCH = "sage-attn/0.5.17"
SERVER_ARGS = "python/sglang/srt/server_args.py"
PATCH_SUBJECT = "Register the sage_attn attention backend"
PATCH_AUTHOR = "sglang-sage <sglang-sage@users.noreply.github.com>"


@pytest.fixture(scope="module", autouse=True)
def formatted_overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The overlay as SGLang's formatters leave it: `pr`'s self-check fails on anything else, and whether
    overlay/ itself is formatted is tests/overlay/test_upstream_format.py's business, not this module's."""
    copy = tmp_path_factory.mktemp("overlay") / "overlay"
    shutil.copytree(REPO / "overlay", copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert upstream_style.format_in_place(sorted(copy.rglob("*.py"))) == ""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(overlay_mod, "OVERLAY_DIR", copy)
        yield copy


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def run_pr(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(["pr", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref") + "\nHEAD " + git(repo, "symbolic-ref", "HEAD")


@pytest.fixture(scope="module")
def shared_checkout(pristine_checkout: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One copy of the 72 MB co for this module (copies dominate the suite's time on 2 cores)."""
    dest = tmp_path_factory.mktemp("pr") / "sglang"
    shutil.copytree(pristine_checkout, dest, symlinks=True)
    return dest, git(dest, "symbolic-ref", "HEAD")


@pytest.fixture
def co(shared_checkout: tuple[Path, str]) -> Path:
    """The shared checkout reset to pristine v0.5.17 on its original branch, with no other branches."""
    path, head = shared_checkout
    git(path, "symbolic-ref", "HEAD", head)
    git(path, "reset", "-q", "--hard", "v0.5.17")
    git(path, "clean", "-qfdx")
    for ref in git(path, "for-each-ref", "--format=%(refname)", "refs/heads").splitlines():
        if ref != head:
            git(path, "update-ref", "-d", ref)
    shutil.rmtree(path / ".git/sglang-sage", ignore_errors=True)
    return path


def test_pr_branch_series_and_report(co: Path, tmp_path: Path, capsys) -> None:
    head, base = git(co, "symbolic-ref", "HEAD"), git(co, "rev-parse", "HEAD")
    out = tmp_path / "out"
    code, rep = run_pr(capsys, "--sglang-dir", str(co), "--out", str(out), "--report", str(REPORT))
    assert code == ec.OK, rep
    assert rep["verdict"]["ok"] and rep["verdict"]["git_am_applies"], rep["verdict"]
    assert rep["verdict"]["am_tree"] == rep["verdict"]["branch_tree"] == rep["verdict"]["apply_tree"]
    assert any("n/a: no python/pyproject.toml" in s for s in rep["skipped_steps"])

    # the branch: overlay commit, then the registration patch; DEP-3-derived messages, fixed authorship/dates
    assert git(co, "rev-list", "--count", f"{base}..{BRANCH}") == "2"
    assert git(co, "rev-parse", f"{BRANCH}~2") == base
    subjects = git(co, "log", "--reverse", "--format=%s", f"{base}..{BRANCH}").splitlines()
    assert subjects == [pr.OVERLAY_SUBJECT, PATCH_SUBJECT]
    body = git(co, "log", "-1", "--format=%B", BRANCH)
    assert 'Register the 8-bit SageAttention backend as "sage_attn".' in body
    assert "\n\nserver_args.py:" in body  # DEP-3 " ." continuation lines became paragraph breaks
    assert "Origin: vendor, sglang-sage patches/0.5.17 (written for SGLang v0.5.17)" in body
    assert body.rstrip().endswith("Forwarded: not-yet")
    overlay_body = git(co, "log", "-1", "--format=%B", f"{BRANCH}~1")
    assert "8-bit SageAttention" in overlay_body and "- python/sglang/srt/layers/attention/sage_attn_backend.py" in (
        overlay_body
    )
    for fmt, want in (("%an <%ae>", PATCH_AUTHOR), ("%cn <%ce>", PATCH_AUTHOR), ("%cI", "2026-11-21T00:00:00+00:00")):
        assert set(git(co, "log", f"--format={fmt}", f"{base}..{BRANCH}").splitlines()) == {want}

    # the checkout itself: same HEAD, clean, nothing of the overlay in its work tree
    assert git(co, "symbolic-ref", "HEAD") == head and git(co, "rev-parse", "HEAD") == base
    assert git(co, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (co / "python/sglang/srt/layers/attention/sage_attn_backend.py").exists()

    # DIR: mails + PR.md + the report's plots
    patches = sorted(p.name for p in out.glob("*.patch"))
    assert len(patches) == 2 and patches[1] == "0002-Register-the-sage_attn-attention-backend.patch"
    assert {p.name for p in out.iterdir()} == {
        *patches,
        "PR.md",
        "context_buckets.png",
        "drift_over_depth.png",
        "throughput.png",
    }
    mail = (out / patches[1]).read_text()
    assert f"From: {PATCH_AUTHOR}" in mail and "Forwarded: not-yet" in mail
    text = (out / "PR.md").read_text()
    for needle in (
        "## Motivation",
        "top-left",
        "tp_kv_head_num",
        "## Design",
        *pr_text.readme_sections(),  # one source: the README's motivation and backend bullets, verbatim
        "**No silent fallback**",
        "CUDA-graph",
        "Hybrid mode",
        f"| `{SERVER_ARGS}` | patch `0001-Register-the-sage_attn-attention-backend.patch` | 1 | 0 |",
        "| `python/sglang/srt/layers/attention/sage_attn_backend.py` | overlay",
        "python -m pytest -q test/registered/attention/test_sage_attn_kernels.py",
        "python verify.py",
        "benchmarks/bench_kernels.py",
        # the report's checks table, verbatim from report.md, and its plots next to PR.md
        "## Verification",
        _committed_verdict_line(),
        "| check | result | error |",
        _committed_check_row("| 2. logits, teacher-forced"),
        "### Criteria",
        "![throughput](throughput.png)",
        "**identical**",
        "passes SGLang's formatters",
    ):
        assert needle in text, needle
    assert "## Stages" not in text and "### Stages" not in text


def test_pr_author_and_pyproject_edit_commit(co: Path, sdist_root: Path, tmp_path: Path, capsys) -> None:
    """With a python/pyproject.toml the edit step is its own commit; --author replaces the From: line."""
    shutil.copyfile(sdist_root / "pyproject.toml", co / "python/pyproject.toml")
    git(co, "add", "python/pyproject.toml")
    git(co, "commit", "-q", "-m", "add the upstream pyproject.toml")
    base = git(co, "rev-parse", "HEAD")
    out = tmp_path / "out"
    code, rep = run_pr(capsys, "--sglang-dir", str(co), "--out", str(out), "--author", "Jane Doe <jane@example.org>")
    assert code == ec.OK and rep["verdict"]["ok"], rep
    assert [c["step"] for c in rep["commits"]] == [
        "overlay",
        "0001-Register-the-sage_attn-attention-backend.patch",
        "0002-pyproject-sage-dependencies.edit.toml",
    ]
    assert git(co, "log", "-1", "--format=%s", BRANCH) == (
        "Add jinja2 to SGLang's runtime dependencies and an optional 'sage' extra"
    )
    body = git(co, "log", "-1", "--format=%b", BRANCH)
    assert "Installed packages keep their dist-info untouched" in body and "Forwarded: not-needed" in body
    assert set(git(co, "log", "--format=%an <%ae>", f"{base}..{BRANCH}").splitlines()) == {
        "Jane Doe <jane@example.org>"
    }
    edited = git(co, "show", f"{BRANCH}:python/pyproject.toml")
    assert '"jinja2>=3.1.0"' in edited and "sageattention>=1.0.6" in edited
    assert len(list(out.glob("*.patch"))) == 3
    assert "From: Jane Doe <jane@example.org>" in next(out.glob("0003-*")).read_text()
    assert git(co, "status", "--porcelain") == ""


def test_pr_058_overlay_patch_and_real_pyproject(tmp_path: Path, capsys, monkeypatch) -> None:
    """0.5.8: the overlay commit carries the set's overlay patch (what apply installs), the real pyproject
    gets the edit commit, and both git am and apply reproduce the branch.

    On the real overlay: 0.5.8's overlay patch is made against overlay/ as committed, so a reformatted
    copy would not take it; the formatter verdict is whatever the real overlay's is (the patch must be
    regenerated when overlay/ is reformatted, and then this test expects the formatters to pass too)."""
    monkeypatch.setattr(overlay_mod, "OVERLAY_DIR", REPO / "overlay")
    real_style = upstream_style.check(sorted((REPO / "overlay").rglob("*.py")))
    co = tmp_path / "sglang"
    with tarfile.open(fetch.sdist("0.5.8")) as tf:
        tf.extractall(tmp_path, filter="data")
    co.mkdir()
    (tmp_path / "sglang-0.5.8").rename(co / "python")
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-q", "-m", "SGLang v0.5.8 (sdist)"), ("tag", "v0.5.8")):
        git(co, *args)
    code, rep = run_pr(capsys, "--sglang-dir", str(co), "--out", str(tmp_path / "out"))
    v = rep["verdict"]
    assert v["am_tree"] == v["branch_tree"] == v["apply_tree"] and v["git_am_applies"], rep
    assert v["style_ok"] == real_style.ok and code == (ec.OK if real_style.ok else ec.INTERNAL), rep
    assert [c["step"] for c in rep["commits"]][::2] == ["overlay", "0002-pyproject-sage-dependencies.edit.toml"]
    backend = git(co, "show", "sage-attn/0.5.8:python/sglang/srt/layers/attention/sage_attn_backend.py")
    assert "def init_forward_metadata_replay_cuda_graph(" in backend
    assert "def init_forward_metadata_out_graph(" not in backend
    overlay_body = git(co, "log", "-1", "--format=%b", "sage-attn/0.5.8~2")
    assert "Adapted to SGLang 0.5.8 by 0003-sage_attn-use-SGLang-0.5.8-CUDA-graph-hooks-and-CI-registration" in (
        overlay_body
    )
    assert "+ 0003-sage_attn-use-SGLang-0.5.8" in (tmp_path / "out/PR.md").read_text()


def _dirty(co: Path, tmp: Path) -> list[str]:
    (co / SERVER_ARGS).write_text((co / SERVER_ARGS).read_text() + "# local edit\n")
    return ["--sglang-dir", str(co)]


def _untracked(co: Path, tmp: Path) -> list[str]:
    (co / "notes.txt").write_text("x\n")
    return ["--sglang-dir", str(co)]


def _other_version(co: Path, tmp: Path) -> list[str]:
    for name in ("_version.py", "version.py"):
        f = co / "python/sglang" / name
        f.write_text(f.read_text().replace("0.5.17", "0.5.99"))
    git(co, "commit", "-qam", "bump")
    return ["--sglang-dir", str(co)]


def _drifted(co: Path, tmp: Path) -> list[str]:
    (co / SERVER_ARGS).write_text((co / SERVER_ARGS).read_text() + "# upstream change\n")
    git(co, "commit", "-qam", "drift")
    return ["--sglang-dir", str(co)]


def _applied(co: Path, tmp: Path) -> list[str]:
    assert patcher.apply(patcher.open_target(co), skip_api_check=True).exit_code == ec.OK
    git(co, "add", "-A")
    git(co, "commit", "-qm", "applied")
    return ["--sglang-dir", str(co)]


def _branch_exists(co: Path, tmp: Path) -> list[str]:
    git(co, "branch", BRANCH)
    return ["--sglang-dir", str(co)]


def _missing_report(co: Path, tmp: Path) -> list[str]:
    return ["--sglang-dir", str(co), "--report", str(tmp / "nope" / "report.json")]


def _broken_report(co: Path, tmp: Path) -> list[str]:
    (tmp / "report.json").write_text('{"verdict": "pass", "checks": [')
    return ["--sglang-dir", str(co), "--report", str(tmp / "report.json")]


def _bad_author(co: Path, tmp: Path) -> list[str]:
    return ["--sglang-dir", str(co), "--author", "just a name"]


def _out_inside(co: Path, tmp: Path) -> list[str]:
    return ["--sglang-dir", str(co), "--out", str(co / "pr")]


def _out_not_empty(co: Path, tmp: Path) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "0001-old.patch").write_text("old\n")
    return ["--sglang-dir", str(co)]


REFUSALS: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "dirty": (_dirty, "not clean"),
    "untracked": (_untracked, "not clean"),
    "other-version": (_other_version, "SGLang 0.5.99 is not supported"),
    "drifted-pins": (_drifted, "not a pristine SGLang 0.5.17 checkout"),
    "already-applied": (_applied, "not a pristine SGLang 0.5.17 checkout"),
    "branch-exists": (_branch_exists, f"branch {BRANCH} already exists"),
    "missing-report": (_missing_report, "no such file"),
    "broken-report": (_broken_report, "not valid JSON"),
    "bad-author": (_bad_author, "expected 'Name <user@host>'"),
    "out-not-empty": (_out_not_empty, "not an empty directory"),
    "out-inside-checkout": (_out_inside, "is inside the checkout"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_pr_refuses_and_changes_nothing(case: str, co: Path, tmp_path: Path, digest, capsys) -> None:
    setup, message = REFUSALS[case]
    argv = setup(co, tmp_path)
    out = tmp_path / "out"
    before, before_refs = digest(co), refs(co)
    out_before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    code, rep = run_pr(capsys, "--out", str(out), *argv)  # argv may name another --out
    assert code == ec.REFUSED, rep
    assert message in rep["message"], rep
    assert digest(co) == before and refs(co) == before_refs
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == out_before


def test_pr_refuses_installed_layout(installed: Path, tmp_path: Path, digest, capsys) -> None:
    before = digest(installed)
    code, rep = run_pr(capsys, "--sglang-dir", str(installed), "--out", str(tmp_path / "out"))
    assert code == ec.REFUSED and "not a git checkout" in rep["message"], rep
    assert digest(installed) == before and not (tmp_path / "out").exists()


def test_pr_failure_after_branch_rolls_back(co: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A step failing after the branch was created deletes it, the copied objects and the written files."""
    before_refs = refs(co)
    objects_before = sorted(p.relative_to(co) for p in (co / ".git/objects").rglob("*"))

    def broken(*_args: object, **_kw: object) -> pr.Verdict:
        raise SageError("self-check: simulated failure", code=ec.APPLY_FAILED)

    monkeypatch.setattr(pr, "_self_check", broken)
    out = tmp_path / "out"
    code, rep = run_pr(capsys, "--sglang-dir", str(co), "--out", str(out))
    assert code == ec.APPLY_FAILED and "self-check: simulated failure" in rep["message"], rep
    assert refs(co) == before_refs and not out.exists()
    assert sorted(p.relative_to(co) for p in (co / ".git/objects").rglob("*")) == objects_before
    assert git(co, "status", "--porcelain") == ""


def test_pr_failing_step_is_named_and_nothing_is_written(co: Path, tmp_path: Path, digest, capsys) -> None:
    """A patch that does not apply to the base tree fails inside the scratch index: .git stays byte-identical."""
    patches = tmp_path / "patches"
    shutil.copytree(PATCHES / "0.5.17", patches / "0.5.17")
    patch = patches / "0.5.17/0001-Register-the-sage_attn-attention-backend.patch"
    patch.write_text(patch.read_text().replace("     return DualChunkFlashAttentionBackend(runner)", "     return X"))
    before = digest(co)
    with pytest.raises(SageError) as err:
        pr.prepare(co, tmp_path / "out", patches_root=patches)
    assert err.value.message.startswith("0001-Register-the-sage_attn-attention-backend.patch: `git apply --cached")
    assert digest(co) == before and not (tmp_path / "out").exists()


def test_pr_self_check_mismatch_is_reported(co: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """If apply's tree differed from the series, the verdict says so and the exit code is non-zero."""
    real_apply = pr.patcher.apply

    def apply_plus_one(t, **kw):  # type: ignore[no-untyped-def]
        report = real_apply(t, **kw)
        (t.layout.root / "python/sglang/extra.py").write_text("x = 1\n")
        return report

    monkeypatch.setattr(pr.patcher, "apply", apply_plus_one)
    code, rep = run_pr(capsys, "--sglang-dir", str(co), "--out", str(tmp_path / "out"))
    assert code == ec.INTERNAL and "self-check FAILED" in rep["message"], rep
    v = rep["verdict"]
    assert not v["ok"] and v["am_tree_equals_branch"] and not v["apply_tree_equals_branch"]
    assert any("extra.py" in d for d in v["details"])
    assert "**MISMATCH**" in (tmp_path / "out/PR.md").read_text()


def test_pr_self_check_applies_to_the_base_not_to_the_branch(co: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The apply leg must start from the pristine base (the clone is reset after `git am`): applied on the
    branch's own tree it would say "already applied" and prove nothing."""
    real_apply = pr.patcher.apply
    seen: list[tuple[str, bool]] = []

    def spy(t, **kw):  # type: ignore[no-untyped-def]
        state = patcher.status(t).state
        report = real_apply(t, **kw)
        seen.append((state, report.changed))
        return report

    monkeypatch.setattr(pr.patcher, "apply", spy)
    code, rep = run_pr(capsys, "--sglang-dir", str(co), "--out", str(tmp_path / "out"))
    assert code == ec.OK and rep["verdict"]["ok"], rep
    assert seen == [(patcher.PRISTINE, True)]


def test_mail_header_and_dep3_description() -> None:
    """Folded subjects (0.5.8's overlay patch) and DEP-3 paragraphs survive into the commit message."""
    text = (PATCHES / "0.5.8/0003-sage_attn-use-SGLang-0.5.8-CUDA-graph-hooks-and-CI-registration.patch").read_text()
    mail = dep3.parse(text)
    assert mail.subject == "sage_attn: use SGLang 0.5.8's CUDA-graph hooks and CI registration"
    assert str(mail.author) == PATCH_AUTHOR and mail.date == "Sat, 21 Nov 2026 00:00:00 +0000"
    desc = dep3.parse((PATCHES / "0.5.17/0001-Register-the-sage_attn-attention-backend.patch").read_text()).description
    assert desc.startswith('Register the 8-bit SageAttention backend as "sage_attn".\nattention_registry.py')
    assert "\n\nAudited and deliberately left alone" in desc and "\n  flashinfer): _attention" in desc
    assert pr.parse_author(" A. Person <a@b.c> ") == dep3.Author("A. Person", "a@b.c")
    with pytest.raises(SageError):
        pr.parse_author("<a@b.c>")


def _committed_check_row(prefix: str) -> str:
    """A row of the committed GPU report's checks table (PR.md carries the table verbatim)."""
    report = Path(__file__).resolve().parents[2] / "reports/0.5.17/nvidia-h200/report.md"
    rows = [x for x in report.read_text().splitlines() if x.startswith(prefix)]
    assert len(rows) == 1, rows
    assert rows[0].count("|") >= 4 and ("✅" in rows[0] or "❌" in rows[0]), rows[0]
    return rows[0]


def _committed_verdict_line() -> str:
    """The verdict line of the committed GPU report, which PR.md must carry verbatim."""
    report = Path(__file__).resolve().parents[2] / "reports/0.5.17/nvidia-h200/report.md"
    line = next(x for x in report.read_text().splitlines() if x.startswith("**Verdict:"))
    assert " pass, " in line, line
    return line


def test_pr_self_check_runs_sglangs_formatters(co: Path, formatted_overlay: Path, tmp_path: Path) -> None:
    """A series file that SGLang's isort/black would rewrite fails the self-check (exit 1), naming the file."""
    overlay = tmp_path / "overlay"
    shutil.copytree(formatted_overlay, overlay)
    backend = overlay / "sglang/srt/layers/attention/sage_attn_backend.py"
    backend.write_text(backend.read_text() + "\nUNFORMATTED = {'a':1}\n")
    result = pr.prepare(co, tmp_path / "out", overlay_root=overlay)
    v = result.verdict
    assert result.exit_code == ec.INTERNAL and "would not pass SGLang's formatters" in result.message
    assert v.trees_ok and not v.ok and v.style_checked >= 8
    assert v.style_problems == [
        "python/sglang/srt/layers/attention/sage_attn_backend.py: SGLang's pre-commit (isort 7.0.0, black 24.10.0) "
        "would reformat it"
    ]
    assert "does not pass SGLang's formatters" in (tmp_path / "out/PR.md").read_text()


def test_readme_sections_are_the_pr_text() -> None:
    motivation, design = pr_text.readme_sections()
    assert motivation.startswith("Why this rewrite of the seed backend") and "tp_kv_head_num" in motivation
    assert design.startswith("* **Prefill") and "**No silent fallback**" in design and "DCP" in design
