"""Nothing is written outside the target tree: a symlink on the way to a patched file or an overlay
destination is refused by apply, check and revert, naming the link, before anything changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sglang_sage import errors as ec
from sglang_sage.apply_cli import main
from sglang_sage.patcher import link_problems

OVERLAY_DIR = "sglang/srt/layers/attention/sage_attn"
REGISTRY = "sglang/srt/layers/attention/attention_registry.py"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


@pytest.mark.parametrize("command", ["apply", "check"])
def test_overlay_directory_symlink_is_refused(command: str, installed: Path, tmp_path: Path, digest, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = installed / OVERLAY_DIR
    link.symlink_to(elsewhere, target_is_directory=True)
    before = digest(installed)
    extra = ("--no-tests", "--no-build") if command == "apply" else ()
    code, rep = run(capsys, command, "--sglang-dir", str(installed), *extra)
    assert code == ec.REFUSED, rep
    assert rep["message"].startswith(f"{link}: sglang-sage never writes through a symbolic link")
    assert rep["details"] == [f"{link}: is a symbolic link (-> {elsewhere})"]
    assert listing(elsewhere) == [] and digest(installed) == before


def test_patched_file_symlink_is_refused(checkout: Path, tmp_path: Path, digest, capsys) -> None:
    registry = checkout / "python" / REGISTRY
    outside = tmp_path / "attention_registry.py"
    shutil.copyfile(registry, outside)
    registry.unlink()
    registry.symlink_to(outside)
    before, outside_bytes = digest(checkout), outside.read_bytes()
    code, rep = run(capsys, "apply", "--sglang-dir", str(checkout), "--no-tests", "--no-build", "--force")
    assert code == ec.REFUSED, rep
    assert rep["message"].startswith(f"{registry}: sglang-sage never writes through a symbolic link")
    assert "does not apply cleanly" not in rep["message"]
    assert outside.read_bytes() == outside_bytes and digest(checkout) == before


def test_revert_never_deletes_through_a_link(installed: Path, tmp_path: Path, digest, capsys) -> None:
    code, rep = run(capsys, "apply", "--sglang-dir", str(installed), "--no-tests", "--no-build")
    assert code == 0, rep
    real = installed / OVERLAY_DIR
    moved = tmp_path / "moved-sage_attn"
    shutil.move(real, moved)
    real.symlink_to(moved, target_is_directory=True)
    before, moved_files = digest(installed), listing(moved)
    code, rep = run(capsys, "revert", "--sglang-dir", str(installed))
    assert code == ec.REFUSED, rep
    assert rep["message"].startswith(f"{real}: sglang-sage never writes through a symbolic link")
    assert listing(moved) == moved_files and digest(installed) == before


def test_link_problems_names_links_and_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f").write_text("x")
    (root / "l").symlink_to(tmp_path)
    assert link_problems(root, [root / "a" / "f", root / "a" / "new" / "g"]) == []
    assert link_problems(root, [root / "l" / "x"]) == [f"{root / 'l'}: is a symbolic link (-> {tmp_path})"]
    assert link_problems(root, [root / ".." / "root" / ".." / "f"])[0].endswith(f"(to {tmp_path / 'f'})")
