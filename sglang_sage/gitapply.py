"""`git apply` through GitPython: the only tool that writes patched files (never fuzz)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from sglang_sage.errors import SageError
from sglang_sage.layout import Layout

# GitPython probes for git at import time; a missing git must be our clear refusal, not its traceback.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
import git  # noqa: E402


def require_git() -> str:
    """Path of the git executable, or a refusal that says how to get one."""
    found = shutil.which("git")
    if found is None:
        raise SageError(
            "git not found on PATH: patches are applied with `git apply` "
            "(install git, e.g. `apt-get install git`, or put it on PATH)"
        )
    return found


@dataclass
class GitResult:
    """Exit status and output of one git invocation."""

    status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True on exit status 0."""
        return self.status == 0


class GitApply:
    """Runs `git apply` for one layout, with paths mapped by `-p` and a contained repository lookup."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.executable = require_git()
        self.env = dict(os.environ)
        self.prefix = ""
        if layout.is_git:
            self.prefix = self.run(["rev-parse", "--show-prefix"]).stdout.strip()
        else:
            # Never let git find an enclosing repository (e.g. a venv inside a project checkout):
            # inside one, git apply takes paths relative to *that* repo and skips ours.
            self.env["GIT_CEILING_DIRECTORIES"] = str(layout.apply_dir.parent)

    def run(self, args: list[str]) -> GitResult:
        """Run `git <args>` in the layout's apply directory without raising."""
        runner = git.Git(str(self.layout.apply_dir))
        try:
            status, out, err = runner.execute(
                [self.executable, *args],
                with_extended_output=True,
                with_exceptions=False,
                env=self.env,
                strip_newline_in_stdout=False,
            )
        except git.GitCommandNotFound as exc:  # git vanished between which() and here
            raise SageError(f"cannot run git: {exc}") from exc
        return GitResult(int(status), str(out), str(err))

    def _apply_args(
        self, patches: list[Path], *, check: bool, reverse: bool, three_way: bool, include: list[str] | None
    ) -> list[str]:
        args = ["apply", f"-p{self.layout.strip}", "--whitespace=nowarn"]
        if self.prefix:
            args.append(f"--directory={self.prefix.rstrip('/')}")
        if check:
            args.append("--check")
        if reverse:
            args.append("--reverse")
        if three_way:
            args.append("--3way")
        for name in include or []:
            args.append(f"--include={self._mapped(name)}")
        return args + [str(p) for p in patches]

    def _mapped(self, repo_path: str) -> str:
        """How git apply names a repo-relative path after -p stripping (for --include)."""
        stripped = repo_path if self.layout.strip == 1 else repo_path.split("/", 1)[1]
        return self.prefix + stripped

    def check(self, patches: list[Path], *, reverse: bool = False, include: list[str] | None = None) -> GitResult:
        """Dry run: would these patches apply (or un-apply) cleanly, all of them, in order?"""
        return self.run(self._apply_args(patches, check=True, reverse=reverse, three_way=False, include=include))

    def apply(
        self, patches: list[Path], *, reverse: bool = False, three_way: bool = False, include: list[str] | None = None
    ) -> GitResult:
        """Apply for real. git applies the whole list or nothing (no --reject, no fuzz)."""
        return self.run(self._apply_args(patches, check=False, reverse=reverse, three_way=three_way, include=include))

    def dirty(self, repo_paths: list[str]) -> list[str]:
        """Repo paths with uncommitted changes (staged or not); read-only (no index refresh)."""
        if not self.layout.is_git:
            return []
        result = self.run(["--no-optional-locks", "status", "--porcelain", "--untracked-files=all", "--", *repo_paths])
        if not result.ok:
            raise SageError(f"git status failed in {self.layout.root}: {result.stderr.strip()}")
        return [line[3:] for line in result.stdout.splitlines() if line.strip()]

    def git_dir(self) -> Path | None:
        """Absolute .git directory of a checkout (works for worktrees where .git is a file)."""
        if not self.layout.is_git:
            return None
        out = self.run(["rev-parse", "--absolute-git-dir"])
        return Path(out.stdout.strip()) if out.ok else None
