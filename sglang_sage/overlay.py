"""The overlay: whole new files (the backend, its tests) installed at their SGLang paths.

Mapping (docs/CONTRACTS.md): `overlay/sglang/**` -> the package root (`python/sglang/**`),
`overlay/test/**` -> the repo root (`test/**`). Files are discovered by walking overlay/ so
the backend author never has to register them anywhere; the manifest pins their hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sglang_sage.hashing import sha256_file
from sglang_sage.manifest import OverlayEntry

OVERLAY_DIR = Path(__file__).resolve().parent.parent / "overlay"
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}


@dataclass(frozen=True)
class OverlayFile:
    """One file found under overlay/ with its repo-relative destination."""

    source: Path
    src: str  # relative to overlay/
    dest: str  # relative to the repo root, e.g. python/sglang/... or test/...

    @property
    def is_test(self) -> bool:
        """Tests live at the repo root, not inside the package."""
        return self.dest.startswith("test/")


def destination(src: str) -> str | None:
    """Repo-relative destination of an overlay-relative path, or None when it maps nowhere."""
    if src.startswith("sglang/"):
        return "python/" + src
    if src.startswith("test/"):
        return src
    return None


def discover(root: Path = OVERLAY_DIR) -> list[OverlayFile]:
    """Every installable file under overlay/, sorted (bytecode and tool caches skipped)."""
    found: list[OverlayFile] = []
    if not root.is_dir():
        return found
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(part in _SKIP_DIRS for part in rel.parts) or path.suffix == ".pyc":
            continue
        dest = destination(rel.as_posix())
        if dest is not None:
            found.append(OverlayFile(path, rel.as_posix(), dest))
    return found


def unmapped(root: Path = OVERLAY_DIR) -> list[str]:
    """Files under overlay/ outside sglang/ and test/: reported so nothing is silently dropped."""
    if not root.is_dir():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file()
        and destination(p.relative_to(root).as_posix()) is None
        and not any(part in _SKIP_DIRS for part in p.relative_to(root).parts)
    )


def entries(files: list[OverlayFile]) -> list[OverlayEntry]:
    """Manifest entries (with current hashes) for the discovered files."""
    return [OverlayEntry(f.src, f.dest, sha256_file(f.source) or "") for f in files]


def stale(files: list[OverlayFile], pinned: list[OverlayEntry]) -> list[str]:
    """Differences between overlay/ on disk and the manifest, one human line each."""
    current = {e.src: e.sha256 for e in entries(files)}
    pins = {e.src: e.sha256 for e in pinned}
    out = [f"overlay/{s}: not in manifest" for s in sorted(set(current) - set(pins))]
    out += [f"overlay/{s}: in manifest but missing on disk" for s in sorted(set(pins) - set(current))]
    out += [
        f"overlay/{s}: changed since the manifest was written"
        for s in sorted(set(current) & set(pins))
        if current[s] != pins[s]
    ]
    return out
