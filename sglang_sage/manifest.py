"""`manifest.toml`: the pins of a patch set (version, torch, python, file hashes, overlay files).

The manifest is what makes apply reproducible and revert verifiable: every file the set touches
has a pre-image and post-image sha256, and every overlay file a sha256 and a destination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from sglang_sage.errors import SageError

TIERS = ("gpu", "source")


@dataclass(frozen=True)
class OverlayEntry:
    """One overlay file: source relative to overlay/, destination relative to the repo root."""

    src: str
    dest: str
    sha256: str
    installed: bool = True  # False: run from the overlay dir on layouts without a repo root


@dataclass
class Manifest:
    """Parsed manifest.toml of one patch set."""

    path: Path
    version: str
    upstream_tag: str
    torch: str
    requires_python: str
    python_versions: list[str]
    pre: dict[str, str | None] = field(default_factory=dict)
    post: dict[str, str | None] = field(default_factory=dict)
    overlay: list[OverlayEntry] = field(default_factory=list)
    # "gpu": verified on our GPU machines (its torch pin is the GPU image's); "source": CPU checks only
    tier: str = "source"

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read and sanity-check a manifest."""
        if not path.is_file():
            raise SageError(f"{path}: missing manifest")
        data = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
        try:
            sg = data["sglang"]
            files = data.get("files", {})
            manifest = cls(
                path=path,
                version=sg["version"],
                upstream_tag=sg["upstream_tag"],
                torch=sg["torch"],
                requires_python=sg["requires_python"],
                python_versions=list(sg.get("python_versions", [])),
                pre={k: (v.get("pre") or None) for k, v in files.items()},
                post={k: (v.get("post") or None) for k, v in files.items()},
                overlay=[OverlayEntry(o["src"], o["dest"], o["sha256"]) for o in data.get("overlay", [])],
                tier=sg.get("tier", "source"),
            )
        except KeyError as exc:
            raise SageError(f"{path}: missing key {exc}") from exc
        if manifest.tier not in TIERS:
            raise SageError(f"{path}: tier = {manifest.tier!r}, expected one of {', '.join(TIERS)}")
        return manifest

    def dump(self) -> str:
        """Serialise in a stable order so regenerated manifests diff cleanly."""
        doc = tomlkit.document()
        doc.add(
            tomlkit.comment("Pins of this patch set. Regenerate: python apply.py manifest --update " + self.version)
        )
        sg = tomlkit.table()
        sg["version"] = self.version
        sg["upstream_tag"] = self.upstream_tag
        sg["torch"] = self.torch
        sg["requires_python"] = self.requires_python
        sg["python_versions"] = self.python_versions
        sg["tier"] = self.tier
        doc["sglang"] = sg
        files = tomlkit.table(is_super_table=True)
        for name in sorted(set(self.pre) | set(self.post)):
            entry = tomlkit.inline_table()
            entry["pre"] = self.pre.get(name) or ""
            entry["post"] = self.post.get(name) or ""
            files[name] = entry
        doc["files"] = files
        overlay = tomlkit.aot()
        for o in sorted(self.overlay, key=lambda e: e.src):
            t = tomlkit.table()
            t["src"] = o.src
            t["dest"] = o.dest
            t["sha256"] = o.sha256
            overlay.append(t)
        doc["overlay"] = overlay
        return tomlkit.dumps(doc)
