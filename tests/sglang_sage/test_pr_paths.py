"""`pr` beyond the happy runs of test_pr_mini.py (issue 20: what its mutation run let through).

On the miniature release of test_patcher.py: the exact git plumbing of a run (every command, in which repository,
with which scratch environment, and the step a failure of it names), what each kind of failure reports and
rolls back, the self-check's failure reports (git am, formatters, trees), a user's hostile git configuration,
refusals word for word, report plots and warnings, skipped steps, overlay patches, binary files, dates and
authors of several mails, a detached HEAD. SGLang's formatters are replaced by a fake here (test_pr_mini.py runs
the real ones), so that one run takes a fraction of a second.
"""

from __future__ import annotations

import errno
import importlib.util
import inspect
import json
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sglang_sage import gitrun, patcher, pr, upstream_style
from sglang_sage.dep3 import Author
from sglang_sage.errors import APPLY_FAILED, INTERNAL, REFUSED, SageError
from sglang_sage.hashing import sha256_bytes
from sglang_sage.manifest import Manifest
from sglang_sage.overlay import discover, entries

_spec = importlib.util.spec_from_file_location("_mini_pr", Path(__file__).with_name("test_pr_mini.py"))
mini_pr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mini_pr)  # type: ignore[union-attr]
mini = mini_pr.mini  # test_patcher.py: the miniature release 9.9.9

world = mini_pr.world  # module-scoped fixture: patches/9.9.9 and overlay/
co = mini_pr.co  # a fresh checkout of the miniature release, tagged v9.9.9
git = mini_pr.git
DATE = "Sat, 21 Nov 2026 00:00:00 +0000"
BRANCH = "sage-attn/9.9.9"
MAIL_NAMES = [
    "0001-Add-the-sage_attn-attention-backend-8-bit-SageAttent.patch",
    "0002-Register-sage.patch",
    "0003-deps.patch",
]
SATISFIED = '[project]\nname = "sglang"\ndependencies = ["torch", "jinja2>=3.1.0", "tomli>=2"]\n'


def prepare(w: dict[str, Path], root: Path, out: Path, **kw: object) -> pr.PrResult:
    return pr.prepare(root, out, overlay_root=w["overlay"], patches_root=w["patches"], **kw)  # type: ignore[arg-type]


def commit_file(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-qm", f"add {rel}")


# ----------------------------------------------------------------------------- fakes


class FakeStyle:
    """SGLang's formatters, faked: reports `problems` (per file name) or `error`; remembers what it was given."""

    def __init__(self) -> None:
        self.seen: list[Path] = []
        self.problems: list[str] = []  # file names the "formatters" would change
        self.error = ""

    def __call__(self, files: list[Path], **kw: object) -> upstream_style.StyleResult:
        self.seen += files
        problems = [f"{f}: would reformat" for f in files if f.name in self.problems]
        return upstream_style.StyleResult(checked=len(files), problems=problems, error=self.error)


@pytest.fixture
def style(monkeypatch: pytest.MonkeyPatch) -> FakeStyle:
    fake = FakeStyle()
    monkeypatch.setattr(pr.upstream_style, "check", fake)
    return fake


@dataclass
class Call:
    """One git command `pr` ran: `checked` ones raise naming `step` when they fail, `run` ones are judged by pr."""

    kind: str
    step: str | None
    code: int | None
    cwd: Path | None
    args: tuple[str, ...]
    env: dict[str, str] | None
    stdin: str | None


INJECTED = gitrun.GitResult(1, "", "injected failure")
_CHECKED_DEFAULT_CODE = inspect.signature(gitrun.checked).parameters["code"].default


class GitSpy:
    """Stands in for `pr`'s git runner (sglang_sage.gitrun): records each call and fails those `fail` picks
    (it returns the result to report instead); everything else runs for real."""

    GitResult = gitrun.GitResult

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: Callable[[Call], gitrun.GitResult | None] | None = None):
        self.calls: list[Call] = []
        self.fail = fail or (lambda call: None)
        monkeypatch.setattr(pr, "gitrun", self)

    def run(self, cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None):
        call = Call("run", None, None, cwd, args, env, stdin)
        self.calls.append(call)
        return self.fail(call) or gitrun.run(cwd, *args, env=env, stdin=stdin)

    def checked(self, cwd: Path, *args: str, step: str, env=None, stdin=None, code: int = _CHECKED_DEFAULT_CODE):
        call = Call("checked", step, code, cwd, args, env, stdin)
        self.calls.append(call)
        failed = self.fail(call)
        if failed is None:
            return gitrun.checked(cwd, *args, step=step, env=env, stdin=stdin, code=code)
        with pytest.MonkeyPatch.context() as m:  # the real runner's message for a failing command
            m.setattr(gitrun, "run", lambda *a, **k: failed)
            return gitrun.checked(cwd, *args, step=step, env=env, stdin=stdin, code=code)

    def lines(self, names: dict[str, str]) -> list[str]:
        """The calls as text, with paths and object ids replaced by `names` (longest first), other ids by <oid>."""
        assert all(c.args[:2] == ("-c", "commit.gpgsign=false") for c in self.calls)  # no commit is ever signed
        assert all(c.code == APPLY_FAILED for c in self.calls if c.kind == "checked")

        def text(s: str) -> str:
            for k in sorted(names, key=len, reverse=True):
                s = s.replace(k, names[k])
            return re.sub(r"\b[0-9a-f]{40}\b", "<oid>", s)

        out = []
        for c in self.calls:
            line = f"{text(str(c.cwd))} {c.kind}{f'[{c.step}]' if c.kind == 'checked' else ''}: "
            line += text(" ".join(c.args[2:]))
            if c.env is not None:
                env = {k: text(v) for k, v in c.env.items()}
                scratch = {"GIT_INDEX_FILE": "TMP/index", "GIT_OBJECT_DIRECTORY": "TMP/objects",
                           "GIT_ALTERNATE_OBJECT_DIRECTORIES": "CO/.git/objects"}  # fmt: skip
                extra = {k: v for k, v in env.items() if k not in scratch}
                who = [
                    " ".join(
                        [
                            extra.pop(f"GIT_{r}_NAME", ""),
                            f"<{extra.pop(f'GIT_{r}_EMAIL', '')}>",
                            extra.pop(f"GIT_{r}_DATE", ""),
                        ]
                    )  # fmt: skip
                    for r in ("AUTHOR", "COMMITTER")
                ]
                assert {k: env.get(k) for k in scratch} == scratch and not extra, env
                line += " {scratch" + (f", {who[0]}" if who[0] != " <> " else "") + "}"
                assert who[0] == who[1]
            if c.stdin is not None:
                first, *more = text(c.stdin).splitlines()
                line += f" <<< {first}" + (" ..." if more else "")
            out.append(line)
        return out


