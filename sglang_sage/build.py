"""Make the patched tree importable: editable reinstall for source trees, bytecode for installed ones."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sglang_sage.layout import Layout, LayoutKind


@dataclass
class BuildResult:
    """What the build step ran and how it went."""

    command: list[str]
    returncode: int
    output: str
    skipped: str = ""


def default_command(layout: Layout, python: str, files: list[Path]) -> tuple[list[str], str]:
    """The rebuild for this layout, or ([], reason) when there is nothing to build."""
    if layout.kind is LayoutKind.INSTALLED:
        if not files:
            return [], "no Python files were written"
        return [python, "-m", "compileall", "-q", *map(str, files)], ""
    if not any((layout.pkg_root / n).is_file() for n in ("pyproject.toml", "setup.py")):
        return [], f"{layout.pkg_root} has no pyproject.toml/setup.py (wheel-derived tree): nothing to pip install"
    return [python, "-m", "pip", "install", "-e", str(layout.pkg_root), "--no-deps"], ""


def run(layout: Layout, python: str, files: list[Path], build_cmd: str | None = None) -> BuildResult:
    """Run the build; `build_cmd` may use {python}, {pkg_root} and {root} placeholders."""
    if build_cmd:
        cmd = [
            part.format(python=python, pkg_root=layout.pkg_root, root=layout.root) for part in shlex.split(build_cmd)
        ]
    else:
        cmd, reason = default_command(layout, python, files)
        if not cmd:
            return BuildResult([], 0, "", skipped=reason)
    try:
        proc = subprocess.run(cmd, cwd=layout.root, capture_output=True, text=True, check=False)
    except OSError as exc:
        return BuildResult(cmd, 127, str(exc))
    return BuildResult(cmd, proc.returncode, (proc.stdout + proc.stderr)[-4000:])
