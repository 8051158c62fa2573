"""Overlay patches: per-version edits of the overlay files themselves.

The overlay is written against one SGLang release (0.5.17). Other releases rename internals, so a
patch set may carry patches whose every path is an overlay *destination* (`python/sglang/...`
files that only the overlay creates, or `test/...`). Those are not applied to the target tree:
they are applied to a scratch copy of `overlay/`, and that patched copy is what gets checked,
installed, pinned and reverted. The tree never sees a half-adapted overlay, revert stays "remove
the overlay files", and a patch that no longer applies to `overlay/` is refused before anything
is written.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from sglang_sage import gitrun
from sglang_sage import overlay as overlay_mod
from sglang_sage.errors import SageError
from sglang_sage.series import PatchStep, Series

_SCRATCH: list[Path] = []


def _cleanup() -> None:
    for path in _SCRATCH:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_cleanup)


def split(series: Series, overlay_files: list[overlay_mod.OverlayFile]) -> tuple[Series, tuple[PatchStep, ...]]:
    """Separate overlay patches (all paths are overlay destinations) from patches of SGLang's files.

    A patch mixing both is refused: it could be neither applied to the tree (the overlay files do
    not exist there yet) nor to the overlay alone.
    """
    dests = {of.dest for of in overlay_files}
    tree_steps: list[PatchStep] = []
    overlay_steps: list[PatchStep] = []
    for step in series.patches:
        ours = [f for f in step.files if f in dests]
        if not ours:
            tree_steps.append(step)
        elif len(ours) == len(step.files) and not step.added:
            overlay_steps.append(step)
        else:
            theirs = sorted(set(step.files) - set(ours))
            raise SageError(
                f"{step.path}: touches overlay files and SGLang files in one patch; split it",
                details=[f"overlay: {f}" for f in ours] + [f"SGLang: {f}" for f in theirs],
            )
    return replace(series, patches=tuple(tree_steps)), tuple(overlay_steps)


def materialize(overlay_root: Path, steps: tuple[PatchStep, ...], dest: Path | None = None) -> Path:
    """A copy of `overlay_root` with `steps` applied (`git apply`, no fuzz); returns its root.

    A step may delete overlay files (e.g. the sm90 JIT kernel on a release without SGLang's JIT
    framework): the copy then lacks them, so they are neither checked, installed nor pinned.

    Without `dest` the copy goes to a scratch directory removed at interpreter exit.
    """
    if dest is None:
        dest = Path(tempfile.mkdtemp(prefix="sglang-sage-overlay-"))
        _SCRATCH.append(dest)
    files = overlay_mod.discover(overlay_root)
    with tempfile.TemporaryDirectory(prefix="sglang-sage-ovpatch-") as tmp:
        repo = Path(tmp) / "repo"
        for of in files:
            (repo / of.dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(of.source, repo / of.dest)
        # Never let git find an enclosing repository: inside one, paths would be relative to it.
        env = {"GIT_CEILING_DIRECTORIES": str(repo.parent)}
        for step in steps:
            result = gitrun.run(repo, "apply", "-p1", "--whitespace=nowarn", str(step.path), env=env)
            if not result.ok:
                raise SageError(
                    f"{step.path}: overlay patch does not apply to {overlay_root} "
                    "(overlay/ changed since the patch was made: regenerate it)",
                    details=result.stderr.strip().splitlines(),
                )
        for of in files:
            if not (repo / of.dest).exists():  # the patch deletes it: this release does not get the file
                continue
            target = dest / of.src
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo / of.dest, target)
    return dest


def effective_overlay(series: Series, overlay_root: Path) -> tuple[Series, Path]:
    """The series without its overlay patches, and the overlay root to use (patched copy if needed)."""
    tree_series, steps = split(series, overlay_mod.discover(overlay_root))
    if not steps:
        return tree_series, overlay_root
    return tree_series, materialize(overlay_root, steps)
