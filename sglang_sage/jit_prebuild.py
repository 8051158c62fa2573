"""Ahead-of-time build of the overlay's JIT kernels (the sm90 `sage_attn` kernel) during `apply`'s rebuild.

SGLang's JIT framework compiles a kernel with nvcc the first time a process uses it (~45-100 s per module
on an H200 image) and caches the result. Without this step the first server start after `apply` pays that
build inside model loading. Here the target interpreter is probed first (torch, an sm90 GPU, nvcc); where
any is missing the step is skipped with the reason, because the backend then runs the Triton kernel and
nothing needs building. The modules are built in parallel, one process each, so a failure names its module.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

OP_MODULE = "sglang.kernels.ops.attention.sage_attn_sm90"
BUILD_TIMEOUT_S = 900

# Run by the target interpreter: prints one JSON object, {"skip": why} or {"modules": [[d, dtype], ...]}.
PROBE = f"""
import json, os, shutil, sys
def out(**kw):
    print(json.dumps(kw)); sys.exit(0)
try:
    import torch
except Exception as exc:
    out(skip=f"torch not importable ({{exc}})")
if not torch.cuda.is_available():
    out(skip="no CUDA GPU visible")
cap = torch.cuda.get_device_capability()
if tuple(cap) != (9, 0):
    out(skip=f"GPU is sm{{cap[0]}}{{cap[1]}}, not sm90: the backend runs the Triton kernel there")
cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
if not (shutil.which("nvcc") or os.path.isfile(os.path.join(cuda_home, "bin", "nvcc"))):
    out(skip=f"no nvcc (not on PATH, not in {{cuda_home}}/bin): the kernels build at the first server start")
try:
    import importlib
    m = importlib.import_module("{OP_MODULE}")
except Exception as exc:
    out(error=f"{OP_MODULE} not importable after apply ({{type(exc).__name__}}: {{exc}})")
dtypes = ("bfloat16", "float16")
out(modules=[[d, dt] for d in m.SUPPORTED_HEAD_DIMS for dt in dtypes])
"""

BUILD = (
    "import sys, torch, importlib; m = importlib.import_module(sys.argv[1]); "
    "m.precompile((int(sys.argv[2]),), (getattr(torch, sys.argv[3]),))"
)


@dataclass
class PrebuildResult:
    """What the step did: skipped (with why), built (module names, seconds), or failed (with the output)."""

    skipped: str = ""
    built: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _probe(python: str) -> dict:
    try:
        proc = subprocess.run(
            [python, "-c", PROBE],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"probe of {python} failed to run ({exc})"}
    lines = proc.stdout.strip().splitlines()
    try:
        return (
            json.loads(lines[-1])
            if lines
            else {"error": f"probe printed nothing: {proc.stderr[-800:]}"}
        )
    except json.JSONDecodeError:
        return {
            "error": f"probe output is not JSON: {lines[-1][:300]!r} {proc.stderr[-800:]}"
        }


def _build_one(python: str, head_dim: int, dtype: str) -> tuple[str, str]:
    """('' , name) when built, (error text, name) when not."""
    name = f"d{head_dim}/{dtype}"
    try:
        proc = subprocess.run(
            [python, "-c", BUILD, OP_MODULE, str(head_dim), dtype],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{name}: no result after {BUILD_TIMEOUT_S} s", name
    except OSError as exc:
        return f"{name}: {exc}", name
    if proc.returncode != 0:
        return (
            f"{name}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-2000:]}",
            name,
        )
    return "", name


def run(python: str) -> PrebuildResult:
    """Probe `python`, then build every (head_dim, dtype) module of the sm90 op in parallel."""
    t0 = time.monotonic()
    probe = _probe(python)
    if "skip" in probe:
        return PrebuildResult(skipped=str(probe["skip"]))
    if "error" in probe:
        return PrebuildResult(
            failed=[str(probe["error"])], seconds=time.monotonic() - t0
        )
    modules = [(int(d), str(dt)) for d, dt in probe.get("modules", [])]
    if not modules:
        return PrebuildResult(
            failed=[f"probe named no modules to build: {probe}"],
            seconds=time.monotonic() - t0,
        )
    res = PrebuildResult()
    with ThreadPoolExecutor(max_workers=len(modules)) as pool:
        for err, name in pool.map(lambda m: _build_one(python, *m), modules):
            (res.failed if err else res.built).append(err or name)
    res.seconds = time.monotonic() - t0
    return res
