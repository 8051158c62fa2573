"""The overlay's kernel package (``sglang/srt/layers/attention/sage_attn``) imported without SGLang.

The one way the CPU tests, the kernel benchmark and the measurement scripts load the exact files
``apply.py`` installs: the package directory is imported under a private name
(``sage_attn_overlay``), so its relative imports (``from .plan import ...``) work and nothing of
SGLang is needed (the kernels import only torch and triton; the sm90 op is reached through
``kernels.sm90_op()`` and needs an SGLang with the overlay applied).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PKG_REL = Path("sglang/srt/layers/attention/sage_attn")
PRIVATE_NAME = "sage_attn_overlay"
DEFAULT_PKG_DIR = Path(__file__).resolve().parents[1] / "overlay" / PKG_REL


def load_sage_attn(pkg_dir: str | Path | None = None, name: str = PRIVATE_NAME) -> ModuleType:
    """The package at ``pkg_dir`` (default: this checkout's overlay) as module ``name``.

    Loading another directory under a name already taken is refused: two versions of the kernels
    in one process would silently mix.
    """
    pkg = Path(pkg_dir).resolve() if pkg_dir is not None else DEFAULT_PKG_DIR
    init = pkg / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"no sage_attn package at {pkg} (missing {init.name})")
    loaded = sys.modules.get(name)
    if loaded is not None:
        where = Path(list(getattr(loaded, "__path__", [""]))[0]).resolve()
        if where != pkg:
            raise ValueError(f"{name} is already loaded from {where}, not {pkg}")
        return loaded
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(pkg)])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return mod


def load_submodule(sub: str, pkg_dir: str | Path | None = None, name: str = PRIVATE_NAME) -> ModuleType:
    """One module of the package (``kernels``, ``plan``, ``reference``, ``support``, ``stats``)."""
    load_sage_attn(pkg_dir, name)
    return importlib.import_module(f"{name}.{sub}")
