"""A patch set directory: quilt-style `series` listing format-patch files and structured edit steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import unidiff

from sglang_sage import dep3
from sglang_sage.errors import SageError
from sglang_sage.pyproject_edit import PyprojectEdit

PATCHES_DIR = Path(__file__).resolve().parent.parent / "patches"


@dataclass(frozen=True)
class PatchStep:
    """One `git format-patch` file: the repo-relative files it touches and its DEP-3 header."""

    name: str
    path: Path
    files: tuple[str, ...]
    added: tuple[str, ...]  # files the patch creates (pre-image is absence)
    header: dep3.Dep3
    hunks: int


@dataclass(frozen=True)
class Series:
    """The ordered steps of one patch set."""

    directory: Path
    patches: tuple[PatchStep, ...]
    edits: tuple[PyprojectEdit, ...]
    order: tuple[str, ...]

    @property
    def patched_files(self) -> list[str]:
        """Every repo-relative file some patch touches, in series order, without repeats."""
        seen: dict[str, None] = {}
        for step in self.patches:
            for f in step.files:
                seen.setdefault(f, None)
        return list(seen)


def _strip(path: str) -> str:
    return path[2:] if path.startswith(("a/", "b/")) else path


def load_patch(path: Path) -> PatchStep:
    """Parse one patch with unidiff (for file/hunk names) and check its DEP-3 header."""
    text = path.read_text(encoding="utf-8")
    try:
        parsed = unidiff.PatchSet(text)
    except unidiff.UnidiffParseError as exc:
        raise SageError(f"{path}: not a unified diff: {exc}") from exc
    if not len(parsed):
        raise SageError(f"{path}: contains no file changes")
    header = dep3.parse(text)
    lacking = dep3.missing(header)
    if lacking:
        raise SageError(f"{path}: DEP-3 header lacks {', '.join(lacking)}")
    files = tuple(_strip(p.path) for p in parsed)
    added = tuple(_strip(p.path) for p in parsed if p.is_added_file)
    return PatchStep(path.name, path, files, added, header, sum(len(p) for p in parsed))


def load(directory: Path) -> Series:
    """Read `series` (one step per line, `#` comments) and every step it names."""
    series_file = directory / "series"
    if not series_file.is_file():
        raise SageError(f"{directory}: no series file")
    patches: list[PatchStep] = []
    edits: list[PyprojectEdit] = []
    order: list[str] = []
    for raw in series_file.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split()[0]  # quilt allows options like -p1 after the name; we use -p1 always
        step_path = directory / name
        if not step_path.is_file():
            raise SageError(f"{series_file}: names {name}, which does not exist")
        if name.endswith(".patch"):
            patches.append(load_patch(step_path))
        elif name.endswith(".edit.toml"):
            edits.append(PyprojectEdit.load(step_path))
        else:
            raise SageError(f"{series_file}: {name} is neither *.patch nor *.edit.toml")
        order.append(name)
    return Series(directory, tuple(patches), tuple(edits), tuple(order))


def available_versions(root: Path = PATCHES_DIR) -> list[str]:
    """Versions that have a patch set (a directory with a series file)."""
    return sorted(p.name for p in root.iterdir() if (p / "series").is_file()) if root.is_dir() else []


def patchset_dir(version: str, root: Path = PATCHES_DIR) -> Path:
    """The patch set for exactly this SGLang version, or a refusal naming what exists."""
    directory = root / version
    if not (directory / "series").is_file():
        have = ", ".join(available_versions(root)) or "none"
        raise SageError(f"SGLang {version} is not supported: no patch set patches/{version}/ (available: {have})")
    return directory
