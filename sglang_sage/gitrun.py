"""The one way sglang-sage runs git: a subprocess with a clean environment.

git reads where to work from the environment before the command line: a `GIT_DIR`, `GIT_WORK_TREE`
or `GIT_INDEX_FILE` inherited from a hook, an IDE or an outer `git rebase -x` would make `git apply`
patch another repository, `git status` report another index, and commits land elsewhere. Every
call therefore starts from the caller's environment without those variables (and without
`GIT_AUTHOR_*`/`GIT_COMMITTER_*`: authorship is set explicitly where commits are made); a caller
that means to redirect git (the PR builder's scratch index) passes its variables explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sglang_sage.errors import APPLY_FAILED, REFUSED, SageError

# variables that point git at another repository, work tree, index or object store
REDIRECTING = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_COMMON_DIR",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)
_IDENTITY = ("GIT_AUTHOR_", "GIT_COMMITTER_")
NOT_FOUND = (
    "git not found on PATH: patches are applied with `git apply` (install git, e.g. `apt-get install git`, "
    "or put it on PATH)"
)


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


def require_git() -> str:
    """Path of the git executable, or a refusal (exit 4) that says how to get one."""
    found = shutil.which("git")
    if found is None:
        raise SageError(NOT_FOUND, code=REFUSED)
    return found


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without redirecting and identity variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in REDIRECTING and not k.startswith(_IDENTITY)}
    env.update(extra or {})
    return env


def run(
    cwd: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float | None = None,
) -> GitResult:
    """`git <args>` in `cwd` with a clean environment (+ `env`); never raises on a non-zero exit."""
    try:
        proc = subprocess.run(
            [require_git(), *args],
            cwd=cwd,
            input=stdin,
            capture_output=True,
            text=True,
            env=clean_env(env),
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:  # git vanished between which() and here
        raise SageError(NOT_FOUND, code=REFUSED) from exc
    except subprocess.TimeoutExpired as exc:
        return GitResult(124, "", f"git {' '.join(args[:3])}: timed out after {timeout} s ({exc})")
    return GitResult(proc.returncode, proc.stdout, proc.stderr)


def _command(args: tuple[str, ...]) -> list[str]:
    """The subcommand and its arguments, without leading `-c key=value` settings (for messages)."""
    rest = list(args)
    while len(rest) >= 2 and rest[0] == "-c":
        rest = rest[2:]
    return rest


def checked(
    cwd: Path,
    *args: str,
    step: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    code: int = APPLY_FAILED,
) -> GitResult:
    """`run`, but a failure raises a SageError naming the step it belongs to (exit `code`)."""
    result = run(cwd, *args, env=env, stdin=stdin)
    if not result.ok:
        raise SageError(
            f"{step}: `git {' '.join(_command(args)[:3])}` failed (exit {result.status})",
            code=code,
            details=(result.stderr or result.stdout).strip().splitlines()[-12:],
        )
    return result
