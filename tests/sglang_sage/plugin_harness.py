"""Subprocess harness: SGLang's own plugin loader runs this project's entry point, on CPU.

Run as ``python -S plugin_harness.py CONFIG_JSON`` (no site: the test venv's editable install of
another checkout must not answer for ``sglang_sage``). CONFIG_JSON names the site dirs to add with
their ``.pth`` files (an editable install), plain path entries (a ``--target`` install, torch), the
directory holding the real ``sglang/`` package, and what to probe. It prints one JSON object.

What is real and what is not: ``sglang.srt.plugins`` (entry-point discovery, ``SGLANG_PLUGINS``
filtering) and ``sglang.srt.environ`` are SGLang's files, imported as they are. ``sglang/__init__``,
``server_args`` and ``attention_registry`` import GPU-only dependencies, so the last two are
rebuilt from their real source by AST: the ``ATTENTION_BACKEND_CHOICES`` list, the ``add_*`` hooks,
``ATTENTION_BACKENDS``, ``register_attention_backend`` and every function it decorates, executed
from the file's own statements; everything else in them is left out.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import site
import sys
import types
from pathlib import Path

SERVER_ARGS_NAMES = {"ATTENTION_BACKEND_CHOICES", "add_attention_backend_choices"}
REGISTRY_NAMES = {"ATTENTION_BACKENDS", "register_attention_backend", "logger"}


def _decorated_by_registry(node: ast.stmt) -> bool:
    return isinstance(node, ast.FunctionDef) and any(
        isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register_attention_backend"
        for d in node.decorator_list
    )


def _bound_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def slice_module(name: str, path: Path, names: set[str], registry: bool = False) -> types.ModuleType:
    """A module made of the named top-level statements of a real SGLang file, run in source order."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    body = [n for n in tree.body if _bound_names(n) & names or (registry and _decorated_by_registry(n))]
    mod = types.ModuleType(name)
    mod.__file__ = str(path)
    mod.__dict__["logging"] = logging
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), mod.__dict__)  # noqa: S102
    sys.modules[name] = mod
    return mod


def install_sglang(parent: Path) -> None:
    """``sglang`` as a bare package over the real directory, plus the two sliced modules."""
    pkg = parent / "sglang"
    spec = importlib.machinery.ModuleSpec("sglang", None, origin=str(pkg / "__init__.py"), is_package=True)
    spec.submodule_search_locations = [str(pkg)]
    mod = importlib.util.module_from_spec(spec)
    mod.__file__ = str(pkg / "__init__.py")
    sys.modules["sglang"] = mod
    slice_module("sglang.srt.server_args", pkg / "srt/server_args.py", SERVER_ARGS_NAMES)
    slice_module(
        "sglang.srt.layers.attention.attention_registry",
        pkg / "srt/layers/attention/attention_registry.py",
        REGISTRY_NAMES,
        registry=True,
    )


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"logger": record.name, "level": record.levelname, "msg": record.getMessage()})


def parses(choices: list[str], flag: str, value: str) -> bool:
    """argparse the way server_args.py declares the three backend flags (choices=ATTENTION_BACKEND_CHOICES)."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument(flag, type=str, choices=choices)
    try:
        parser.parse_args([flag, value])
    except (argparse.ArgumentError, SystemExit):
        return False
    return True


def main() -> None:
    cfg = json.loads(sys.argv[1])
    for d in cfg.get("sitedirs", []):
        site.addsitedir(d)
    sys.path.extend(cfg.get("paths", []))
    handler = Records()
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    install_sglang(Path(cfg["sglang_parent"]))

    from importlib.metadata import entry_points

    from sglang.srt.plugins import load_plugins

    for _ in range(cfg.get("load_times", 1)):
        load_plugins()

    server_args = sys.modules["sglang.srt.server_args"]
    registry = sys.modules["sglang.srt.layers.attention.attention_registry"]
    plugin = sys.modules.get("sglang_sage.plugin")
    choices = server_args.ATTENTION_BACKEND_CHOICES
    factory = registry.ATTENTION_BACKENDS.get("sage_attn")
    out: dict[str, object] = {
        "entry_points": [
            {"name": ep.name, "value": ep.value, "dist": ep.dist.name if ep.dist else None}
            for ep in entry_points(group="sglang.srt.plugins")
        ],
        "plugin_imported": plugin is not None,
        "state": vars(plugin.STATE) if plugin else None,
        "choice_count": choices.count("sage_attn"),
        "n_choices": len(choices),
        "factory_module": getattr(factory, "__module__", None),
        "factory_is_plugin": plugin is not None and factory is plugin.create_sage_attn_backend,
        "n_backends": len(registry.ATTENTION_BACKENDS),
        "finders": sum(type(f).__name__ == "OverlayFinder" for f in sys.meta_path),
        "argparse": {
            flag: parses(choices, flag, "sage_attn")
            for flag in ("--attention-backend", "--prefill-attention-backend", "--decode-attention-backend")
        },
        "plugin_logs": [r for r in handler.records if r["logger"] == "sglang_sage.plugin"],
        "loader_logs": [r["msg"] for r in handler.records if r["logger"] == "sglang.srt.plugins"],
        "sglang_sage_file": getattr(sys.modules.get("sglang_sage"), "__file__", None),
    }
    if cfg.get("probe_modules") and plugin is not None:
        backend_spec = importlib.util.find_spec("sglang.srt.layers.attention.sage_attn_backend")
        out["backend_origin"] = backend_spec.origin if backend_spec else None
        plan = importlib.import_module("sglang.srt.layers.attention.sage_attn.plan")  # torch + numpy only
        out["plan_file"] = plan.__file__
        out["plan_has_build_plan"] = hasattr(plan, "build_plan")
        stock = importlib.util.find_spec("sglang.srt.layers.attention.base_attn_backend")
        out["stock_origin"] = stock.origin if stock else None
        try:
            factory(types.SimpleNamespace(use_mla_backend=True))
        except ValueError as exc:
            out["mla_error"] = str(exc)
    if cfg.get("register_again") and plugin is not None:
        plugin.register()
        out["choice_count_after_again"] = server_args.ATTENTION_BACKEND_CHOICES.count("sage_attn")
        out["finders_after_again"] = sum(type(f).__name__ == "OverlayFinder" for f in sys.meta_path)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
