"""overlay.py (discovery, destinations, staleness against the pins) and manifest.py (load/dump round trip)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from sglang_sage import overlay
from sglang_sage.errors import SageError
from sglang_sage.hashing import sha256_bytes
from sglang_sage.manifest import Manifest, OverlayEntry
from sglang_sage.series import PATCHES_DIR, available_versions


def make_overlay(root: Path) -> Path:
    files = {
        "sglang/srt/b.py": b"b\n",
        "sglang/srt/a.py": b"a\n",
        "sglang/srt/__pycache__/a.cpython-311.pyc": b"junk",
        "sglang/srt/stray.pyc": b"junk",
        "test/registered/t.py": b"t\n",
        "test/.pytest_cache/x": b"junk",
        "sglang/.ruff_cache/y": b"junk",
        "docs/readme.md": b"unmapped\n",
        "toplevel.txt": b"unmapped\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_destination() -> None:
    assert overlay.destination("sglang/srt/x.py") == "python/sglang/srt/x.py"
    assert overlay.destination("test/registered/t.py") == "test/registered/t.py"
    assert overlay.destination("docs/x.md") is None
    assert overlay.destination("sglangx/y.py") is None


def test_discover_and_unmapped(tmp_path: Path) -> None:
    root = make_overlay(tmp_path / "overlay")
    found = overlay.discover(root)
    assert [(f.src, f.dest, f.is_test) for f in found] == [
        ("sglang/srt/a.py", "python/sglang/srt/a.py", False),
        ("sglang/srt/b.py", "python/sglang/srt/b.py", False),
        ("test/registered/t.py", "test/registered/t.py", True),
    ]
    assert found[0].source == root / "sglang/srt/a.py"
    assert overlay.unmapped(root) == ["docs/readme.md", "toplevel.txt"]
    assert overlay.discover(tmp_path / "missing") == [] and overlay.unmapped(tmp_path / "missing") == []


def test_entries_hash_the_files(tmp_path: Path) -> None:
    root = make_overlay(tmp_path / "overlay")
    entries = overlay.entries(overlay.discover(root))
    assert entries[0] == OverlayEntry("sglang/srt/a.py", "python/sglang/srt/a.py", sha256_bytes(b"a\n"))


def test_stale_names_every_kind_of_difference(tmp_path: Path) -> None:
    root = make_overlay(tmp_path / "overlay")
    files = overlay.discover(root)
    pins = overlay.entries(files)
    assert overlay.stale(files, pins) == []
    (root / "sglang/srt/a.py").write_bytes(b"a changed\n")  # changed after the manifest was written
    (root / "sglang/srt/new.py").write_bytes(b"new\n")
    pins.append(OverlayEntry("sglang/srt/gone.py", "python/sglang/srt/gone.py", "0" * 64))
    assert overlay.stale(overlay.discover(root), pins) == [
        "overlay/sglang/srt/new.py: not in manifest",
        "overlay/sglang/srt/gone.py: in manifest but missing on disk",
        "overlay/sglang/srt/a.py: changed since the manifest was written",
    ]


def test_the_real_overlay_is_found_where_apply_looks() -> None:
    assert overlay.OVERLAY_DIR.name == "overlay" and (overlay.OVERLAY_DIR / "sglang").is_dir()
    srcs = [f.src for f in overlay.discover()]
    assert "sglang/srt/layers/attention/sage_attn_backend.py" in srcs


MANIFEST = """\
[sglang]
version = "9.9.9"
upstream_tag = "v9.9.9"
torch = "1.0"
requires_python = ">=3.10"
python_versions = ["3.10", "3.11"]
tier = "gpu"

[files]
"python/sglang/a.py" = { pre = "aa", post = "bb" }
"python/sglang/new.py" = { pre = "", post = "cc" }

[[overlay]]
src = "sglang/z.py"
dest = "python/sglang/z.py"
sha256 = "zz"

[[overlay]]
src = "sglang/y.py"
dest = "python/sglang/y.py"
sha256 = "yy"
"""


def test_manifest_load_reads_every_field(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(MANIFEST)
    m = Manifest.load(path)
    assert (m.path, m.version, m.upstream_tag, m.torch, m.requires_python) == (
        path,
        "9.9.9",
        "v9.9.9",
        "1.0",
        ">=3.10",
    )
    assert m.python_versions == ["3.10", "3.11"] and m.tier == "gpu"
    assert m.pre == {"python/sglang/a.py": "aa", "python/sglang/new.py": None}  # "" = the file is new
    assert m.post == {"python/sglang/a.py": "bb", "python/sglang/new.py": "cc"}
    assert m.overlay == [
        OverlayEntry("sglang/z.py", "python/sglang/z.py", "zz"),
        OverlayEntry("sglang/y.py", "python/sglang/y.py", "yy"),
    ]


def test_manifest_defaults(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(MANIFEST.split("[files]")[0].replace('tier = "gpu"\n', "").replace("python_versions", "#"))
    m = Manifest.load(path)
    assert m.tier == "source" and m.python_versions == [] and m.pre == {} and m.overlay == []


def test_manifest_dump_round_trips_in_a_stable_order(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(MANIFEST)
    m = Manifest.load(path)
    text = m.dump()
    assert text.startswith("# Pins of this patch set. Regenerate: python apply.py manifest --update 9.9.9\n")
    data = tomllib.loads(text)
    assert data["sglang"] == {
        "version": "9.9.9",
        "upstream_tag": "v9.9.9",
        "torch": "1.0",
        "requires_python": ">=3.10",
        "python_versions": ["3.10", "3.11"],
        "tier": "gpu",
    }
    assert data["files"]["python/sglang/new.py"] == {"pre": "", "post": "cc"}
    assert [o["src"] for o in data["overlay"]] == ["sglang/y.py", "sglang/z.py"]  # sorted by src
    assert data["overlay"][0] == {"src": "sglang/y.py", "dest": "python/sglang/y.py", "sha256": "yy"}
    again = tmp_path / "again.toml"
    again.write_text(text)
    back = Manifest.load(again)
    assert (back.pre, back.post, sorted(back.overlay, key=lambda o: o.src)) == (
        m.pre,
        m.post,
        sorted(m.overlay, key=lambda o: o.src),
    )
    assert back.dump() == text


def test_manifest_dump_includes_files_with_only_one_pin(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.toml", "1", "v1", "t", ">=3", [], pre={"a": "x"}, post={"b": "y"})
    files = tomllib.loads(m.dump())["files"]
    assert files == {"a": {"pre": "x", "post": ""}, "b": {"pre": "", "post": "y"}}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (MANIFEST.replace('torch = "1.0"\n', ""), "missing key 'torch'"),
        (MANIFEST.replace("[sglang]", "[other]"), "missing key 'sglang'"),
        (MANIFEST.replace('src = "sglang/z.py"\n', ""), "missing key 'src'"),
        (MANIFEST.replace('tier = "gpu"', 'tier = "cpu"'), "tier = 'cpu', expected one of gpu, source"),
    ],
)
def test_manifest_refusals_name_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(text)
    with pytest.raises(SageError) as info:
        Manifest.load(path)
    assert str(info.value) == f"{path}: {needle}"


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(SageError) as info:
        Manifest.load(tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: missing manifest"


@pytest.mark.parametrize("version", available_versions())
def test_committed_manifests_regenerate_byte_identically(version: str) -> None:
    """`manifest --update` rewrites what is committed in the same text: a regenerated manifest diffs cleanly."""
    path = PATCHES_DIR / version / "manifest.toml"
    assert Manifest.load(path).dump() == path.read_text(encoding="utf-8")
