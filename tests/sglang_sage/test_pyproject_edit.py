"""The structured pyproject step against the REAL upstream pyproject.toml (sglang 0.5.10.post1 sdist)."""

from __future__ import annotations

import difflib
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

from sglang_sage.pyproject_edit import PyprojectEdit, apply_edit
from sglang_sage.series import PATCHES_DIR

EDIT = PyprojectEdit.load(PATCHES_DIR / "0.5.17" / "0002-pyproject-sage-dependencies.edit.toml")


def test_edit_adds_and_preserves_format(sdist_root: Path) -> None:
    original = (sdist_root / "pyproject.toml").read_text()
    result = apply_edit(original, EDIT)
    assert result.changed
    data = tomllib.loads(result.text)
    assert "jinja2>=3.1.0" in data["project"]["dependencies"]
    assert data["project"]["optional-dependencies"]["sage"] == ["sageattention>=1.0.6"]
    diff = [
        ln
        for ln in difflib.unified_diff(original.splitlines(), result.text.splitlines(), lineterm="", n=0)
        if ln[:1] in "+-" and not ln.startswith(("+++", "---"))
    ]
    # only additions: comments, order, quoting of everything upstream wrote are untouched
    assert diff == ['+  "jinja2>=3.1.0",', '+sage = ["sageattention>=1.0.6"]']


def test_edit_is_idempotent(sdist_root: Path) -> None:
    once = apply_edit((sdist_root / "pyproject.toml").read_text(), EDIT).text
    twice = apply_edit(once, EDIT)
    assert not twice.changed and twice.text == once


def test_existing_requirement_is_kept() -> None:
    text = '[project]\nname = "x"\ndependencies = ["Jinja2>=3.0"]\n'
    result = apply_edit(text, EDIT)
    assert "dependencies: Jinja2>=3.0" in result.kept
    deps = tomllib.loads(result.text)["project"]["dependencies"]
    assert [Requirement(d).name.lower() for d in deps].count("jinja2") == 1