def names_for(res: pr.PrResult, w: dict[str, Path], spy: GitSpy, **more: str) -> dict[str, str]:
    tmp = next(Path(c.env["GIT_INDEX_FILE"]).parent for c in spy.calls if c.env)
    names = {str(tmp): "TMP", res.target: "CO", res.out: "OUT", str(w["patches"]): "PATCHES"}
    names |= {str(w["overlay"]): "OVERLAY", res.base: "BASE", "0" * 40: "ZERO"}
    names |= {c.sha: f"C{i}" for i, c in enumerate(res.commits, 1)}
    return names | more


# ----------------------------------------------------------------------------- the plumbing of one run


def test_git_plumbing_of_one_run(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every git command of a run: the commits are made in the scratch index and object store (the user's index
    and HEAD are never touched), the self-check works in a clone with hooks off, and each command that may fail
    names its step."""
    spy = GitSpy(monkeypatch)
    seen: list[str] = []
    res = prepare(world, co, tmp_path / "out", progress=seen.append)
    assert res.exit_code == 0, (res.message, res.verdict.details)
    ident = "-c user.name=sglang-sage -c user.email=sglang-sage@localhost -c core.hooksPath=/dev/null"
    by = f"t <t@t> {DATE}"
    mails = " ".join(f"OUT/{n}" for n in MAIL_NAMES)
    assert spy.lines(names_for(res, world, spy)) == [
        "CO run: rev-parse --verify -q HEAD^{commit}",
        "CO run: symbolic-ref -q HEAD",
        f"CO run: show-ref --verify -q refs/heads/{BRANCH}",
        "CO checked[checking the checkout]: rev-parse --git-path objects",
        "CO checked[reading the base tree]: read-tree BASE {scratch}",
        "CO checked[overlay: hash-object]: hash-object -w --no-filters --stdin-paths {scratch}"
        " <<< OVERLAY/sglang/srt/deep/er/k.py ...",
        "CO checked[overlay: update-index]: update-index --add --index-info {scratch}"
        " <<< 100644 <oid>\tpython/sglang/srt/deep/er/k.py ...",
        "CO checked[overlay: write-tree]: write-tree {scratch}",
        "CO checked[overlay]: rev-parse BASE^{tree} {scratch}",
        f"CO checked[overlay: commit]: commit-tree --no-gpg-sign <oid> -p BASE -F - {{scratch, {by}}}"
        " <<< Add the sage_attn attention backend (8-bit SageAttention) ...",
        "CO checked[0001-register.patch]: apply --cached -p1 --whitespace=nowarn PATCHES/9.9.9/0001-register.patch"
        " {scratch}",
        "CO checked[0001-register.patch: write-tree]: write-tree {scratch}",
        "CO checked[0001-register.patch]: rev-parse C1^{tree} {scratch}",
        f"CO checked[0001-register.patch: commit]: commit-tree --no-gpg-sign <oid> -p C1 -F - {{scratch, {by}}}"
        " <<< Register sage ...",
        "CO checked[0002-pyproject.edit.toml]: ls-files --stage -- python/pyproject.toml {scratch}",
        "CO checked[0002-pyproject.edit.toml]: cat-file blob <oid> {scratch}",
        "CO checked[0002-pyproject.edit.toml]: hash-object -w --stdin {scratch} <<< [project] ...",
        "CO checked[0002-pyproject.edit.toml]: update-index --cacheinfo 100644,<oid>,python/pyproject.toml {scratch}",
        "CO checked[0002-pyproject.edit.toml: write-tree]: write-tree {scratch}",
        "CO checked[0002-pyproject.edit.toml]: rev-parse C2^{tree} {scratch}",
        f"CO checked[0002-pyproject.edit.toml: commit]: commit-tree --no-gpg-sign <oid> -p C2 -F - {{scratch, {by}}}"
        " <<< deps ...",
        f"CO checked[creating branch {BRANCH}]: update-ref -m sglang-sage pr refs/heads/{BRANCH} C3 ZERO",
        "CO checked[describing commits]: diff --numstat --no-renames BASE C1",
        "CO checked[describing commits]: diff --numstat --no-renames C1 C2",
        "CO checked[describing commits]: diff --numstat --no-renames C2 C3",
        "CO checked[git format-patch]: format-patch --no-signature --no-cover-letter --suffix=.patch --no-signoff"
        " --no-attach --no-notes --no-from --no-thread --src-prefix=a/ --dst-prefix=b/ -o OUT"
        f" BASE..refs/heads/{BRANCH}",
        f"CO checked[self-check]: rev-parse refs/heads/{BRANCH}^{{tree}}",
        "TMP checked[self-check: clone]: clone -q --no-checkout CO TMP/check",
        f"CO checked[self-check: clone]: rev-parse refs/heads/{BRANCH}",
        f"TMP/check checked[self-check: style]: {ident} -c advice.detachedHead=false checkout -q --detach C3",
        "TMP/check checked[self-check: style]: diff --name-only --no-renames BASE C3",
        f"TMP/check checked[self-check: clone]: {ident} -c advice.detachedHead=false checkout -q --detach BASE",
        f"TMP/check run: {ident} am -q --no-3way {mails}",
        "TMP/check checked[self-check]: rev-parse HEAD^{tree}",
        "TMP/check checked[self-check: reset to base]: reset -q --hard BASE",
        "TMP/check checked[self-check: git add]: add -A",
        "TMP/check checked[self-check: write-tree]: write-tree",
        "CO run: symbolic-ref -q HEAD",
    ]
    assert seen == [
        "checking the checkout",
        "static API check of the overlay",
        "building the commit series",
        f"creating branch {BRANCH}",
        "writing the format-patch series",
        "checking the series (git am and apply on fresh clones)",
    ]
    tmp = next(Path(c.env["GIT_INDEX_FILE"]).parent for c in spy.calls if c.env)
    # a private directory, gone at the end (one left by a killed run says whose it is)
    assert tmp.parent == Path(tempfile.gettempdir()) and tmp.name.startswith("sglang-sage-pr-")
    srt = ["args.py", "deep/er/k.py", "registry.py", "sage.py"]
    changed = [f"python/sglang/srt/{f}" for f in srt] + ["test/registered/test_sage.py"]
    assert style.seen == [tmp / "check" / f for f in changed]  # the series' Python files, in the clone
    assert not tmp.exists()
    # the branch's objects were published as git writes loose objects: read-only
    tip_tree = git(co, "rev-parse", f"{BRANCH}^{{tree}}")
    loose = co / ".git" / "objects" / tip_tree[:2] / tip_tree[2:]
    assert stat.S_IMODE(loose.stat().st_mode) == 0o444
    assert git(co, "reflog", "-1", "--format=%gs", BRANCH) == "sglang-sage pr"


def test_a_detached_head_is_named_by_its_id(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HEAD detached: it is reported as a commit id, compared by id at the end; a change of the work tree during
    the run is reported as a bug (exit 1), not as success."""
    head = git(co, "rev-parse", "HEAD")
    git(co, "checkout", "-q", "--detach", head)
    spy = GitSpy(monkeypatch)

    def meddle(step: str) -> None:  # someone edits the checkout while the series is being checked
        if step.startswith("checking the series"):
            (co / "python/sglang/srt/args.py").write_text("edited\n")

    res = prepare(world, co, tmp_path / "out", progress=meddle)
    assert (res.head, res.exit_code) == (head, INTERNAL)
    assert res.message == f"BUG: HEAD or the working tree of {co.resolve()} changed ({head} -> {head})"
    assert res.verdict.ok  # the series itself was fine
    assert spy.lines(names_for(res, world, spy))[-2:] == ["CO run: symbolic-ref -q HEAD",
                                                          "CO checked[final check]: rev-parse HEAD"]  # fmt: skip
    assert spy.lines(names_for(res, world, spy))[1] == "CO run: symbolic-ref -q HEAD"


# ----------------------------------------------------------------------------- failures


def _fail_step(step: str, subcommand: str | None = None) -> Callable[[Call], gitrun.GitResult | None]:
    def fail(call: Call) -> gitrun.GitResult | None:
        hit = call.step == step and (subcommand is None or call.args[2] == subcommand)
        return INJECTED if hit else None

    return fail


def _fail_branch_creation(call: Call) -> gitrun.GitResult | None:
    # creating the branch fails, and so does deleting it again in the rollback (nothing to delete: not an error)
    return INJECTED if call.args[2] == "update-ref" else None


FAILURES = {
    # before anything is published: .git stays byte-identical
    "read-tree": (_fail_step("reading the base tree"), "reading the base tree: `git read-tree BASE` failed (exit 1)"),
    "edit step": (
        _fail_step("0002-pyproject.edit.toml", "hash-object"),
        "0002-pyproject.edit.toml: `git hash-object -w --stdin` failed (exit 1)",
    ),
    # the objects are published, the branch cannot be made: the objects are removed again
    "branch": (_fail_branch_creation, f"creating branch {BRANCH}: `git update-ref -m sglang-sage pr` failed (exit 1)"),
    # the branch, the objects and the mails exist: all removed again
    "self-check": (
        _fail_step("self-check: reset to base"),
        "self-check: reset to base: `git reset -q --hard` failed (exit 1)",
    ),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_failing_git_command_names_its_step_and_rolls_back(
    world: dict[str, Path],
    co: Path,
    tmp_path: Path,
    style: FakeStyle,
    monkeypatch: pytest.MonkeyPatch,
    digest,
    case: str,
) -> None:
    fail, want = FAILURES[case]
    before = digest(co)
    base = git(co, "rev-parse", "HEAD")
    spy = GitSpy(monkeypatch, fail)
    with pytest.raises(SageError) as info:
        prepare(world, co, tmp_path / "out")
    assert (info.value.message, info.value.code, info.value.details) == (
        want.replace("BASE", base), APPLY_FAILED, ["injected failure"]
    )  # fmt: skip
    assert digest(co) == before and not (tmp_path / "out").exists()
    if case in ("branch", "self-check"):  # the rollback deleted the branch (a failure to do so is not an error)
        assert (spy.calls[-1].kind, spy.calls[-1].args[2:]) == ("run", ("update-ref", "-d", f"refs/heads/{BRANCH}"))


def test_ctrl_c_before_the_branch_exists_changes_nothing(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, digest
) -> None:
    before = digest(co)

    def interrupt(step: str) -> None:
        if step.startswith("creating branch"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(world, co, tmp_path / "out", progress=interrupt)
    assert digest(co) == before and not (tmp_path / "out").exists()


def test_a_failure_while_publishing_objects_leaves_git_as_it_was(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, monkeypatch: pytest.MonkeyPatch, digest
) -> None:
    """The disk fills up after two of the new objects were copied into .git/objects: those two, the directories
    made for them and the half-written third are removed again."""
    before = digest(co)
    real, copied = shutil.copyfile, []

    def copyfile(src: Path, dst: Path, **kw: object) -> object:
        if Path(dst).is_relative_to(co.resolve() / ".git" / "objects"):
            copied.append(dst)
            if len(copied) == 3:
                Path(dst).write_bytes(b"half")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, **kw)

    monkeypatch.setattr(pr.shutil, "copyfile", copyfile)
    with pytest.raises(OSError, match="No space left"):
        prepare(world, co, tmp_path / "out")
    assert digest(co) == before and not (tmp_path / "out").exists()


def test_a_failure_keeps_an_out_directory_that_existed(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--out may be an existing empty directory; a rollback empties it but leaves it there."""
    out = tmp_path / "out"
    out.mkdir()

    def boom(*a: object, **k: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(pr, "render_pr", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(world, co, out)
    assert out.is_dir() and list(out.iterdir()) == []
    assert git(co, "branch", "--list", BRANCH) == ""


def test_git_am_failure_is_reported_and_aborted(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`git am` failing: its output (whitespace folded, at most 500 characters) is the detail, the half-done am
    is aborted, apply is still checked, and the run ends with exit 1, keeping the output for inspection."""
    noise = "Applying: Register sage\n" + "error:   patch   failed\n" * 40  # on stdout, stderr empty

    def am_fails(call: Call) -> gitrun.GitResult | None:
        return gitrun.GitResult(1, noise, "") if "am" in call.args and "-q" in call.args else None

    spy = GitSpy(monkeypatch, am_fails)
    out = tmp_path / "out"
    res = prepare(world, co, out)
    v = res.verdict
    assert (v.git_am, v.am_tree, v.apply_tree == v.branch_tree != "", v.trees_ok) == (False, "", True, False)
    folded = " ".join(noise.split())
    assert len(folded) > 500 and v.details == ["git am failed: " + folded[:500]]
    assert res.exit_code == INTERNAL and res.message == (
        f"self-check FAILED: the series in {out} does not reproduce branch {BRANCH} and apply's tree; "
        f"kept for inspection (remove with: git -C {co.resolve()} branch -D {BRANCH})"
    )
    assert spy.lines(names_for(res, world, spy))[-6:-1] == [
        "TMP/check run: -c user.name=sglang-sage -c user.email=sglang-sage@localhost -c core.hooksPath=/dev/null am -q"
        " --no-3way " + " ".join(f"OUT/{n}" for n in MAIL_NAMES),
        "TMP/check run: am --abort",  # nothing to abort here (the failure was faked): not an error
        "TMP/check checked[self-check: reset to base]: reset -q --hard BASE",
        "TMP/check checked[self-check: git add]: add -A",
        "TMP/check checked[self-check: write-tree]: write-tree",
    ]
    assert git(co, "rev-parse", "--verify", "-q", BRANCH) and (out / "PR.md").is_file()


def test_formatter_problems_fail_the_self_check(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle
) -> None:
    style.problems = ["sage.py", "args.py"]
    out = tmp_path / "out"
    res = prepare(world, co, out)
    v = res.verdict
    assert v.trees_ok and not v.style_ok and v.style_checked == 5 and v.style_error == ""
    problems = ["python/sglang/srt/args.py: would reformat", "python/sglang/srt/sage.py: would reformat"]
    assert v.style_problems == problems  # relative to the clone, which is gone
    assert v.details == [f"formatters: {p}" for p in problems]
    assert res.exit_code == INTERNAL and res.message == (
        f"self-check FAILED: the series in {out} would not pass SGLang's formatters ({'; '.join(problems)}); "
        "format the overlay with `python -m sglang_sage.upstream_style --fix overlay/` (kept for inspection; "
        f"remove with: git -C {co.resolve()} branch -D {BRANCH})"
    )
    assert res.to_json()["verdict"]["style_ok"] is False


def test_formatters_that_cannot_run_fail_the_self_check(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle
) -> None:
    style.error = "black is not installed"
    style.problems = ["sage.py"]
    res = prepare(world, co, tmp_path / "out")
    assert res.verdict.trees_ok and res.exit_code == INTERNAL
    assert res.verdict.details == ["formatters: python/sglang/srt/sage.py: would reformat",
                                   "formatters not run: black is not installed"]  # fmt: skip
    assert "would not pass SGLang's formatters (black is not installed); format the overlay" in res.message


def test_tree_mismatches_are_listed_after_earlier_details(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mail edited after it was written: `git am` gives another tree than the branch; `apply` too (an extra
    file). Each difference is listed (`git diff --stat`), after the formatter notes."""
    style.error = "isort is not installed"
    real_check, real_apply = pr._self_check, pr.patcher.apply

    def edit_mail(t, root, base, ref, mails, *rest):  # type: ignore[no-untyped-def]
        mails[1].write_text(mails[1].read_text().replace('+BACKENDS = ["a", "sage"]', '+BACKENDS = ["a", "sagx"]'))
        return real_check(t, root, base, ref, mails, *rest)

    def apply_plus_one(t, **kw):  # type: ignore[no-untyped-def]
        report = real_apply(t, **kw)
        (t.layout.root / "python/sglang/extra.py").write_text("x = 1\n")
        return report

    monkeypatch.setattr(pr, "_self_check", edit_mail)
    monkeypatch.setattr(pr.patcher, "apply", apply_plus_one)
    spy = GitSpy(monkeypatch)
    res = prepare(world, co, tmp_path / "out")
    v = res.verdict
    assert v.git_am and len({v.am_tree, v.branch_tree, v.apply_tree}) == 3 and res.exit_code == INTERNAL
    trees = {v.branch_tree: "BRANCH_TREE", v.am_tree: "AM_TREE", v.apply_tree: "APPLY_TREE"}
    diffs = [line for line in spy.lines(names_for(res, world, spy, **trees)) if "diff --stat" in line]
    assert diffs == [  # a failing diff would only cost the details (not checked)
        "TMP/check run: diff --stat=200 BRANCH_TREE AM_TREE",
        "TMP/check run: diff --stat=200 BRANCH_TREE APPLY_TREE",
    ]
    assert v.details == [
        "formatters not run: isort is not installed",
        "branch vs git am: python/sglang/srt/registry.py | 2 +-",
        "branch vs git am: 1 file changed, 1 insertion(+), 1 deletion(-)",
        "branch vs apply: python/sglang/extra.py | 1 +",
        "branch vs apply: 1 file changed, 1 insertion(+)",
    ]
    j = v.to_json()
    assert (j["am_tree_equals_branch"], j["apply_tree_equals_branch"], j["git_am_applies"]) == (False, False, True)


def test_apply_failing_on_the_clone_is_a_detail(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuses(t, **kw):  # type: ignore[no-untyped-def]
        assert kw == {"skip_api_check": True}  # the API check already ran on the user's tree
        return patcher.Report(command="apply", target=str(t.layout.root), layout="checkout", version="9.9.9",
                              state="error", exit_code=REFUSED, message="no room")  # fmt: skip

    monkeypatch.setattr(pr.patcher, "apply", refuses)
    res = prepare(world, co, tmp_path / "out")
    assert res.verdict.apply_tree == "" and res.verdict.details == ["apply on a fresh clone failed: no room"]
    assert res.exit_code == INTERNAL


# ----------------------------------------------------------------------------- a user's git configuration


def test_a_hostile_git_configuration_changes_nothing(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signing on (with a gpg that fails), hooks that fail, no identity, format-patch and diff settings that would
    change the mails: the series, the mails and the self-check are what they are without them."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for name in ("post-checkout", "applypatch-msg", "pre-applypatch", "post-applypatch"):
        (hooks / name).write_text("#!/bin/sh\necho hook $0 ran >&2\nexit 1\n")
        (hooks / name).chmod(0o755)
    config = tmp_path / "gitconfig"
    config.write_text(
        f"[commit]\n\tgpgsign = true\n[gpg]\n\tprogram = false\n[core]\n\thooksPath = {hooks}\n"
        "[format]\n\tcoverLetter = true\n\tsignOff = true\n\tsuffix = .txt\n\tattach = true\n\tthread = shallow\n"
        "\tsignature = hostile signature\n\tfrom = Hostile <hostile@example.org>\n[diff]\n\tnoprefix = true\n"
    )
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))  # instead of ~/.gitconfig: also no user.name/email
    out = tmp_path / "out"
    res = prepare(world, co, out)
    assert res.exit_code == 0 and res.verdict.ok, (res.message, res.verdict.details)
    assert sorted(p.name for p in out.iterdir()) == [*MAIL_NAMES, "PR.md"]
    mail = (out / MAIL_NAMES[1]).read_text()
    assert mail.startswith(
        f"From {res.commits[1].sha} Mon Sep 17 00:00:00 2001\nFrom: t <t@t>\nDate: {DATE}\n"
        "Subject: [PATCH 2/3] Register sage\n\nregister the sage backend\n\nOrigin: vendor\n"
        "Forwarded: not-needed\n---\n"
    )
    assert "diff --git a/python/sglang/srt/args.py b/python/sglang/srt/args.py\n" in mail
    for mail in [(out / n).read_text() for n in MAIL_NAMES]:
        for unwanted in ("hostile", "Hostile", "Signed-off-by", "Message-ID", "In-Reply-To", "multipart", "-- \n"):
            assert unwanted not in mail, unwanted


# ----------------------------------------------------------------------------- refusals, word for word


@pytest.mark.parametrize("case", ["installed", "source", "dirty", "out is a file"])
def test_refusals_word_for_word(world: dict[str, Path], tmp_path: Path, digest, case: str) -> None:
    out = tmp_path / "out"
    if case == "installed":
        root = mini.make_installed(tmp_path / "inst")
        what = "an installed package"
    elif case == "source":
        root = mini.make_source_tree(tmp_path / "src")
        what = "a source tree (unpacked sdist)"
    else:
        root = mini.make_checkout(tmp_path / "co")
    if case == "dirty":
        (root / "python/sglang/srt/args.py").write_text("dirty\n")
        want = f"{root.resolve()}: uncommitted changes (the checkout is not clean) (commit or stash first)"
    elif case == "out is a file":
        out.write_text("x")
        want = f"--out {out}: exists and is not an empty directory (the series must not mix with old mails)"
    else:
        layout_root = patcher.open_target(root, world["overlay"], world["patches"]).layout.root
        want = (
            f"{layout_root}: not a git checkout but {what}; a pull request needs the SGLang git repository "
            "(DIR/python/sglang + DIR/.git)"
        )
    before = digest(root)
    with pytest.raises(SageError) as info:
        prepare(world, root, out)
    assert (info.value.message, info.value.code) == (want, REFUSED)
    assert digest(root) == before


# ----------------------------------------------------------------------------- report, warnings, skipped steps


def test_report_plots_and_warnings(world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle) -> None:
    """--report: its plots are copied next to PR.md (a missing one is a warning, after the lock's notes: a lock
    left by a killed run, and its journal, which is rolled back first); --out may need parent directories."""
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.json").write_text(json.dumps({"verdict": "pass", "checks": [], "plots": {"a.png": "", "b.png": ""}}))
    (rep / "report.md").write_text("# verify\n\n**Verdict: pass**\n")
    (rep / "a.png").write_bytes(b"\x89PNG plot")
    git_dir = co / ".git"
    (git_dir / "sglang-sage.lock").write_text("999999999\n")  # a killed run's lock
    (git_dir / "sglang-sage.journal").mkdir()  # ... and its (empty) journal
    out = tmp_path / "deep" / "er" / "out"
    seen: list[str] = []
    res = prepare(world, co, out, report=rep / "report.json", progress=seen.append)
    assert res.exit_code == 0, res.message
    assert res.written == [str(out / n) for n in [*MAIL_NAMES, "a.png", "PR.md"]]
    assert (out / "a.png").read_bytes() == b"\x89PNG plot"
    lock, journal = git_dir.resolve() / "sglang-sage.lock", git_dir.resolve() / "sglang-sage.journal"
    assert res.warnings == [
        f"took over {lock} from sglang-sage run pid 999999999, which is gone (killed?); the tree was checked "
        "before continuing",
        f"an interrupted sglang-sage run left a journal ({journal}); rolled its 0 change(s) back",
        f"report plot b.png: not found next to {rep / 'report.json'}",
    ]
    assert seen[:2] == ["rolling back an interrupted run", "checking the checkout"]
    md = (out / "PR.md").read_text()
    assert f"## Verification\n\nFrom `{rep / 'report.json'}`:\n" in md and "\n![a](a.png)\n" in md
    assert res.to_json()["warnings"] == res.warnings


def test_steps_without_a_commit_are_named(
    world: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that changes nothing gets no commit, and the later steps still do; PR.md and the JSON name it."""
    commit_file(co, "python/pyproject.toml", SATISFIED)  # the edit step is already satisfied
    monkeypatch.setattr(pr, "_patch_change", lambda root, env, step: lambda: None)  # 0001 changes nothing
    res = prepare(world, co, tmp_path / "out")
    skipped = [
        "0001-register.patch: changes nothing on this tree",
        "0002-pyproject.edit.toml: already satisfied: dependencies: jinja2>=3.1.0; dependencies: tomli>=2",
    ]
    assert res.skipped == skipped and res.to_json()["skipped_steps"] == skipped
    assert [c.step for c in res.commits] == ["overlay"]
    md = (tmp_path / "out" / "PR.md").read_text()
    assert "Steps without a commit on this tree: " + "; ".join(f"`{s}`" for s in skipped) + "." in md
    assert res.exit_code == INTERNAL  # apply does patch 0001: the self-check tells


def test_a_set_that_changes_nothing_is_refused(
    world_anonymous: dict[str, Path],
    co: Path,
    tmp_path: Path,
    style: FakeStyle,
    monkeypatch: pytest.MonkeyPatch,
    digest,
) -> None:
    """No overlay, the patch changing nothing, the edit satisfied: nothing to commit, refused (exit 4)."""
    commit_file(co, "python/pyproject.toml", SATISFIED)
    monkeypatch.setattr(pr, "_patch_change", lambda root, env, step: lambda: None)
    before = digest(co)
    with pytest.raises(SageError) as info:
        prepare(world_anonymous, co, tmp_path / "out", author="A <a@a>")
    assert (info.value.message, info.value.code) == (
        f"{co.resolve()}: the patch set changes nothing on this tree",
        REFUSED,
    )
    assert digest(co) == before and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- other patch sets


def _mail(subject: str, description: str, diff: str, author: str | None = "t <t@t>", date: str | None = DATE) -> str:
    head = "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
    head += f"From: {author}\n" if author else ""
    head += f"Date: {date}\n" if date else ""
    dep3 = f"Description: {description}\nOrigin: vendor\nForwarded: no\nLast-Update: 2026-11-21\n"
    return head + f"Subject: [PATCH] {subject}\n\n{dep3}---\n{diff}"


def _diff(files: dict[str, tuple[str, str]], tmp: Path) -> str:
    """`git diff` of files from their first to their second text."""
    scratch = tmp / "diff"
    shutil.rmtree(scratch, ignore_errors=True)
    mini.write(scratch, {k: a for k, (a, b) in files.items()})
    mini.git(scratch, "init", "-q")
    mini.git(scratch, "add", "-A")
    mini.git(scratch, "commit", "-qm", "a")
    mini.write(scratch, {k: b for k, (a, b) in files.items()})
    return mini.git(scratch, "diff")


def _patch_set(base: Path, overlay: Path, patches: dict[str, str], series: list[str]) -> dict[str, Path]:
    pset = base / "patches" / mini.VERSION
    pset.mkdir(parents=True)
    for name, text in patches.items():
        (pset / name).write_text(text)
    (pset / "series").write_text("\n".join(series) + "\n")
    return {"patches": base / "patches", "overlay": overlay, "pset": pset}


def _write_manifest(w: dict[str, Path], overlay_files: list) -> None:  # type: ignore[type-arg]
    manifest = Manifest(
        w["pset"] / "manifest.toml",
        mini.VERSION,
        "v" + mini.VERSION,
        "2.0",
        ">=3.10",
        ["3.11"],
        pre={k: sha256_bytes(v.encode()) for k, v in mini.PRE.items()},
        post={k: sha256_bytes(v.encode()) for k, v in mini.POST.items()},
        overlay=entries(overlay_files),
    )
    (w["pset"] / "manifest.toml").write_text(manifest.dump())


@pytest.fixture(scope="module")
def world_anonymous(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A set whose mail has neither From: nor Date:, and no overlay at all."""
    base = tmp_path_factory.mktemp("anonymous")
    overlay = base / "overlay"
    overlay.mkdir()
    diff = _diff({k: (mini.PRE[k], mini.POST[k]) for k in mini.PRE}, base)
    w = _patch_set(base, overlay, {"0001-register.patch": _mail("Register sage", "register it", diff, None, None),
                                   "0002-pyproject.edit.toml": mini.EDIT},  # fmt: skip
                   ["0001-register.patch", "0002-pyproject.edit.toml"])  # fmt: skip
    _write_manifest(w, [])
    return w


def test_a_set_without_authors_or_dates(
    world_anonymous: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle
) -> None:
    w = world_anonymous
    with pytest.raises(SageError) as info:
        prepare(w, co, tmp_path / "refused")
    assert info.value.message == f"{w['pset']}: no patch has a From: line; pass --author 'Name <mail>'"
    res = prepare(w, co, tmp_path / "out", author="Jane Doe <jane@example.org>")
    assert res.exit_code == 0, (res.message, res.verdict.details)
    assert res.skipped == ["overlay: no overlay files"]
    assert [c.subject for c in res.commits] == ["Register sage", "deps"]
    log = git(co, "log", "--format=%an <%ae> %ad", "--date=iso-strict", f"{res.base}..{BRANCH}").splitlines()
    assert log == ["Jane Doe <jane@example.org> 2000-01-01T00:00:00+00:00"] * 2  # pr.FALLBACK_DATE


BLOB = b"\x00\x01binary\xff\x00"


@pytest.fixture(scope="module")
def world_mixed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two SGLang patches by different authors on different dates (the later one sorting first as text), an
    overlay patch, a binary overlay file."""
    base = tmp_path_factory.mktemp("mixed")
    overlay = base / "overlay"
    mini.write(overlay, mini.OVERLAY)
    (overlay / "sglang/srt/blob.bin").write_bytes(BLOB)
    reg = _diff({mini.REG: (mini.PRE[mini.REG], mini.POST[mini.REG])}, base)
    args = _diff({mini.ARGS: (mini.PRE[mini.ARGS], mini.POST[mini.ARGS])}, base)
    adapt = _diff({"python/sglang/srt/sage.py": ("X = 1\n", "X = 2\n")}, base)
    w = _patch_set(
        base,
        overlay,
        {
            "0001-register.patch": _mail("Register sage", "register it", reg),
            "0002-args.patch": _mail("Accept sage", "accept it", args, "u <u@u>", "Tue, 01 Jan 2019 00:00:00 +0000"),
            "0003-adapt.patch": _mail(
                "Adapt sage", "X is 2 on 9.9.9", adapt, "t <t@t>", "Mon, 02 Nov 2026 00:00:00 +0000"
            ),
            "0004-pyproject.edit.toml": mini.EDIT,
        },
        ["0001-register.patch", "0002-args.patch", "0003-adapt.patch", "0004-pyproject.edit.toml"],
    )
    adapted = base / "adapted"
    shutil.copytree(overlay, adapted)
    (adapted / "sglang/srt/sage.py").write_text("X = 2\n")
    _write_manifest(w, discover(adapted))
    return w


def test_overlay_patches_binary_files_and_several_authors(
    world_mixed: dict[str, Path], co: Path, tmp_path: Path, style: FakeStyle
) -> None:
    w = world_mixed
    res = prepare(w, co, tmp_path / "out")
    assert res.exit_code == 0, (res.message, res.verdict.details)
    files = [(f.path, f.source, f.added, f.removed) for c in res.commits for f in c.files]
    assert files == [
        ("python/sglang/srt/blob.bin", "overlay/sglang/srt/blob.bin", 0, 0),  # binary: no line counts
        ("python/sglang/srt/deep/er/k.py", "overlay/sglang/srt/deep/er/k.py", 1, 0),
        ("python/sglang/srt/sage.py", "overlay/sglang/srt/sage.py + 0003-adapt.patch", 1, 0),
        ("test/registered/test_sage.py", "overlay/test/registered/test_sage.py", 2, 0),
        ("python/sglang/srt/registry.py", "0001-register.patch", 1, 1),
        ("python/sglang/srt/args.py", "0002-args.patch", 1, 1),
        ("python/pyproject.toml", "0004-pyproject.edit.toml", 1, 1),
    ]
    assert git(co, "show", f"{BRANCH}~3:python/sglang/srt/sage.py") == "X = 2"
    log = git(co, "log", "--reverse", "--format=%an|%ad|%s", "--date=iso-strict", f"{res.base}..{BRANCH}")
    assert log.splitlines() == [
        "t|2026-11-21T00:00:00+00:00|Add the sage_attn attention backend (8-bit SageAttention)",  # the latest date
        "t|2026-11-21T00:00:00+00:00|Register sage",
        "u|2019-01-01T00:00:00+00:00|Accept sage",  # its own author and date
        "t|2026-11-21T00:00:00+00:00|deps",
    ]
    message = git(co, "log", "-1", "--format=%B", f"{BRANCH}~3")
    assert message == (
        "Add the sage_attn attention backend (8-bit SageAttention)\n\nNew files of the sage_attn attention backend."
        "\n\nNew files:\n- python/sglang/srt/blob.bin\n- python/sglang/srt/deep/er/k.py\n- python/sglang/srt/sage.py\n"
        "- test/registered/test_sage.py\n\nAdapted to SGLang 9.9.9 by 0003-adapt.patch (Adapt sage):\nX is 2 on 9.9.9"
        "\n\nOrigin: vendor, sglang-sage overlay/ (sha256 pinned in patches/9.9.9/manifest.toml)\nForwarded: not-yet"
    )


# ----------------------------------------------------------------------------- helpers


def test_publish_objects_skips_what_exists_and_makes_objects_read_only(tmp_path: Path) -> None:
    scratch, objects = tmp_path / "scratch", tmp_path / "objects"
    for rel in ("aa/1111", "bb/2222", "cc/3333"):
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_text(rel)
    (objects / "aa").mkdir(parents=True)
    (objects / "aa" / "1111").write_text("theirs")
    added: list[Path] = []
    pr._publish_objects(scratch, objects, added)
    tmps = [objects / f"{p}.sglang-sage-tmp" for p in ("bb/2222", "cc/3333")]
    assert added == [objects / "bb", tmps[0], objects / "bb/2222", objects / "cc", tmps[1], objects / "cc/3333"]
    assert not any(t.exists() for t in tmps)
    assert (objects / "aa/1111").read_text() == "theirs" and (objects / "cc/3333").read_text() == "cc/3333"
    assert {stat.S_IMODE((objects / p).stat().st_mode) for p in ("bb/2222", "cc/3333")} == {0o444}
    assert sorted(p.name for p in (objects / "bb").iterdir()) == ["2222"]  # no temporary file left


def test_rollback_tolerates_files_already_gone(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    pr._rollback(repo, "refs/heads/x", [tmp_path / "objects" / "gone"], [tmp_path / "out" / "gone.patch"], None)


def test_messages_and_subjects_keep_their_text() -> None:
    assert pr._subject_and_body("", "Fix X.\nbody") == ("Fix X", "body")
    assert pr._subject_and_body("Fix X", "Fix X.\nbody") == ("Fix X", "body")
    assert pr._subject_and_body("Mail subject.", "Mail subject\nmore") == ("Mail subject.", "more")
    assert pr._subject_and_body("", "Title\nX marks the spot X\n") == ("Title", "X marks the spot X")
    step = pr._Step("s", "Subject", "\n  code X\n\n", {"Origin": "o", "Forwarded": ""}, Author("a", "a@a"), "", str)
    assert step.message() == "Subject\n\n  code X\n\nOrigin: o\n"
    v = pr.Verdict(git_am=True, am_tree="a" * 40, branch_tree="b" * 40, apply_tree="b" * 40)
    assert (v.to_json()["am_tree_equals_branch"], v.to_json()["apply_tree_equals_branch"], v.trees_ok) == (
        False, True, False
    )  # fmt: skip
