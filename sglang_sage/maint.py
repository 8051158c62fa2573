"""Maintenance: regenerate a manifest's hashes after the overlay or the patches changed."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sglang_sage import gitrun, overlay_patches
from sglang_sage import overlay as overlay_mod
from sglang_sage.errors import SageError
from sglang_sage.hashing import sha256_file
from sglang_sage.layout import Layout
from sglang_sage.manifest import Manifest
from sglang_sage.series import load


def post_images(layout: Layout, patchset: Path) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Pre- and post-image sha256 of every patched file, computed on a scratch copy of the pristine files."""
    series, _ = overlay_patches.split(load(patchset.resolve()), overlay_mod.discover())
    pre: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="sglang-sage-manifest-") as tmp:
        scratch = Path(tmp)
        for f in series.patched_files:
            src = layout.map_path(f)
            pre[f] = sha256_file(src) if src else None
            if src is not None and src.is_file():
                (scratch / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, scratch / f)
        # never let git find an enclosing repository: inside one, paths would be relative to it
        env = {"GIT_CEILING_DIRECTORIES": str(scratch.parent)}
        result = gitrun.run(scratch, "apply", "-p1", *[str(p.path) for p in series.patches], env=env)
        if not result.ok:
            raise SageError("patches do not apply to the given pristine tree", details=result.stderr.splitlines())
        post = {f: sha256_file(scratch / f) for f in series.patched_files}
    return pre, post


def update(patchset: Path, layout: Layout | None, overlay_root: Path = overlay_mod.OVERLAY_DIR) -> Manifest:
    """Rewrite manifest.toml: overlay hashes always, pre/post-image hashes when a pristine tree is given."""
    path = patchset / "manifest.toml"
    manifest = Manifest.load(path)
    if layout is not None:
        if layout.version != manifest.version:
            raise SageError(f"{layout.root} is SGLang {layout.version}, manifest pins {manifest.version}")
        manifest.pre, manifest.post = post_images(layout, patchset)
    # Pin what gets installed: the overlay with this set's overlay patches applied.
    _, effective = overlay_patches.effective_overlay(load(patchset.resolve()), overlay_root)
    manifest.overlay = overlay_mod.entries(overlay_mod.discover(effective))
    path.write_text(manifest.dump(), encoding="utf-8")
    return manifest
