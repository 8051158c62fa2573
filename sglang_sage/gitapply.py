"""`git apply` on one layout: the only tool that writes patched files (never fuzz)."""

from __future__ import annotations

from pathlib import Path

from sglang_sage import gitrun
from sglang_sage.errors import SageError
from sglang_sage.gitrun import GitResult, require_git
from sglang_sage.layout import Layout

__all__ = ["GitApply", "GitResult", "require_git"]


class GitApply:
    """Runs `git apply` for one layout, with paths mapped by `-p` and a contained repository lookup."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        require_git()  # refuse now, before any check, when there is no git
        self.env: dict[str, str] = {}
        # A checkout's top level is DIR itself (DIR/.git exists, and gitrun drops GIT_DIR/GIT_WORK_TREE), so
        # repo paths need no prefix there.
        if not layout.is_git:
            # Never let git find an enclosing repository (e.g. a venv inside a project checkout):
            # inside one, git apply takes paths relative to *that* repo and skips ours.
            self.env["GIT_CEILING_DIRECTORIES"] = str(layout.apply_dir.parent)

    def run(self, args: list[str]) -> GitResult:
        """Run `git <args>` in the layout's apply directory without raising."""
        return gitrun.run(self.layout.apply_dir, *args, env=self.env)

    def _apply_args(
        self, patches: list[Path], *, check: bool, reverse: bool, three_way: bool, include: list[str] | None
    ) -> list[str]:
        args = ["apply", f"-p{self.layout.strip}", "--whitespace=nowarn"]
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
        return repo_path if self.layout.strip == 1 else repo_path.split("/", 1)[1]

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
