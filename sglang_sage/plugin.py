"""SGLang plugin: ``--attention-backend sage_attn`` in an unpatched SGLang, from the overlay files themselves.

SGLang 0.5.17 runs every entry point of the group ``sglang.srt.plugins`` early in each process it
starts (``sglang.srt.plugins.load_plugins``: ``python -m sglang.launch_server``, ``sglang serve``,
``sglang.Engine`` and every scheduler process, which is *spawned* and so registers again). This
project's entry point ``sage_attn`` (pyproject.toml) points at :func:`register`, which

1. finds the overlay: ``overlay/sglang/**`` of a checkout or editable install, or the same tree
   shipped in the wheel as ``sglang_sage/_overlay/sglang/**`` — the files ``apply.py`` installs,
   never a second copy;
2. checks, and on any doubt logs ONE line and registers nothing (SGLang still starts, with its own
   backends): the tree does not already carry the overlay (then it *defers* to it), the SGLang
   version is one this plugin is verified on, SGLang's plugin API is there, the static API check
   (``sglang_sage.apicheck``) passes and every JIT source the overlay names is reachable;
3. makes the overlay's modules importable under their SGLang names with a meta-path finder
   (nothing is written into site-packages, nothing to revert), registers the backend factory with
   ``register_attention_backend`` (what patch 0001 adds to ``attention_registry.py``) and adds the
   choice with ``add_attention_backend_choices`` (what it adds to ``server_args.py``).

Non-Python overlay files (e.g. ``.cuh`` sources under ``overlay/sglang/kernels/jit/csrc/``) are
shipped with the wheel and sit next to the modules, so an overlay module finds them relative to its
own ``__file__`` — the one way that works both here and in an applied tree. SGLang's ``load_jit``
resolves ``cuda_files=`` against the *installed* ``sglang/kernels/jit/csrc``, which the plugin does
not touch: overlay sources must go through ``external_cuda_files`` (:func:`jit_source_misses`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

ENTRY_POINT = "sage_attn"  # the name in group sglang.srt.plugins, i.e. what SGLANG_PLUGINS lists
BACKEND = "sage_attn"
# SGLang releases the plugin registers on: the GPU-verified patch sets (tests keep this in sync with
# patches/*/manifest.toml). Others are refused unless ANY_VERSION_ENV is set (the API check still runs).
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.5.17",)
ANY_VERSION_ENV = "SGLANG_SAGE_PLUGIN_ANY_VERSION"
BACKEND_MODULE_FILE = "sglang/srt/layers/attention/sage_attn_backend.py"  # what the factory imports
_PREFIX = "sage_attn plugin: "
_SKIP_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
_JIT_FILE_KWARGS = {"cuda_files": "external_cuda_files", "cpp_files": "external_cpp_files"}


@dataclass
class PluginState:
    """What :func:`register` did in this process (read by tests and the GPU evidence script)."""

    status: str = "not-run"  # registered | deferred | refused | not-run
    message: str = ""
    overlay: str | None = None
    sglang_dir: str | None = None
    version: str | None = None
    details: list[str] = field(default_factory=list)


STATE = PluginState()


def overlay_root() -> Path | None:
    """The directory holding the overlay's ``sglang/``: the wheel's copy first, then the checkout's."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_overlay", here.parent / "overlay"):
        if (candidate / "sglang").is_dir():
            return candidate
    return None


