"""SGLang's own formatter configuration, run in check mode over files meant for upstream.

SGLang's pre-commit runs isort with the repository's `.isort.cfg` (`profile=black`,
`known_first_party=sglang`), then black 24.10.0 with its defaults (no [tool.black] anywhere). A PR
whose files these would rewrite fails upstream lint, so the overlay is checked in CI and `apply.py pr`
checks the series it writes. isort is 7.0.0, not the 5.13.2 of older SGLang configs: 5.13.2's black
profile lacks `split_on_trailing_comma` and would unwrap half of 0.5.17's own files (18 of the 36 in
srt/layers/attention + server_args.py), 7.0.0 leaves all of them unchanged (a test pins that). Both
tools get their configuration on the command line and an empty settings location, so this
repository's own pyproject (ruff, line length 120) never leaks in. `python -m
sglang_sage.upstream_style --fix overlay/` formats files the same way.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BLACK_VERSION = "24.10.0"
ISORT_VERSION = "7.0.0"
ISORT_SETTINGS = ("--profile", "black", "--project", "sglang")  # .isort.cfg: profile=black, known_first_party=sglang
INSTALL_HINT = f"pip install 'black=={BLACK_VERSION}' 'isort=={ISORT_VERSION}' (both are in the [test] extra)"


@dataclass
class StyleResult:
    """Files black or isort would change, or why the check could not run."""

    checked: int = 0
    problems: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        """Ran, and neither tool would change anything."""
        return not self.error and not self.problems


def _version(module: str, python: str) -> str | None:
    try:
        proc = subprocess.run(
            [python, "-c", f"import {module}; print({module}.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _tool_error(python: str) -> str:
    for module, want in (("black", BLACK_VERSION), ("isort", ISORT_VERSION)):
        have = _version(module, python)
        if have != want:
            state = f"{have} is installed" if have else "is not installed"
            return f"{module} {state} for {python}; SGLang's pre-commit uses {module} {want}: {INSTALL_HINT}"
    return ""


def _format(files: list[Path], python: str) -> str:
    """Run isort, then black, in place, with SGLang's settings; returns an error or ""."""
    with tempfile.TemporaryDirectory(prefix="sglang-sage-style-") as settings:
        config = Path(settings) / "pyproject.toml"
        config.write_text("[tool.black]\n")  # black's defaults, not a pyproject found above the files
        # pre-commit's order: isort rewrites, then black; isort alone would flag every nested import that
        # black wraps, so only the pipeline's end result is meaningful
        for cmd in (
            [python, "-m", "isort", "--quiet", "--settings-path", settings, *ISORT_SETTINGS],
            [python, "-m", "black", "--quiet", "--config", str(config)],
        ):
            proc = subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                return f"{cmd[2]} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]}"
    return ""


def check(files: list[Path], *, python: str = sys.executable) -> StyleResult:
    """Would SGLang's isort + black (in pre-commit's order, SGLang's settings) change any of `files`?

    `python` runs the tools; the files themselves are never written (copies are formatted and compared).
    """
    result = StyleResult(checked=len(files), error=_tool_error(python))
    if result.error or not files:
        return result
    with tempfile.TemporaryDirectory(prefix="sglang-sage-style-") as tmp:
        copies = []
        for n, f in enumerate(files):
            copy = Path(tmp) / str(n) / f.name
            copy.parent.mkdir()
            copy.write_bytes(f.read_bytes())
            copies.append(copy)
        result.error = _format(copies, python)
        if result.error:
            return result
        for original, copy in zip(files, copies):
            if copy.read_bytes() != original.read_bytes():
                result.problems.append(
                    f"{original}: SGLang's pre-commit (isort {ISORT_VERSION}, black {BLACK_VERSION}) would reformat it"
                )
    return result


def format_in_place(files: list[Path], *, python: str = sys.executable) -> str:
    """Format `files` as SGLang's pre-commit would; returns an error or ""."""
    return _tool_error(python) or (_format(files, python) if files else "")


def main(argv: list[str] | None = None) -> int:
    """`python -m sglang_sage.upstream_style [--fix] PATH...`: check (exit 1 on changes) or format files/dirs."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sglang_sage.upstream_style", description=main.__doc__)
    ap.add_argument("--fix", action="store_true", help="rewrite the files instead of checking them")
    ap.add_argument("paths", nargs="+", type=Path, help="files or directories (their *.py files)")
    args = ap.parse_args(argv)
    files = sorted({f for p in args.paths for f in ([p] if p.is_file() else p.rglob("*.py"))})
    if args.fix:
        error = format_in_place(files)
        print(error or f"formatted {len(files)} file(s) with isort {ISORT_VERSION} + black {BLACK_VERSION}")
        return 1 if error else 0
    result = check(files)
    for line in [result.error, *result.problems] if result.error or result.problems else []:
        print(line)
    if result.ok:
        print(f"{len(files)} file(s) already formatted as SGLang's pre-commit would")
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
