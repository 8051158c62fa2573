"""The SGLang plugin (sglang_sage/plugin.py) on CPU, against the real SGLang 0.5.17 wheel tree.

Installs this project the two ways people do (``pip install -e .`` and a built wheel) into scratch
dirs, then lets SGLang's own ``load_plugins`` discover and run the entry point in a fresh interpreter
(tests/sglang_sage/plugin_harness.py says which SGLang parts are real). The refusal paths run on
per-test copies of the tree, edited to be another version, API-incompatible, applied or half-applied.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import types
import zipfile
from pathlib import Path

import pytest
import tomlkit

from sglang_sage import plugin
from sglang_sage.apply_cli import main as apply_main

REPO = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).resolve().parent / "plugin_harness.py"
PATCH = REPO / "patches/0.5.17/0001-Register-the-sage_attn-attention-backend.patch"
OVERLAY_BACKEND = "sglang/srt/layers/attention/sage_attn_backend.py"
PURELIB = sysconfig.get_paths()["purelib"]  # torch, numpy, triton of the test environment


def _copy_project(dest: Path) -> Path:
    """What a build needs (pyproject, README, package, overlay): installs never touch the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("sglang_sage", "overlay"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    return dest


def _pip(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def editable_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install --no-deps --no-build-isolation -e .` of a copy of this project, into a prefix."""
    src = _copy_project(tmp_path_factory.mktemp("editable-src"))
    prefix = tmp_path_factory.mktemp("editable-prefix")
    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e", str(src), "--prefix", str(prefix))
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert any(p.suffix == ".pth" for p in site.iterdir()), f"no editable .pth in {site}"
    return site


@pytest.fixture(scope="session")
def wheel_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the built wheel, the dir it was installed into with `pip install --target`)."""
    src = _copy_project(tmp_path_factory.mktemp("wheel-src"))
    out = tmp_path_factory.mktemp("wheel-out")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src), "-w", str(out))
    (whl,) = out.glob("sglang_sage-*.whl")
    target = tmp_path_factory.mktemp("wheel-target")
    _pip("install", "--no-deps", "--no-index", "-q", "--target", str(target), str(whl))
    return whl, target


def run_harness(
    tree: Path, *, sitedirs: list[Path] = (), paths: list[Path] = (), env: dict[str, str] | None = None, **probe: object
) -> dict:
    """SGLang's load_plugins in a fresh interpreter (-I -S: no PYTHONPATH, no site-packages of this venv)."""
    cfg = {
        "sitedirs": [str(p) for p in sitedirs],
        "paths": [*map(str, paths), PURELIB],
        "sglang_parent": str(tree),
        **probe,
    }
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SGLANG_PLUGINS", "SGLANG_SAGE_PLUGIN"))}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-I", "-S", str(HARNESS), json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_plugin_line(out: dict, level: str) -> str:
    """The plugin's whole say in this process: exactly one record, at the given level."""
    logs = out["plugin_logs"]
    assert len(logs) == 1, logs
    assert logs[0]["level"] == level, logs
    assert "\n" not in logs[0]["msg"]
    return logs[0]["msg"]


def assert_nothing_registered(out: dict) -> None:
    assert out["choice_count"] == 0
    assert out["factory_module"] is None
    assert out["finders"] == 0
    assert out["argparse"] == dict.fromkeys(out["argparse"], False)


# -- discovery and registration ----------------------------------------------------------------------


def test_editable_install_registers_on_the_real_tree(editable_site: Path, pristine_installed: Path) -> None:
    out = run_harness(
        pristine_installed, sitedirs=[editable_site], probe_modules=True, load_times=2, register_again=True
    )
    eps = [ep for ep in out["entry_points"] if ep["name"] == "sage_attn"]
    assert eps == [{"name": "sage_attn", "value": "sglang_sage.plugin:register", "dist": "sglang-sage"}]
    assert any("Loaded plugin sage_attn" in m for m in out["loader_logs"]), out["loader_logs"]
    state = out["state"]
    assert state["status"] == "registered", state
    assert state["version"] == "0.5.17"
    assert state["sglang_dir"] == str(pristine_installed / "sglang")
    assert "registered for SGLang 0.5.17" in one_plugin_line(out, "INFO")
    # the editable install maps sglang_sage to the copy it was made from: its overlay/ is the source
    src_root = Path(out["sglang_sage_file"]).parent.parent
    assert state["overlay"] == str(src_root / "overlay")
    assert out["choice_count"] == 1 and out["finders"] == 1 and out["factory_is_plugin"]
    assert out["argparse"] == dict.fromkeys(out["argparse"], True)  # plain and both hybrid flags
    assert out["backend_origin"] == str(src_root / "overlay" / OVERLAY_BACKEND)
    assert out["plan_file"] == str(src_root / "overlay/sglang/srt/layers/attention/sage_attn/plan.py")
    assert out["plan_has_build_plan"]
    assert out["stock_origin"] == str(pristine_installed / "sglang/srt/layers/attention/base_attn_backend.py")
    assert out["mla_error"] == "sage_attn backend can only be used with non-MLA models."
    assert out["choice_count_after_again"] == 1 and out["finders_after_again"] == 1


def test_wheel_ships_every_overlay_file_and_registers_from_it(
    wheel_install: tuple[Path, Path], pristine_installed: Path
) -> None:
    whl, target = wheel_install
    names = set(zipfile.ZipFile(whl).namelist())
    expected = {f"sglang_sage/_overlay/{rel}" for rel in plugin.overlay_files(REPO / "overlay")}
    assert expected and expected <= names, sorted(expected - names)
    assert not [n for n in names if "/_overlay/" in n and (n.endswith(".pyc") or "__pycache__" in n)]
    assert not [n for n in names if n.startswith("sglang_sage/_overlay/test/")]  # overlay tests stay out
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "[sglang.srt.plugins]\nsage_attn = sglang_sage.plugin:register" in zipfile.ZipFile(whl).read(entry).decode()

    out = run_harness(pristine_installed, paths=[target], probe_modules=True)
    assert out["sglang_sage_file"] == str(target / "sglang_sage/__init__.py")
    assert out["state"]["status"] == "registered", out["state"]
    assert out["state"]["overlay"] == str(target / "sglang_sage/_overlay")
    assert out["backend_origin"] == str(target / "sglang_sage/_overlay" / OVERLAY_BACKEND)
    assert out["argparse"]["--prefill-attention-backend"]


@pytest.mark.parametrize(
    ("allowed", "loaded"), [("other_plugin", False), ("other_plugin, sage_attn", True), ("sage_attn", True)]
)
def test_sglang_plugins_filter(editable_site: Path, pristine_installed: Path, allowed: str, loaded: bool) -> None:
    out = run_harness(pristine_installed, sitedirs=[editable_site], env={"SGLANG_PLUGINS": allowed})
    assert out["plugin_imported"] is loaded
    if loaded:
        assert out["state"]["status"] == "registered"
        assert out["choice_count"] == 1
    else:
        assert any("Skipping plugin sage_attn (not in SGLANG_PLUGINS)" in m for m in out["loader_logs"])
        assert_nothing_registered(out)


# -- refusals: one line, nothing registered, SGLang goes on --------------------------------------------


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_unsupported_version_refused_unless_opted_in(editable_site: Path, installed: Path) -> None:
    _edit(installed / "sglang/_version.py", "version = '0.5.17'", "version = '0.5.99'")
    out = run_harness(installed, sitedirs=[editable_site])
    assert out["state"]["status"] == "refused"
    msg = one_plugin_line(out, "WARNING")
    assert "SGLang 0.5.99" in msg and "not supported" in msg and "verified: 0.5.17" in msg
    assert plugin.ANY_VERSION_ENV in msg and "registering nothing" in msg
    assert_nothing_registered(out)
    assert out["n_backends"] > 10  # SGLang's own backends are all still there

    out = run_harness(installed, sitedirs=[editable_site], env={plugin.ANY_VERSION_ENV: "1"})
    assert out["state"]["status"] == "registered"
    assert "not verified" in one_plugin_line(out, "WARNING")
    assert out["choice_count"] == 1


def test_api_check_failure_refused(editable_site: Path, installed: Path) -> None:
    base = installed / "sglang/srt/layers/attention/base_attn_backend.py"
    _edit(base, "def init_forward_metadata(self, forward_batch", "def init_fwd_metadata(self, forward_batch")
    out = run_harness(installed, sitedirs=[editable_site])
    assert out["state"]["status"] == "refused"
    msg = one_plugin_line(out, "WARNING")
    assert "static API check" in msg and "SageAttnBackend.init_forward_metadata" in msg
    assert_nothing_registered(out)


def test_missing_plugin_api_refused(editable_site: Path, installed: Path) -> None:
    _edit(installed / "sglang/srt/server_args.py", "def add_attention_backend_choices(", "def _gone(")
    out = run_harness(installed, sitedirs=[editable_site])
    msg = one_plugin_line(out, "WARNING")
    assert "lacks the backend plugin API (server_args.add_attention_backend_choices)" in msg
    assert_nothing_registered(out)


def test_failure_while_registering_rolls_back(editable_site: Path, installed: Path) -> None:
    _edit(
        installed / "sglang/srt/server_args.py",
        "    ATTENTION_BACKEND_CHOICES.extend(choices)",
        "    raise RuntimeError('boom')",
    )
    out = run_harness(installed, sitedirs=[editable_site])
    msg = one_plugin_line(out, "WARNING")
    assert "registering failed (RuntimeError: boom)" in msg
    assert_nothing_registered(out)  # the factory registered first is gone again, and the finder


def test_applied_tree_defers(editable_site: Path, installed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert apply_main(["--sglang-dir", str(installed), "--no-tests", "--no-build", "--json"]) == 0
    capsys.readouterr()
    out = run_harness(installed, sitedirs=[editable_site])
    assert out["state"]["status"] == "deferred"
    assert "already has the sage_attn overlay applied" in one_plugin_line(out, "INFO")
    assert out["factory_module"] == "sglang.srt.layers.attention.attention_registry"  # the tree's own
    assert out["choice_count"] == 1 and out["finders"] == 0

    _edit(installed / OVERLAY_BACKEND, '"""', '"""Edited. ')  # applied from other sglang-sage files
    out = run_harness(installed, sitedirs=[editable_site])
    assert out["state"]["status"] == "deferred"
    msg = one_plugin_line(out, "WARNING")
    assert "from other sglang-sage files (1 of" in msg and OVERLAY_BACKEND in msg
    assert "attention_registry.create_sage_attn_backend" in msg
    assert out["choice_count"] == 1 and out["finders"] == 0

    # applied by an older sglang-sage that lacked a file this one has: still the tree's registration, not ours
    (installed / "sglang/srt/layers/attention/sage_attn/reference.py").unlink()
    out = run_harness(installed, sitedirs=[editable_site])
    assert out["state"]["status"] == "deferred"
    assert "(2 of" in one_plugin_line(out, "WARNING")
    assert out["choice_count"] == 1 and out["finders"] == 0 and not out["factory_is_plugin"]


@pytest.mark.parametrize("half", ["overlay-only", "patch-only"])
def test_half_applied_tree_refused(editable_site: Path, installed: Path, half: str) -> None:
    if half == "overlay-only":
        for rel in plugin.overlay_files(REPO / "overlay"):
            (installed / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / "overlay" / rel, installed / rel)
    else:
        subprocess.run(["git", "apply", "-p2", str(PATCH)], cwd=installed, check=True, capture_output=True)
    out = run_harness(installed, sitedirs=[editable_site])
    assert out["state"]["status"] == "refused"
    msg = one_plugin_line(out, "WARNING")
    assert "partially patched" in msg and "apply.py status" in msg
    assert out["finders"] == 0 and not out["factory_is_plugin"]


# -- pieces ------------------------------------------------------------------------------------------


def test_factory_is_patch_0001s(pristine_installed: Path) -> None:
    """The plugin registers the same factory body that patch 0001 adds to attention_registry.py."""
    added = []
    in_registry = False
    for line in PATCH.read_text().splitlines():
        if line.startswith("+++ "):
            in_registry = line.endswith("attention_registry.py")
        elif in_registry and line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:])
    patch_fn = next(n for n in ast.parse("\n".join(added)).body if isinstance(n, ast.FunctionDef))
    src = Path(plugin.__file__).read_text()
    plugin_fn = next(
        n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "create_sage_attn_backend"
    )
    assert [ast.dump(s) for s in plugin_fn.body[1:]] == [ast.dump(s) for s in patch_fn.body]  # [0]: docstring


def test_supported_versions_are_the_gpu_verified_patch_sets() -> None:
    gpu = sorted(
        p.parent.name
        for p in (REPO / "patches").glob("*/manifest.toml")
        if tomlkit.parse(p.read_text())["sglang"].get("tier") == "gpu"
    )
    assert sorted(plugin.SUPPORTED_VERSIONS) == gpu


def test_pyproject_lists_every_package() -> None:
    listed = set(tomlkit.parse((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "sglang_sage").rglob("__init__.py")}
    assert found | {"sglang_sage._overlay"} == listed


def test_jit_sources_must_be_external(tmp_path: Path, pristine_installed: Path) -> None:
    stock = pristine_installed / "sglang"
    stock_cuh = next((stock / "kernels/jit/csrc").rglob("*.cuh")).relative_to(stock / "kernels/jit/csrc")
    op = tmp_path / "sglang/kernels/ops/attention/sage_attn_sm90.py"
    op.parent.mkdir(parents=True)
    op.write_text(
        "from pathlib import Path\nfrom sglang.kernels.jit.utils import load_jit\n"
        "CSRC = Path(__file__).resolve().parents[2] / 'jit' / 'csrc'\n"
        "def ok():\n    return load_jit('a', external_cuda_files=[str(CSRC / 'sage/entry.cuh')],"
        f" cuda_files=[{stock_cuh.as_posix()!r}])\n"
        "def bad():\n    return load_jit('b', cuda_files=['sage/entry.cuh'])\n"
    )
    misses = plugin.jit_source_misses(tmp_path, stock)
    assert len(misses) == 1, misses
    assert "sage_attn_sm90.py:7: load_jit(cuda_files=['sage/entry.cuh'])" in misses[0]
    assert "external_cuda_files" in misses[0]
    assert plugin.jit_source_misses(REPO / "overlay", stock) == []  # the real overlay


def test_overlay_finder_maps_only_new_names(tmp_path: Path) -> None:
    root, stock = tmp_path / "ov", tmp_path / "site"
    for rel in (
        "sglang/srt/layers/attention/new_mod.py",
        "sglang/srt/layers/attention/new_pkg/__init__.py",
        "sglang/srt/layers/attention/new_pkg/sub.py",
        "sglang/kernels/fresh_dir/op.py",
        "sglang/kernels/jit/csrc/new/entry.cuh",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("X = 1\n")
    for rel in ("sglang/srt/layers/attention", "sglang/kernels/jit/csrc"):
        (stock / rel).mkdir(parents=True)
    finder = plugin.OverlayFinder(root, stock)
    assert set(finder.modules) == {
        "sglang.srt.layers.attention.new_mod",
        "sglang.srt.layers.attention.new_pkg",
        "sglang.srt.layers.attention.new_pkg.sub",
        "sglang.kernels.fresh_dir.op",
    }
    # a plain directory only the overlay has becomes a namespace package; SGLang's own directories never do
    assert set(finder.namespaces) == {"sglang.kernels.fresh_dir"}
    assert finder.find_spec("sglang.kernels") is None
    assert finder.find_spec("sglang.srt.layers.attention") is None
    assert finder.find_spec("sglang.srt.layers.attention.flashinfer_backend") is None
    pkg = finder.find_spec("sglang.srt.layers.attention.new_pkg")
    assert pkg.origin == str(root / "sglang/srt/layers/attention/new_pkg/__init__.py")
    assert pkg.submodule_search_locations == [str(root / "sglang/srt/layers/attention/new_pkg")]
    assert "sglang/kernels/jit/csrc/new/entry.cuh" in plugin.overlay_files(root)


def test_register_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """An SGLang that cannot be imported at all: one line, nothing raised into SGLang's loader."""
    monkeypatch.setattr(plugin, "STATE", plugin.PluginState())
    monkeypatch.setitem(sys.modules, "sglang", types.ModuleType("sglang"))  # no __file__: import breaks
    plugin.register()
    assert plugin.STATE.status == "refused"
    assert "registering nothing" in plugin.STATE.message
