"""GitApply on small trees: path mapping per layout, check/apply/reverse, --include, dirty, git_dir."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sglang_sage import gitapply
from sglang_sage.errors import SageError
from sglang_sage.gitapply import GitApply
from sglang_sage.layout import detect

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
PATCH = """\
diff --git a/python/sglang/mod.py b/python/sglang/mod.py
--- a/python/sglang/mod.py
+++ b/python/sglang/mod.py
@@ -1,2 +1,2 @@
 x = 1
-y = 2
+y = 3
diff --git a/python/sglang/other.py b/python/sglang/other.py
--- a/python/sglang/other.py
+++ b/python/sglang/other.py
@@ -1 +1 @@
-z = 1
+z = 2
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def package(pkg_parent: Path) -> None:
    """A tiny SGLang package: version 9.9.9 and two modules."""
    pkg = pkg_parent / "sglang"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "version.py").write_text('__version__ = "9.9.9"\n')
    (pkg / "mod.py").write_text("x = 1\ny = 2\n")
    (pkg / "other.py").write_text("z = 1\n")


@pytest.fixture
def patch(tmp_path: Path) -> Path:
    """PATCH with the index lines git writes (--3way needs the pre-image blob ids)."""
    scratch = tmp_path / "scratch"
    package(scratch / "python")
    git(scratch, "init", "-q")
    git(scratch, "add", "-A")
    git(scratch, "commit", "-qm", "base")
    (scratch / "python/sglang/mod.py").write_text("x = 1\ny = 3\n")
    (scratch / "python/sglang/other.py").write_text("z = 2\n")
    path = tmp_path / "p.patch"
    path.write_text(git(scratch, "diff"))
    assert [ln for ln in path.read_text().splitlines() if not ln.startswith("index ")] == PATCH.splitlines()
    return path


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "co"
    package(root / "python")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    return root


def test_checkout_check_apply_reverse_and_include(checkout: Path, patch: Path) -> None:
    ga = GitApply(detect(checkout))
    assert ga.layout.strip == 1 and "GIT_CEILING_DIRECTORIES" not in ga.env
    assert ga.check([patch]).ok
    assert not ga.check([patch], reverse=True).ok  # not applied yet
    result = ga.apply([patch], include=["python/sglang/mod.py"])
    assert result.ok and result.status == 0
    assert (checkout / "python/sglang/mod.py").read_text() == "x = 1\ny = 3\n"
    assert (checkout / "python/sglang/other.py").read_text() == "z = 1\n"  # not included
    assert ga.check([patch], reverse=True, include=["python/sglang/mod.py"]).ok
    assert ga.apply([patch], reverse=True, include=["python/sglang/mod.py"]).ok
    assert (checkout / "python/sglang/mod.py").read_text() == "x = 1\ny = 2\n"


def test_failed_check_reports_stderr(checkout: Path, patch: Path) -> None:
    (checkout / "python/sglang/mod.py").write_text("something else\n")
    result = GitApply(detect(checkout)).check([patch])
    assert not result.ok and result.status != 0 and "mod.py" in result.stderr
    assert (checkout / "python/sglang/mod.py").read_text() == "something else\n"


def test_apply_args(checkout: Path, patch: Path) -> None:
    ga = GitApply(detect(checkout))
    args = ga._apply_args([patch], check=True, reverse=True, three_way=True, include=["python/sglang/mod.py"])
    assert args == [
        "apply",
        "-p1",
        "--whitespace=nowarn",
        "--check",
        "--reverse",
        "--3way",
        "--include=python/sglang/mod.py",
        str(patch),
    ]
    assert ga._apply_args([patch], check=False, reverse=False, three_way=False, include=None) == [
        "apply",
        "-p1",
        "--whitespace=nowarn",
        str(patch),
    ]


def test_three_way_on_a_committed_local_change(checkout: Path, patch: Path) -> None:
    mod = checkout / "python/sglang/mod.py"
    mod.write_text("# local\nx = 1\ny = 2\n")
    git(checkout, "commit", "-qam", "local")
    ga = GitApply(detect(checkout))
    assert ga.apply([patch], three_way=True, include=["python/sglang/mod.py"]).ok
    assert mod.read_text() == "# local\nx = 1\ny = 3\n"


def test_checkout_in_a_subdirectory_of_another_repository(tmp_path: Path, patch: Path) -> None:
    """DIR/python/sglang without DIR/.git, inside some other repository: patched as a plain tree, never via
    (or reported dirty against) the enclosing repository."""
    outer = tmp_path / "outer"
    package(outer / "vendor" / "sg" / "python")
    git(outer, "init", "-q")
    git(outer, "add", "-A")
    git(outer, "commit", "-qm", "base")
    layout = detect(outer / "vendor" / "sg")
    ga = GitApply(layout)
    assert not layout.is_git and layout.strip == 1
    assert ga.env["GIT_CEILING_DIRECTORIES"] == str(outer / "vendor")
    assert ga.apply([patch], include=["python/sglang/mod.py"]).ok
    assert (outer / "vendor/sg/python/sglang/mod.py").read_text() == "x = 1\ny = 3\n"
    assert (outer / "vendor/sg/python/sglang/other.py").read_text() == "z = 1\n"
    assert ga.dirty(["python/sglang/mod.py"]) == [] and ga.git_dir() is None


