"""Load the overlay's kernel package on CPU (Triton interpreter), without an SGLang install.

The package is imported under its own name (``sage_attn_overlay``) from ``overlay/``, so these
tests exercise the exact files that ``apply.py`` installs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

PKG_DIR = Path(__file__).resolve().parents[2] / "overlay/sglang/srt/layers/attention/sage_attn"


def load_sage_attn():
    name = "sage_attn_overlay"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PKG_DIR / "__init__.py", submodule_search_locations=[str(PKG_DIR)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def sage_attn():
    load_sage_attn()
    import importlib

    return {
        "kernels": importlib.import_module("sage_attn_overlay.kernels"),
        "plan": importlib.import_module("sage_attn_overlay.plan"),
        "reference": importlib.import_module("sage_attn_overlay.reference"),
        "support": importlib.import_module("sage_attn_overlay.support"),
        "stats": importlib.import_module("sage_attn_overlay.stats"),
    }
