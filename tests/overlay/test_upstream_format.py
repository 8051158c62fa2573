"""The overlay is formatted the way SGLang's pre-commit formats (isort, then black, SGLang's settings):
a PR made from it must not fail upstream lint. The same check runs in `apply.py pr`'s self-check."""

from __future__ import annotations

from pathlib import Path

from sglang_sage import upstream_style

REPO = Path(__file__).resolve().parents[2]


def test_overlay_passes_sglangs_formatters() -> None:
    files = sorted((REPO / "overlay").rglob("*.py"))
    result = upstream_style.check(files)
    assert not result.error, result.error
    assert result.checked == len(files) > 5
    assert result.problems == [], "\n".join(result.problems)


def test_the_pins_leave_sglangs_own_files_unchanged(pristine_installed: Path) -> None:
    """The tool versions are right for the release: its own files are fixed points of the check."""
    attention = pristine_installed / "sglang/srt/layers/attention"
    files = sorted(attention.glob("*.py")) + [pristine_installed / "sglang/srt/server_args.py"]
    result = upstream_style.check(files)
    assert not result.error and result.problems == [], result.problems or result.error
    assert result.checked > 30


def test_the_check_finds_black_and_isort_changes_and_writes_nothing(tmp_path: Path) -> None:
    unsorted = tmp_path / "unsorted.py"
    unsorted.write_text("import sys\nimport os\n\nprint(os, sys)\n")
    long_line = tmp_path / "long_line.py"
    long_line.write_text("x = {'a':1}\n")
    clean = tmp_path / "clean.py"
    clean.write_text('import os\nimport sys\n\nfrom sglang.srt import utils\n\nprint(os, sys, utils, {"a": 1})\n')
    before = {p: p.read_bytes() for p in (unsorted, long_line, clean)}
    result = upstream_style.check([unsorted, long_line, clean])
    assert not result.error and [p.split(":")[0] for p in result.problems] == [str(unsorted), str(long_line)]
    assert {p: p.read_bytes() for p in before} == before