def test_source_tree_inside_another_repository(tmp_path: Path, patch: Path) -> None:
    """A non-git tree (here an sdist layout) inside an unrelated repository: git must not use that repository."""
    outer = tmp_path / "project"
    tree = outer / "venv" / "sglang-src"
    package(tree)
    (tree / "pyproject.toml").write_text('[project]\nname = "sglang"\n')
    git(outer, "init", "-q")
    layout = detect(tree)
    ga = GitApply(layout)
    assert layout.strip == 2
    assert ga.env["GIT_CEILING_DIRECTORIES"] == str(tree.parent)
    assert ga._mapped("python/sglang/mod.py") == "sglang/mod.py"
    assert ga.apply([patch], include=["python/sglang/mod.py"]).ok
    assert (tree / "sglang/mod.py").read_text() == "x = 1\ny = 3\n"
    assert (tree / "sglang/other.py").read_text() == "z = 1\n"
    assert ga.dirty(["python/sglang/mod.py"]) == [] and ga.git_dir() is None


def test_dirty_sees_unstaged_staged_only_and_untracked(checkout: Path) -> None:
    ga = GitApply(detect(checkout))
    watched = ["python/sglang/mod.py", "python/sglang/other.py", "python/sglang/new.py", "python/sglang/version.py"]
    assert ga.dirty(watched) == []
    (checkout / "python/sglang/mod.py").write_text("x = 1\ny = 9\n")  # unstaged
    (checkout / "python/sglang/other.py").write_text("z = 9\n")
    git(checkout, "add", "python/sglang/other.py")  # staged only: the work tree equals the index
    (checkout / "python/sglang/new.py").write_text("")  # untracked
    (checkout / "python/sglang/__init__.py").write_text("# not watched\n")
    assert sorted(ga.dirty(watched)) == ["python/sglang/mod.py", "python/sglang/new.py", "python/sglang/other.py"]
    assert ga.dirty(["python/sglang/other.py"]) == ["python/sglang/other.py"]
    # an untracked file in a new directory (where overlay files go) is named itself, not its directory
    (checkout / "python/sglang/newpkg").mkdir()
    (checkout / "python/sglang/newpkg/x.py").write_text("")
    assert ga.dirty(["python/sglang/newpkg/x.py"]) == ["python/sglang/newpkg/x.py"]


def test_dirty_fails_loudly_when_git_status_fails(checkout: Path) -> None:
    ga = GitApply(detect(checkout))
    (checkout / ".git" / "HEAD").write_text("garbage\n")  # not a repository any more
    with pytest.raises(SageError, match=f"git status failed in {checkout}"):
        ga.dirty(["python/sglang/mod.py"])
    assert ga.git_dir() is None


def test_git_dir_of_a_worktree(checkout: Path, tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    git(checkout, "worktree", "add", "-q", str(wt))
    ga = GitApply(detect(wt))
    assert (wt / ".git").is_file()
    assert ga.git_dir() == checkout / ".git" / "worktrees" / "wt"


def test_git_missing_is_a_refusal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SageError) as info:
        gitapply.require_git()
    assert info.value.message == (
        "git not found on PATH: patches are applied with `git apply` "
        "(install git, e.g. `apt-get install git`, or put it on PATH)"
    )


def test_run_returns_output_without_raising(checkout: Path) -> None:
    ga = GitApply(detect(checkout))
    ok = ga.run(["rev-parse", "--show-toplevel"])
    assert ok.ok and ok.stdout == f"{checkout}\n" and ok.stderr == ""
    bad = ga.run(["no-such-command"])
    assert not bad.ok and bad.status == 1 and "no-such-command" in bad.stderr


def test_an_inherited_git_dir_does_not_redirect_a_checkout(
    checkout: Path, tmp_path: Path, patch: Path, monkeypatch
) -> None:
    """GIT_DIR/GIT_WORK_TREE of an outer repository (a hook, `git rebase -x`): DIR is still patched, and only DIR."""
    outer = tmp_path / "outer"
    outer.mkdir()
    git(outer, "init", "-q")
    monkeypatch.setenv("GIT_DIR", str(outer / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(outer))
    ga = GitApply(detect(checkout))
    assert ga.apply([patch], include=["python/sglang/mod.py"]).ok
    assert (checkout / "python/sglang/mod.py").read_text() == "x = 1\ny = 3\n"
    assert ga.dirty(["python/sglang/mod.py"]) == ["python/sglang/mod.py"]
    assert ga.git_dir() == checkout / ".git"
