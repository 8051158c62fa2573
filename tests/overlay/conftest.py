"""Load the overlay's kernel package on CPU (Triton interpreter), without an SGLang install.

The package is imported under its own name (``sage_attn_overlay``) from ``overlay/``, so these
tests exercise the exact files that ``apply.py`` installs.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from sglang_sage.overlay_kernels import load_submodule  # noqa: E402


@pytest.fixture(scope="session")
def sage_attn():
    return {sub: load_submodule(sub) for sub in ("kernels", "plan", "reference", "support", "stats")}
