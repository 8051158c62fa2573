"""sha256 helpers: pins in the manifest and drift detection are all content hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str | None:
    """Hex sha256 of a file, or None when it does not exist (absence is a state too)."""
    try:
        return sha256_bytes(Path(path).read_bytes())
    except FileNotFoundError:
        return None
