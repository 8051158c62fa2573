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
