"""Find the SGLang that a given interpreter imports, without importing it.

`python apply.py` with no `--sglang-dir` should patch what the user runs: the `sglang` package of the
target interpreter (`--python`, default the one running apply.py). That interpreter may be another
venv, so it is asked in a subprocess; `importlib.util.find_spec` locates the package without running
its `__init__` (which would import torch and take seconds, or fail on a CPU box).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sglang_sage.errors import SageError
from sglang_sage.layout import Layout, detect

# The current directory is dropped from sys.path first: a `sglang/` folder next to where apply.py
# was started must not pass for the installed package.
_PROBE = """
import importlib.util, json, os, sys
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
out = {}
try:
    spec = importlib.util.find_spec("sglang")
except Exception as exc:  # a broken sglang install: report it, do not crash the probe
    spec, out["error"] = None, "%s: %s" % (type(exc).__name__, exc)
if spec is not None:
    locations = list(spec.submodule_search_locations or [])
    out["package"] = locations[0] if locations else (os.path.dirname(spec.origin) if spec.origin else None)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class InstalledSglang:
    """The `sglang` package an interpreter imports, and the tree (layout) that holds it."""

    python: str
    package: Path
    layout: Layout

    def describe(self) -> str:
        """One line naming the target before anything is written."""
        return f"SGLang {self.layout.version} installed for {self.python}: {self.layout.describe()}"


def find(python: str) -> InstalledSglang | None:
    """The SGLang `python` would import, or None when it has none.

    An editable install of a git checkout (`pip install -e python/`) maps to the checkout's root, so
    the checkout is patched as a checkout (overlay tests included), not as a bare package directory.
    """
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SageError(f"--python {python}: cannot run it ({exc})") from exc
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        raise SageError(
            f"--python {python}: could not ask it where sglang is (exit {proc.returncode})",
            details=(proc.stderr or proc.stdout).strip().splitlines()[-5:],
        ) from exc
    if data.get("error"):
        raise SageError(f"--python {python}: finding the sglang package failed: {data['error']}")
    if not data.get("package"):
        return None
    package = Path(data["package"])
    parent = package.parent
    # python/sglang of a git checkout (editable install): the checkout root is the tree
    root = parent.parent if parent.name == "python" and (parent.parent / ".git").exists() else parent
    try:
        layout = detect(root)
    except SageError as exc:
        raise SageError(
            f"--python {python} imports sglang from {package}, which is no tree apply.py can patch: {exc.message}",
            details=[*exc.details, "name the tree with --sglang-dir, or use --fetch for the pinned release"],
        ) from exc
    return InstalledSglang(python, package, layout)
