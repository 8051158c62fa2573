"""A patch set directory: quilt-style `series` listing format-patch files and structured edit steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import unidiff
from packaging.version import InvalidVersion, Version

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
    edits: tuple[PyprojectEdit, ...]  # at most one (load refuses a second)
    order: tuple[str, ...]

    @property
    def edit(self) -> PyprojectEdit | None:
        """The pyproject edit step, if the series has one."""
        return self.edits[0] if self.edits else None

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
    for lineno, raw in enumerate(series_file.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *options = line.split()
        # quilt allows options after the name; patches here are git-root relative and applied -p1 (mapped
        # per layout), so -p1 is honoured as what happens anyway and anything else is refused, not dropped
        if any(opt != "-p1" for opt in options):
            raise SageError(
                f"{series_file}:{lineno}: `{line}`: only `-p1` may follow a step name (patch paths are relative "
                "to the SGLang git root; other quilt options are not supported)"
            )
        step_path = directory / name
        if not step_path.is_file():
            raise SageError(f"{series_file}: names {name}, which does not exist")
        if name.endswith(".patch"):
            patches.append(load_patch(step_path))
        elif name.endswith(".edit.toml"):
            if edits:
                raise SageError(
                    f"{series_file}:{lineno}: {name} is a second *.edit.toml step; a set has at most one "
                    f"(revert restores pyproject.toml from one backup), merge it into {edits[0].name}"
                )
            edits.append(PyprojectEdit.load(step_path))
        else:
            raise SageError(f"{series_file}: {name} is neither *.patch nor *.edit.toml")
        order.append(name)
    return Series(directory, tuple(patches), tuple(edits), tuple(order))


def available_versions(root: Path = PATCHES_DIR) -> list[str]:
    """Versions that have a patch set (a directory with a series file)."""
    names = [p.name for p in root.iterdir() if (p / "series").is_file()] if root.is_dir() else []
    return sorted(names, key=lambda n: (Version(n), n) if _is_version(n) else (Version("0"), n))


def nearest_version(version: str, candidates: list[str]) -> str | None:
    """The set next to `version` in release order: of its two neighbours, the one in the same
    major.minor series with the smaller micro distance (the older one on a tie or otherwise)."""
    if not _is_version(version):
        return None
    want = Version(version)
    valid = sorted((Version(c), c) for c in candidates if _is_version(c))
    lower = [c for c in valid if c[0] <= want]
    upper = [c for c in valid if c[0] > want]
    below, above = (lower[-1] if lower else None), (upper[0] if upper else None)
    if below is None or above is None:
        pick = below or above
        return pick[1] if pick else None

    def micro_gap(v: Version) -> int | None:
        a, b = (v.release + (0, 0, 0))[:3], (want.release + (0, 0, 0))[:3]
        return abs(a[2] - b[2]) if a[:2] == b[:2] else None

    gap_below, gap_above = micro_gap(below[0]), micro_gap(above[0])
    if gap_above is not None and (gap_below is None or gap_above < gap_below):
        return above[1]
    return below[1]


def _is_version(text: str) -> bool:
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def patchset_dir(version: str, root: Path = PATCHES_DIR) -> Path:
    """The patch set for exactly this SGLang version, or a refusal naming what exists and the nearest."""
    directory = root / version
    if not (directory / "series").is_file():
        have = available_versions(root)
        near = nearest_version(version, have)
        raise SageError(
            f"SGLang {version} is not supported: no patch set patches/{version}/ "
            f"(supported: {', '.join(have) or 'none'})",
            details=[
                f"nearest patch set: {near}; try it with --patch-set {near} (its sha256 pins are still "
                "checked, so it applies only where the patched files are byte-identical, or with --force "
                "as a 3-way merge on a git checkout)"
            ]
            if near
            else [],
        )
    return directory
