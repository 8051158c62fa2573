"""The committed 0.5.17 patch set: series, DEP-3 headers, manifest pins."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from sglang_sage import overlay
from sglang_sage.errors import SageError
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


def _copy_set(tmp_path: Path, series: str) -> Path:
    dest = tmp_path / "set"
    shutil.copytree(SET, dest)
    (dest / "series").write_text(series)
    return dest


def test_series_honours_p1_and_refuses_other_quilt_options(tmp_path: Path) -> None:
    patch, edit = load(SET).order
    assert load(_copy_set(tmp_path / "a", f"{patch} -p1\n{edit}\n")).order == (patch, edit)
    for opts in ("-p0", "-p2", "-R", "-p1 --fuzz=3"):
        with pytest.raises(SageError, match=r"series:1: .*only `-p1` may follow a step name") as exc:
            load(_copy_set(tmp_path / opts.replace(" ", ""), f"{patch} {opts}\n{edit}\n"))
        assert opts in exc.value.message


def test_series_refuses_a_second_edit_step(tmp_path: Path) -> None:
    patch, edit = load(SET).order
    directory = _copy_set(tmp_path, f"{patch}\n{edit}\n0003-more.edit.toml\n")
    shutil.copyfile(directory / edit, directory / "0003-more.edit.toml")
    with pytest.raises(SageError, match=r"series:3: 0003-more.edit.toml is a second \*.edit.toml step"):
        load(directory)
