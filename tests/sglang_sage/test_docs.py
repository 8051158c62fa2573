"""README and .ci/run agree (the CI runs exactly the documented command) and exit codes are documented."""

from __future__ import annotations

import re
from pathlib import Path

from sglang_sage.errors import EXIT_CODES

REPO = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci/run").read_text()
    readme = (REPO / "README.md").read_text()
    line = next(ln for ln in ci.splitlines() if "pytest" in ln and "pip install" in ln)
    command = line.split(" || ")[0].strip()
    assert command in readme
    assert '-m "not gpu"' in command and "set -euo pipefail" in ci and '"$rc" -eq 5' in ci
    # ... inside a virtual environment it creates itself, activated before the command runs
    venv_at = ci.index(" -m venv ")
    assert venv_at < ci.index("bin/activate") < ci.index(command)


def test_exit_codes_documented() -> None:
    readme = (REPO / "README.md").read_text()
    for code in EXIT_CODES:
        assert re.search(rf"^\| {code} \|", readme, re.M), code
    for section in ("## Backend", "## Verify", "## Benchmarks"):
        assert section in readme


def _readme_section(title: str) -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split(f"\n{title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_module_list_is_the_package() -> None:
    """Every module of sglang_sage/ is in README's "Repository layout" list, and nothing else is."""
    block = _readme_section("## Repository layout").split("```")[1].splitlines()
    start = next(i for i, line in enumerate(block) if line.startswith("sglang_sage/"))
    listed: set[str] = set()
    for line in block[start + 1 :]:
        if not line.startswith("  "):
            break
        listed |= {name.strip() for name in re.split(r"\s{2,}", line.strip())[0].split(",")}
    modules = {p.stem for p in (REPO / "sglang_sage").glob("*.py") if p.stem != "__init__"}
    assert listed == modules | {"verify/"}


def test_readme_command_table_is_the_parser() -> None:
    """The Commands table has one row per apply.py command, and each row's example runs that command."""
    from sglang_sage.apply_cli import COMMANDS, parser

    rows = re.findall(r"^\| `([a-z]+)[^`]*` \| .* \| `python apply.py ?([a-z]*)", _readme_section("## Commands"), re.M)
    assert {cmd for cmd, _ in rows} == set(COMMANDS)
    assert all(example in (cmd, "") and (example or cmd == "apply") for cmd, example in rows), rows
    choices = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(choices) == set(COMMANDS)