def overlay_files(root: Path) -> list[str]:
    """Every file under ``root/sglang`` (any type), as root-relative POSIX paths, caches skipped."""
    out = []
    for path in sorted((root / "sglang").rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not (_SKIP_PARTS & set(rel.parts)) and path.suffix != ".pyc":
            out.append(rel.as_posix())
    return out


class OverlayFinder(importlib.abc.MetaPathFinder):
    """Imports ``sglang.*`` modules that exist only in the overlay from the overlay's own files.

    It answers only for names the installed SGLang does not have (checked before it is installed), so
    it never shadows SGLang; modules keep their real ``__file__``, so files next to them are found.
    """

    def __init__(self, root: Path, stock_parent: Path) -> None:
        self.root = root
        self.modules: dict[str, tuple[Path, bool]] = {}
        self.namespaces: dict[str, Path] = {}
        for rel in overlay_files(root):
            if not rel.endswith(".py"):
                continue
            path = root / rel
            parts = list(Path(rel).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            self.modules[".".join(parts)] = (path, is_pkg)
            # directories on the way that are neither overlay packages nor SGLang directories
            for depth in range(1, len(parts) - (0 if is_pkg else 1)):
                rel_dir = Path(*parts[: depth + 1])
                if not (root / rel_dir / "__init__.py").is_file() and not (stock_parent / rel_dir).is_dir():
                    self.namespaces.setdefault(".".join(rel_dir.parts), root / rel_dir)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        """A file spec for an overlay module or package, a namespace spec for a new plain directory."""
        hit = self.modules.get(fullname)
        if hit is not None:
            file, is_pkg = hit
            return importlib.util.spec_from_file_location(
                fullname, file, submodule_search_locations=[str(file.parent)] if is_pkg else None
            )
        ns = self.namespaces.get(fullname)
        if ns is not None:
            spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
            spec.submodule_search_locations = [str(ns)]
            return spec
        return None


def create_sage_attn_backend(runner: Any) -> Any:
    """The backend factory; the same body as patch 0001's (a test compares them)."""
    # 8-bit SageAttention (INT8 QK^T, FP16 PV) for prefill/extend; the KV pool
    # layout it reads is the MHA one, so MLA models must pick another backend.
    if runner.use_mla_backend:
        raise ValueError("sage_attn backend can only be used with non-MLA models.")
    from sglang.srt.layers.attention.sage_attn_backend import SageAttnBackend

    return SageAttnBackend(runner)


def jit_source_misses(root: Path, stock_pkg: Path) -> list[str]:
    """``load_jit(cuda_files=[...])`` / ``cpp_files`` literals in the overlay naming files SGLang lacks.

    ``load_jit`` resolves those names against the installed ``sglang/kernels/jit/csrc``: fine in an
    applied tree, missing under the plugin. Overlay sources must be passed as ``external_cuda_files``
    / ``external_cpp_files``, resolved from the module's ``__file__``. Non-literal lists are not judged.
    """
    csrc = stock_pkg / "kernels" / "jit" / "csrc"
    misses = []
    for rel in overlay_files(root):
        if not rel.endswith(".py"):
            continue
        try:
            tree = ast.parse((root / rel).read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue  # the API check reports unparsable files
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name != "load_jit":
                continue
            for kw in node.keywords:
                if kw.arg not in _JIT_FILE_KWARGS or not isinstance(kw.value, (ast.List, ast.Tuple)):
                    continue
                for elt in kw.value.elts:
                    if (
                        isinstance(elt, ast.Constant)
                        and isinstance(elt.value, str)
                        and not (csrc / elt.value).is_file()
                    ):
                        misses.append(
                            f"{rel}:{node.lineno}: load_jit({kw.arg}=[{elt.value!r}]) is not in SGLang's "
                            f"sglang/kernels/jit/csrc; pass it as {_JIT_FILE_KWARGS[kw.arg]} resolved from __file__"
                        )
    return misses


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sglang_version(stock_pkg: Path) -> str | None:
    """The running SGLang's version, read like apply.py does (version files, then package metadata)."""
    from sglang_sage.errors import SageError
    from sglang_sage.layout import _read_version

    try:
        return _read_version(stock_pkg, [])[0]
    except SageError:
        pass
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:  # noqa: BLE001 - no metadata either: reported as unknown
        return None


def _finish(status: str, message: str, level: int, details: Sequence[str] = ()) -> None:
    message = " ".join(message.split())  # one log line, whatever an exception text carried
    STATE.status, STATE.message, STATE.details = status, message, list(details)
    logger.log(level, _PREFIX + message)


def _refuse(message: str, details: Sequence[str] = ()) -> None:
    _finish("refused", message + "; registering nothing", logging.WARNING, details)


def register() -> None:
    """Entry point of group ``sglang.srt.plugins``: register ``sage_attn``, defer, or refuse in one log line.

    Never raises: a plugin error must not stop SGLang from starting with its other backends.
    """
    if STATE.status in ("registered", "deferred"):
        return  # a second call in this process (or a forked child of one that ran it)
    try:
        _register()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        _refuse(f"unexpected error ({type(exc).__name__}: {exc})")


def _register() -> None:
    root = overlay_root()
    here = Path(__file__).resolve().parent
    if root is None:
        _refuse(
            f"no overlay files next to the sglang_sage package (looked in {here / '_overlay'} and "
            f"{here.parent / 'overlay'}); reinstall sglang-sage"
        )
        return
    STATE.overlay = str(root)
    try:
        sglang = importlib.import_module("sglang")
        stock_pkg = Path(sglang.__file__).resolve().parent  # type: ignore[arg-type]
        STATE.sglang_dir = str(stock_pkg)
        STATE.version = version = _sglang_version(stock_pkg)
        server_args = importlib.import_module("sglang.srt.server_args")
        registry = importlib.import_module("sglang.srt.layers.attention.attention_registry")
    except Exception as exc:  # noqa: BLE001 - an SGLang we cannot even import is not one to register on
        _refuse(f"cannot import SGLang's server_args / attention_registry ({type(exc).__name__}: {exc})")
        return
    choices = getattr(server_args, "ATTENTION_BACKEND_CHOICES", None)
    backends = getattr(registry, "ATTENTION_BACKENDS", None)

    # 1. a tree that registers sage_attn itself and has its backend module (apply.py ran, maybe an older one)
    #    wins: registering again would compete with it. A half-patched tree gets nothing from us.
    files = overlay_files(root)
    present = [rel for rel in files if (stock_pkg.parent / rel).exists()]
    has_choice = isinstance(choices, list) and BACKEND in choices
    has_backend = isinstance(backends, dict) and BACKEND in backends
    where = f"SGLang {version} at {stock_pkg}"
    if has_choice and has_backend and (stock_pkg.parent / BACKEND_MODULE_FILE).is_file():
        factory = backends[BACKEND]  # type: ignore[index]
        owner = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', '?')}"
        differ = [rel for rel in files if rel not in present or _sha256(stock_pkg.parent / rel) != _sha256(root / rel)]
        if differ:
            _finish(
                "deferred",
                f"{where} already registers sage_attn ({owner}), from other sglang-sage files ({len(differ)} of "
                f"{len(files)} differ or are missing, e.g. {differ[0]}; see `python apply.py status --sglang-dir "
                f"{stock_pkg.parent}`): the plugin defers to it",
                logging.WARNING,
                differ,
            )
        else:
            _finish(
                "deferred",
                f"{where} already has the sage_attn overlay applied ({owner}): the plugin defers to it",
                logging.INFO,
            )
        return
    if present or has_choice or has_backend:
        _refuse(
            f"{where} is partially patched for sage_attn (overlay files present: {len(present)} of "
            f"{len(files)}, choice in server_args: {'yes' if has_choice else 'no'}, backend in "
            f"attention_registry: {'yes' if has_backend else 'no'}); check it with `python apply.py status "
            f"--sglang-dir {stock_pkg.parent}`",
            present,
        )
        return

    # 2. the version: verified ones, or any with the opt-in (the API check below still has to pass)
    any_version = os.environ.get(ANY_VERSION_ENV, "") not in ("", "0")
    if version not in SUPPORTED_VERSIONS and not any_version:
        _refuse(
            f"SGLang {version} at {stock_pkg} is not supported (verified: {', '.join(SUPPORTED_VERSIONS)}; "
            f"{ANY_VERSION_ENV}=1 tries it after the static API check), so --attention-backend "
            f"{BACKEND} is unavailable"
        )
        return

    # 3. SGLang's plugin API for attention backends
    add_choices = getattr(server_args, "add_attention_backend_choices", None)
    register_backend = getattr(registry, "register_attention_backend", None)
    missing = [
        name
        for name, obj in (
            ("server_args.add_attention_backend_choices", add_choices),
            ("server_args.ATTENTION_BACKEND_CHOICES", choices if isinstance(choices, list) else None),
            ("attention_registry.register_attention_backend", register_backend),
            ("attention_registry.ATTENTION_BACKENDS", backends if isinstance(backends, dict) else None),
        )
        if obj is None
    ]
    if missing:
        _refuse(f"SGLang {version} at {stock_pkg} lacks the backend plugin API ({', '.join(missing)})")
        return

    # 4. static checks of the overlay against this very tree
    from sglang_sage import apicheck
    from sglang_sage.layout import Layout, LayoutKind

    layout = Layout(LayoutKind.INSTALLED, stock_pkg.parent, stock_pkg.parent, None, version or "?", "plugin")
    misses = [str(m) for m in apicheck.check(root, layout, include_tests=False)]
    misses += jit_source_misses(root, stock_pkg)
    if misses:
        _refuse(
            f"the static API check of the sage_attn files against SGLang {version} at {stock_pkg} found "
            f"{len(misses)} problem(s), first: {misses[0]}",
            misses,
        )
        return

    # 5. register, all or nothing (step 1 made sure that neither name was there before)
    assert isinstance(choices, list) and isinstance(backends, dict)
    finder = OverlayFinder(root, stock_pkg.parent)
    sys.meta_path.insert(0, finder)
    try:
        register_backend(BACKEND)(create_sage_attn_backend)  # type: ignore[misc]
        add_choices([BACKEND])  # type: ignore[misc]
        if BACKEND not in choices or backends.get(BACKEND) is not create_sage_attn_backend:
            raise RuntimeError("register_attention_backend/add_attention_backend_choices had no effect")
    except Exception as exc:  # noqa: BLE001 - undo whatever part happened
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        backends.pop(BACKEND, None)
        while BACKEND in choices:
            choices.remove(BACKEND)
        _refuse(f"registering failed ({type(exc).__name__}: {exc})")
        return
    note = "" if version in SUPPORTED_VERSIONS else f" (not verified; {ANY_VERSION_ENV} is set)"
    level = logging.INFO if not note else logging.WARNING
    _finish(
        "registered",
        f"--attention-backend {BACKEND} registered for SGLang {version} at {stock_pkg}{note}; "
        f"backend files from {root}",
        level,
    )
