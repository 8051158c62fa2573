"""The committed 0.5.17 patch set: series, DEP-3 headers, manifest pins."""

from __future__ import annotations

from pathlib import Path

from packaging.specifiers import SpecifierSet

from sglang_sage import overlay
from sglang_sage.hashing import sha256_file
from sglang_sage.layout import detect
from sglang_sage.manifest import Manifest
from sglang_sage.series import PATCHES_DIR, load

SET = PATCHES_DIR / "0.5.17"


def test_series_and_dep3() -> None:
    series = load(SET)
    assert series.order[0].endswith(".patch") and series.order[-1].endswith(".edit.toml")
    for step in series.patches:
        text = step.path.read_text()
        assert text.startswith("From ") and "\nSubject: " in text  # git format-patch mail
        assert {"Description", "Origin", "Forwarded", "Last-Update"} <= set(step.header.fields)
    assert set(series.patched_files) == {
        "python/sglang/srt/layers/attention/attention_registry.py",
        "python/sglang/srt/server_args.py",
    }
    assert {"Description", "Origin", "Forwarded", "Last-Update"} <= set(series.edits[0].header)


def test_manifest_pins(pristine_installed: Path, sglang_wheel: Path) -> None:
    m = Manifest.load(SET / "manifest.toml")
    assert (m.version, m.upstream_tag, m.torch) == ("0.5.17", "v0.5.17", "2.11.0")
    meta = (pristine_installed / "sglang-0.5.17.dist-info" / "METADATA").read_text()
    assert f"Requires-Python: {m.requires_python}" in meta and "Requires-Dist: torch==2.11.0" in meta
    assert all(v in SpecifierSet(m.requires_python) for v in m.python_versions)
    layout = detect(pristine_installed)
    for f in load(SET).patched_files:
        assert sha256_file(layout.map_path(f)) == m.pre[f], f  # type: ignore[arg-type]


def test_manifest_overlay_hashes_current() -> None:
    """Fails when overlay/ changed without `python apply.py manifest --update 0.5.17`."""
    m = Manifest.load(SET / "manifest.toml")
    assert overlay.stale(overlay.discover(), m.overlay) == []
    assert overlay.unmapped() == []
