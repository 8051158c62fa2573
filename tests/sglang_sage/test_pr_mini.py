"""`pr` on the miniature release of test_patcher.py (seconds, not minutes: the mutation run of pr.py uses it;
test_pr.py does the same on the real 0.5.17 checkout)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from sglang_sage import patcher, pr
from sglang_sage.errors import SageError

_spec = importlib.util.spec_from_file_location("_mini_release", Path(__file__).with_name("test_patcher.py"))
mini = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mini)  # type: ignore[union-attr]

world = mini.world  # the module-scoped fixture: patches/9.9.9 and overlay/


def git(repo: Path, *args: str) -> str:
    return mini.git(repo, *args).strip()


@pytest.fixture
def co(tmp_path: Path) -> Path:
    root = mini.make_checkout(tmp_path / "co")
    git(root, "tag", "v9.9.9")
    return root


def prepare(world: dict[str, Path], co: Path, out: Path, **kw: object) -> pr.PrResult:
    return pr.prepare(co, out, overlay_root=world["overlay"], patches_root=world["patches"], **kw)  # type: ignore[arg-type]


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref") + "\nHEAD " + git(repo, "symbolic-ref", "HEAD")


def test_branch_mails_and_self_check(world: dict[str, Path], co: Path, tmp_path: Path, digest) -> None:
    before = digest(co / "python")
    head = git(co, "rev-parse", "HEAD")
    out = tmp_path / "out"
    seen: list[str] = []
    res = prepare(world, co, out, progress=seen.append)
    assert res.exit_code == 0 and res.verdict.ok, res.verdict.details
    assert digest(co / "python") == before and git(co, "rev-parse", "HEAD") == head  # work tree and HEAD untouched
    assert git(co, "status", "--porcelain") == ""
    assert (res.target, res.version, res.branch, res.base, res.head) == (
        str(co.resolve()), "9.9.9", "sage-attn/9.9.9", head, "refs/heads/master"
    )  # fmt: skip
    tip = git(co, "rev-parse", "sage-attn/9.9.9")
    assert [c.sha for c in res.commits] == git(co, "rev-list", "--reverse", f"{head}..{tip}").splitlines()
    assert [(c.subject, c.step, [f.path for f in c.files]) for c in res.commits] == [
        (
            "Add the sage_attn attention backend (8-bit SageAttention)",
            "overlay",
            ["python/sglang/srt/deep/er/k.py", "python/sglang/srt/sage.py", "test/registered/test_sage.py"],
        ),
        ("Register sage", "0001-register.patch", ["python/sglang/srt/args.py", "python/sglang/srt/registry.py"]),
        ("deps", "0002-pyproject.edit.toml", ["python/pyproject.toml"]),
    ]
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "0001-Add-the-sage_attn-attention-backend-8-bit-SageAttent.patch",
        "0002-Register-sage.patch",
        "0003-deps.patch",
        "PR.md",
    ]
    assert res.written == [str(out / n) for n in names]
    mail = (out / "0002-Register-sage.patch").read_text()
    assert "From: t <t@t>\nDate: Sat, 21 Nov 2026 00:00:00 +0000\nSubject: [PATCH 2/3] Register sage\n" in mail
    assert (
        git(co, "log", "-1", "--format=%an <%ae>|%ad", "--date=iso-strict", tip + "~1")
        == "t <t@t>|2026-11-21T00:00:00+00:00"
    )
    body = git(co, "log", "-1", "--format=%B", tip + "~1")
    assert body.startswith("Register sage\n\nregister the sage backend\n") and "Origin: vendor" in body
    v = res.verdict
    assert v.git_am and v.am_tree == v.branch_tree == v.apply_tree == git(co, "rev-parse", tip + "^{tree}")
    assert v.style_checked == 5 and v.style_error == "" and v.style_problems == [] and v.details == []
    assert res.message == (
        f"branch sage-attn/9.9.9: 3 commit(s) on {head[:12]}; 3 patch(es) and PR.md in {out}; git am on a fresh "
        f"clone and apply both give tree {v.branch_tree[:12]}; HEAD still master"
    )
    assert seen[:2] == ["checking the checkout", "static API check of the overlay"]
    assert "checking the series (git am and apply on fresh clones)" in seen
    md = (out / "PR.md").read_text()
    assert "Register sage" in md and "sage-attn/9.9.9" in md
    again = json.loads(json.dumps(res.to_json()))
    assert again["verdict"]["ok"] and again["exit_code"] == 0 and again["command"] == "pr"


def test_same_base_same_commit_ids(world: dict[str, Path], co: Path, tmp_path: Path) -> None:
    first = [c.sha for c in prepare(world, co, tmp_path / "a").commits]
    git(co, "branch", "-D", "sage-attn/9.9.9")
    assert [c.sha for c in prepare(world, co, tmp_path / "b").commits] == first


def test_author_option(world: dict[str, Path], co: Path, tmp_path: Path) -> None:
    res = prepare(world, co, tmp_path / "out", author="Jane Doe <jane@example.org>")
    tip = git(co, "rev-parse", "sage-attn/9.9.9")
    assert (
        git(co, "log", "--format=%an <%ae>", f"{res.base}..{tip}").splitlines() == ["Jane Doe <jane@example.org>"] * 3
    )


def test_self_check_applies_to_the_base(world: dict[str, Path], co: Path, tmp_path: Path, monkeypatch) -> None:
    real = pr.patcher.apply
    seen: list[tuple[str, bool]] = []

    def spy(t, **kw):  # type: ignore[no-untyped-def]
        state = patcher.status(t).state
        report = real(t, **kw)
        seen.append((state, report.changed))
        return report

    monkeypatch.setattr(pr.patcher, "apply", spy)
    assert prepare(world, co, tmp_path / "out").verdict.ok
    assert seen == [(patcher.PRISTINE, True)]


def test_self_check_mismatch_keeps_the_output(world: dict[str, Path], co: Path, tmp_path: Path, monkeypatch) -> None:
    real = pr.patcher.apply

    def apply_plus_one(t, **kw):  # type: ignore[no-untyped-def]
        report = real(t, **kw)
        (t.layout.root / "python/sglang/extra.py").write_text("x = 1\n")
        return report

    monkeypatch.setattr(pr.patcher, "apply", apply_plus_one)
    res = prepare(world, co, tmp_path / "out")
    assert res.exit_code == 1 and not res.verdict.ok and res.verdict.git_am
    assert res.verdict.am_tree == res.verdict.branch_tree != res.verdict.apply_tree
    assert any("extra.py" in d for d in res.verdict.details)
    assert res.message.startswith("self-check FAILED")
    assert (tmp_path / "out" / "PR.md").is_file() and git(co, "rev-parse", "--verify", "-q", "sage-attn/9.9.9")


def test_failure_after_the_branch_rolls_back(world: dict[str, Path], co: Path, tmp_path: Path, monkeypatch) -> None:
    before, objects = refs(co), git(co, "count-objects")

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(pr, "render_pr", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(world, co, tmp_path / "out")
    assert refs(co) == before and not (tmp_path / "out").exists()
    assert git(co, "count-objects") == objects  # the commits' objects were unpublished again


@pytest.mark.parametrize(
    "case", ["dirty", "branch exists", "out inside", "out not empty", "applied", "not git", "no commit"]
)
def test_refusals_change_nothing(world: dict[str, Path], co: Path, tmp_path: Path, digest, case: str) -> None:
    out = tmp_path / "out"
    if case == "dirty":
        (co / "python/sglang/srt/args.py").write_text("dirty\n")
        want = "uncommitted changes"
    elif case == "branch exists":
        git(co, "branch", "sage-attn/9.9.9")
        want = "branch sage-attn/9.9.9 already exists (delete it: git branch -D sage-attn/9.9.9)"
    elif case == "out inside":
        out = co / "out"
        want = "is inside the checkout"
    elif case == "out not empty":
        out.mkdir()
        (out / "old.patch").write_text("x")
        want = "exists and is not an empty directory"
    elif case == "applied":
        patcher.apply(patcher.open_target(co, world["overlay"], world["patches"]))
        git(co, "add", "-A")
        git(co, "commit", "-qm", "applied")
        want = "not a pristine SGLang 9.9.9 checkout"
    elif case == "not git":
        import shutil

        shutil.rmtree(co / ".git")
        want = "not a git checkout but a checkout without .git"
    else:
        import shutil

        shutil.rmtree(co / ".git")
        git(co, "init", "-q")
        want = "HEAD has no commit yet"
    before = digest(co)
    with pytest.raises(SageError) as info:
        prepare(world, co, out)
    assert want in info.value.message, info.value.message
    assert digest(co) == before
    assert case == "out not empty" or not out.exists() or case == "out inside"


def test_json_and_commit_messages_in_full(world: dict[str, Path], co: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = prepare(world, co, out)
    v = res.verdict
    tree = v.branch_tree
    assert res.to_json() == {
        "command": "pr",
        "target": str(co.resolve()),
        "version": "9.9.9",
        "branch": "sage-attn/9.9.9",
        "base": res.base,
        "head": "refs/heads/master",
        "out": str(out),
        "exit_code": 0,
        "message": res.message,
        "commits": [
            {
                "sha": c.sha,
                "subject": c.subject,
                "step": c.step,
                "files": [
                    {"path": f.path, "source": f.source, "added": f.added, "removed": f.removed} for f in c.files
                ],
            }
            for c in res.commits
        ],
        "written": res.written,
        "skipped_steps": [],
        "verdict": {
            "ok": True,
            "git_am_applies": True,
            "am_tree": tree,
            "branch_tree": tree,
            "apply_tree": tree,
            "am_tree_equals_branch": True,
            "apply_tree_equals_branch": True,
            "style_ok": True,
            "style_checked": 5,
            "style_error": "",
            "style_problems": [],
            "details": [],
        },
        "warnings": [],
    }
    files = [(f.path, f.source, f.added, f.removed) for c in res.commits for f in c.files]
    assert files == [
        ("python/sglang/srt/deep/er/k.py", "overlay/sglang/srt/deep/er/k.py", 1, 0),
        ("python/sglang/srt/sage.py", "overlay/sglang/srt/sage.py", 1, 0),
        ("test/registered/test_sage.py", "overlay/test/registered/test_sage.py", 2, 0),
        ("python/sglang/srt/args.py", "0001-register.patch", 1, 1),
        ("python/sglang/srt/registry.py", "0001-register.patch", 1, 1),
        ("python/pyproject.toml", "0002-pyproject.edit.toml", 1, 1),
    ]
    tip = git(co, "rev-parse", "sage-attn/9.9.9")
    messages = [git(co, "log", "-1", "--format=%B", f"{tip}~{k}") for k in (2, 1, 0)]
    assert messages[1] == "Register sage\n\nregister the sage backend\n\nOrigin: vendor\nForwarded: not-needed"
    assert messages[2] == "deps\n\nOrigin: vendor\nForwarded: not-needed"
    assert messages[0].startswith("Add the sage_attn attention backend (8-bit SageAttention)\n\n")
    assert "New files:\n- python/sglang/srt/deep/er/k.py\n- python/sglang/srt/sage.py\n" in messages[0]
    assert messages[0].endswith("Origin: vendor, sglang-sage overlay/ (sha256 pinned in patches/9.9.9/manifest.toml)\n"
                                "Forwarded: not-yet")  # fmt: skip
    dates = git(co, "log", "--format=%ad|%cd", "--date=iso-strict", f"{res.base}..{tip}").splitlines()
    assert dates == ["2026-11-21T00:00:00+00:00|2026-11-21T00:00:00+00:00"] * 3


def test_failed_verdict_json(world: dict[str, Path], co: Path, tmp_path: Path, monkeypatch) -> None:
    real = pr.patcher.apply

    def apply_plus_one(t, **kw):  # type: ignore[no-untyped-def]
        report = real(t, **kw)
        (t.layout.root / "python/sglang/extra.py").write_text("x = 1\n")
        return report

    monkeypatch.setattr(pr.patcher, "apply", apply_plus_one)
    v = prepare(world, co, tmp_path / "out").verdict.to_json()
    assert (v["ok"], v["git_am_applies"], v["am_tree_equals_branch"], v["apply_tree_equals_branch"]) == (
        False, True, True, False
    )  # fmt: skip
    assert v["am_tree"] == v["branch_tree"] != v["apply_tree"] != ""
    assert v["details"] == [
        "branch vs apply: python/sglang/extra.py | 1 +",
        "branch vs apply: 1 file changed, 1 insertion(+)",
    ]


@pytest.mark.parametrize("text", ["", "Jane", "<jane@x>", "Jane jane@x"])
def test_bad_author_is_refused(text: str) -> None:
    with pytest.raises(SageError) as info:
        pr.parse_author(text)
    assert info.value.message == f"--author {text!r}: expected 'Name <user@host>'"


def test_author_and_helpers() -> None:
    a = pr.parse_author("Jane Doe <jane@example.org>")
    assert (a.name, a.email) == ("Jane Doe", "jane@example.org")
    assert pr._subject_and_body("", "Add x.\n body line\n") == ("Add x", " body line")
    assert pr._subject_and_body("Mail subject", "Mail subject.\nmore") == ("Mail subject", "more")
    assert pr._subject_and_body("Other", "First line\nmore") == ("Other", "First line\nmore")
    assert pr._subject_and_body("", "") == ("", "")
    assert pr._trailers({"Origin": " a\n  b ", "Other": "x"}) == {"Origin": "a b", "Forwarded": ""}
    assert pr._date_key("not a date") == 0.0
    assert pr._date_key("Sat, 21 Nov 2026 00:00:00 +0000") == 1795219200.0


def test_rollback_removes_what_it_published(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    d = tmp_path / "objects" / "ab"
    d.mkdir(parents=True)
    obj = d / "cdef"
    obj.write_text("x")
    kept = tmp_path / "objects" / "cd"
    kept.mkdir()
    (kept / "other").write_text("y")  # a directory that still holds someone else's object stays
    out = tmp_path / "out"
    out.mkdir()
    mail = out / "0001.patch"
    mail.write_text("m")
    pr._rollback(repo, "refs/heads/x", [d, obj, kept], [mail], out)
    assert not d.exists() and (kept / "other").exists() and not out.exists()
    out.mkdir()
    (out / "user-file").write_text("u")
    pr._rollback(repo, "refs/heads/x", [], [], out)
    assert (out / "user-file").exists()  # not empty: kept
