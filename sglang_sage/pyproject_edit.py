"""The structured "edit" step of a series: add runtime deps / extras to SGLang's pyproject.toml.

A text diff against pyproject.toml breaks on every upstream dependency bump, so this step is
expressed as data (`*.edit.toml`) and applied with tomlkit, which keeps comments, ordering and
formatting. It is idempotent: requirements whose project is already listed are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomlkit
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from sglang_sage.errors import SageError


@dataclass(frozen=True)
class PyprojectEdit:
    """What the step wants present: runtime dependencies and optional-dependency groups."""

    name: str
    target: str  # repo-relative, e.g. python/pyproject.toml
    dependencies: tuple[str, ...] = ()
    extras: dict[str, tuple[str, ...]] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> PyprojectEdit:
        """Read an `*.edit.toml` step file; its DEP-3 fields live in a [dep3] table."""
        try:
            data = tomlkit.parse(path.read_text(encoding="utf-8")).unwrap()
        except Exception as exc:  # tomlkit raises several parse error types
            raise SageError(f"{path}: not valid TOML: {exc}") from exc
        if data.get("kind") != "pyproject":
            raise SageError(f"{path}: unknown edit kind {data.get('kind')!r} (expected 'pyproject')")
        extras = {k: tuple(v) for k, v in data.get("optional-dependencies", {}).items()}
        for req in [*data.get("dependencies", []), *[r for v in extras.values() for r in v]]:
            _requirement(req, path)
        return cls(
            name=path.name,
            target=data["target"],
            dependencies=tuple(data.get("dependencies", [])),
            extras=extras,
            header={k: str(v) for k, v in data.get("dep3", {}).items()},
        )


def _requirement(text: str, where: object) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise SageError(f"{where}: invalid requirement {text!r}: {exc}") from exc


def _names(items: object) -> dict[str, str]:
    """canonical project name -> requirement string, for a TOML array of requirement strings."""
    found: dict[str, str] = {}
    for item in items or []:  # type: ignore[union-attr]
        try:
            found[canonicalize_name(Requirement(str(item)).name)] = str(item)
        except InvalidRequirement:
            continue  # upstream's business; we only look for our names
    return found


@dataclass
class EditResult:
    """Outcome of planning/applying the edit on one document."""

    text: str
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when the edit would add anything."""
        return bool(self.added)


def apply_edit(text: str, edit: PyprojectEdit, where: str = "pyproject.toml") -> EditResult:
    """Return the edited document text; unchanged text means the edit is already satisfied."""
    try:
        doc = tomlkit.parse(text)
    except Exception as exc:
        raise SageError(f"{where}: not valid TOML: {exc}") from exc
    project = doc.get("project")
    if project is None:
        raise SageError(f"{where}: has no [project] table; cannot add dependencies")
    result = EditResult(text)

    if edit.dependencies:
        if "dependencies" not in project:
            project["dependencies"] = tomlkit.array()
        deps = project["dependencies"]
        present = _names(deps)
        for req in edit.dependencies:
            name = canonicalize_name(_requirement(req, where).name)
            if name in present:
                result.kept.append(f"dependencies: {present[name]}")
            else:
                deps.append(req)
                result.added.append(f"dependencies: {req}")

    if edit.extras:
        if "optional-dependencies" not in project:
            project["optional-dependencies"] = tomlkit.table()
        optional = project["optional-dependencies"]
        for group, reqs in edit.extras.items():
            if group not in optional:
                optional[group] = tomlkit.array()
                for req in reqs:
                    optional[group].append(req)
                result.added.extend(f"[{group}]: {r}" for r in reqs)
                continue
            present = _names(optional[group])
            for req in reqs:
                name = canonicalize_name(_requirement(req, where).name)
                if name in present:
                    result.kept.append(f"[{group}]: {present[name]}")
                else:
                    optional[group].append(req)
                    result.added.append(f"[{group}]: {req}")

    if result.added:
        result.text = tomlkit.dumps(doc)
    return result
