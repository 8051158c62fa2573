"""The structured pyproject step against the REAL upstream pyproject.toml (sglang 0.5.10.post1 sdist)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from sglang_sage.errors import SageError
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


def test_existing_extras_group_gets_the_missing_requirement() -> None:
    text = '[project]\nname = "x"\ndependencies = []\n\n[project.optional-dependencies]\nsage = ["other>=1"]\n'
    result = apply_edit(text, EDIT)
    assert result.changed
    assert result.added == ["dependencies: jinja2>=3.1.0", "[sage]: sageattention>=1.0.6"]
    data = tomllib.loads(result.text)["project"]
    assert data["optional-dependencies"]["sage"] == ["other>=1", "sageattention>=1.0.6"]
    assert data["dependencies"] == ["jinja2>=3.1.0"]
    again = apply_edit(result.text, EDIT)
    assert not again.changed and again.text == result.text
    assert again.kept == ["dependencies: jinja2>=3.1.0", "[sage]: sageattention>=1.0.6"]


def test_existing_extras_requirement_is_kept_under_another_spelling() -> None:
    text = (
        '[project]\nname = "x"\ndependencies = ["jinja2"]\n'
        '[project.optional-dependencies]\nsage = ["SageAttention==1.0.6"]\n'
    )
    result = apply_edit(text, EDIT)
    assert not result.changed and result.text == text
    assert result.kept == ["dependencies: jinja2", "[sage]: SageAttention==1.0.6"]


def test_missing_tables_are_created() -> None:
    result = apply_edit('[project]\nname = "x"\n', EDIT)
    data = tomllib.loads(result.text)["project"]
    assert data["dependencies"] == ["jinja2>=3.1.0"]
    assert data["optional-dependencies"] == {"sage": ["sageattention>=1.0.6"]}
    assert result.added == ["dependencies: jinja2>=3.1.0", "[sage]: sageattention>=1.0.6"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [("[project\n", "not valid TOML"), ('[tool.x]\nname = "x"\n', "has no [project] table")],
)
def test_bad_documents_are_refused_naming_the_file(text: str, needle: str) -> None:
    with pytest.raises(SageError, match=re.escape(needle)) as info:
        apply_edit(text, EDIT, "some/pyproject.toml")
    assert "some/pyproject.toml" in str(info.value)


def test_invalid_upstream_requirements_are_left_alone() -> None:
    text = '[project]\nname = "x"\ndependencies = ["not a valid req !!", "Jinja2"]\n'
    result = apply_edit(text, EDIT)
    assert tomllib.loads(result.text)["project"]["dependencies"][:2] == ["not a valid req !!", "Jinja2"]
    assert "dependencies: Jinja2" in result.kept


def write_step(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "0002-x.edit.toml"
    path.write_text(body)
    return path


def test_load_reads_every_field(tmp_path: Path) -> None:
    path = write_step(
        tmp_path,
        'kind = "pyproject"\ntarget = "python/pyproject.toml"\ndependencies = ["a>=1"]\n'
        '[optional-dependencies]\nx = ["b", "c<2"]\n[dep3]\nDescription = "why"\nForwarded = "no"\n',
    )
    edit = PyprojectEdit.load(path)
    assert edit.name == "0002-x.edit.toml" and edit.target == "python/pyproject.toml"
    assert edit.dependencies == ("a>=1",) and edit.extras == {"x": ("b", "c<2")}
    assert edit.header == {"Description": "why", "Forwarded": "no"}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('kind = "pyproject"\ntarget = \n', "not valid TOML"),
        ('kind = "setup.cfg"\ntarget = "x"\n', "unknown edit kind 'setup.cfg'"),
        ('target = "x"\n', "unknown edit kind None"),
        ('kind = "pyproject"\ntarget = "x"\ndependencies = ["ok", "bad req !!"]\n', "invalid requirement 'bad req !!'"),
        ('kind = "pyproject"\ntarget = "x"\n[optional-dependencies]\ng = ["b c"]\n', "invalid requirement 'b c'"),
    ],
)
def test_load_refuses_bad_steps_naming_the_file(tmp_path: Path, body: str, needle: str) -> None:
    path = write_step(tmp_path, body)
    with pytest.raises(SageError, match=re.escape(needle)) as info:
        PyprojectEdit.load(path)
    assert str(path) in str(info.value)


def test_minimal_step_and_several_new_groups(tmp_path: Path) -> None:
    edit = PyprojectEdit.load(
        write_step(tmp_path, 'kind = "pyproject"\ntarget = "t"\n[optional-dependencies]\na = ["x"]\nb = ["y", "z"]\n')
    )
    assert edit.dependencies == () and edit.header == {}  # no dependencies, no [dep3]: empty, not an error
    result = apply_edit('[project]\nname = "p"\n', edit)
    assert tomllib.loads(result.text)["project"] == {
        "name": "p",
        "optional-dependencies": {"a": ["x"], "b": ["y", "z"]},
    }
    assert result.added == ["[a]: x", "[b]: y", "[b]: z"]


@pytest.mark.parametrize(
    "edit",
    [
        PyprojectEdit("s", "t", dependencies=("bad req !!",)),
        PyprojectEdit("s", "t", extras={"g": ("bad req !!",)}),
    ],
)
def test_an_invalid_requirement_of_the_step_names_the_document(edit: PyprojectEdit) -> None:
    text = '[project]\nname = "x"\ndependencies = ["a"]\n[project.optional-dependencies]\ng = ["b"]\n'
    with pytest.raises(SageError) as info:
        apply_edit(text, edit, "some/pyproject.toml")
    assert info.value.message.startswith("some/pyproject.toml: invalid requirement 'bad req !!'")


def test_default_document_name_in_messages() -> None:
    with pytest.raises(SageError) as info:
        apply_edit("[project\n", EDIT)
    assert info.value.message.startswith("pyproject.toml: not valid TOML")
