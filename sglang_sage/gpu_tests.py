"""Run the registered sage_attn attention tests on the GPU of the target python.

No GPU is not a pass: it is reported and gets its own exit code, so CI on CPU can never
mistake "not tested" for "tested". The same holds for a test registered for more GPUs than the
machine has (SGLang's ``register_cuda_ci(..., runner_config="2-gpu-...")``): it is not run, and
the report names it.
"""

from __future__ import annotations

import ast
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sglang_sage.layout import Layout, LayoutKind
from sglang_sage.overlay import OVERLAY_DIR

TEST_GLOB = "test/registered/attention/test_sage_attn*.py"
_PROBE = (
    "import sys\n"
    "try:\n    import torch\nexcept Exception as e:\n    print('torch not importable: %s' % e); sys.exit(2)\n"
    "ok = torch.cuda.is_available()\n"
    "print('GPUS=%d' % (torch.cuda.device_count() if ok else 0))\n"
    "print('torch %s, cuda %s, %s' % (torch.__version__, torch.version.cuda, "
    "torch.cuda.get_device_name(0) if ok else 'no CUDA device'))\n"
    "sys.exit(0 if ok else 1)\n"
)


@dataclass
class GpuProbe:
    """Whether the target python sees a CUDA GPU, and what it said."""

    available: bool
    detail: str
    count: int = 0


def probe(python: str) -> GpuProbe:
    """`torch.cuda.is_available()` in the target interpreter (not ours: it may be another venv)."""
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return GpuProbe(False, f"cannot run {python}: {exc}")
    lines = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
    detail = lines[-1] if lines else f"exit status {proc.returncode}"
    m = re.search(r"^GPUS=(\d+)$", proc.stdout, re.M)
    count = int(m.group(1)) if m else 0
    if proc.returncode == 0 and count > 1:
        detail = f"{detail} (x{count})"
    return GpuProbe(proc.returncode == 0, detail, count if proc.returncode == 0 else 0)


def gpus_needed(path: Path) -> int:
    """GPUs a registered test file asks for: the ``N`` of ``runner_config="N-gpu..."`` (or of a
    ``suite="...-N-gpu"``, SGLang 0.5.8's form) in its top-level ``register_cuda_ci(...)`` call
    (SGLang's CI picks the runner from it), else 1.
    Read from the syntax tree, never by importing the test (that would import SGLang)."""
    try:
        tree = ast.parse(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return 1
    need = 1
    for node in tree.body:
        call = node.value if isinstance(node, ast.Expr) else None
        if not isinstance(call, ast.Call) or getattr(call.func, "id", None) != "register_cuda_ci":
            continue
        for kw in call.keywords:
            # runner_config="2-gpu-large" (0.5.17+); suite="stage-b-test-large-2-gpu" (0.5.8's registration)
            if kw.arg in ("runner_config", "suite") and isinstance(kw.value, ast.Constant) and isinstance(
                kw.value.value, str
            ):
                m = re.search(r"(\d+)-gpu", kw.value.value)
                if m:
                    need = max(need, int(m.group(1)))
    return need


def split_by_gpus(files: list[Path], available: int) -> tuple[list[Path], list[tuple[Path, int]]]:
    """(files this machine can run, [(file, GPUs it needs)] it cannot)."""
    run_here: list[Path] = []
    not_here: list[tuple[Path, int]] = []
    for f in files:
        need = gpus_needed(f)
        if need <= available:
            run_here.append(f)
        else:
            not_here.append((f, need))
    return run_here, not_here


def test_files(layout: Layout, overlay_root: Path = OVERLAY_DIR) -> list[Path]:
    """The registered tests: installed ones in a checkout, else straight from overlay/."""
    base = layout.repo_root if layout.kind is LayoutKind.GIT_CHECKOUT and layout.repo_root else overlay_root
    return sorted(base.glob(TEST_GLOB))


@dataclass
class TestRun:
    """pytest's verdict."""

    command: list[str]
    returncode: int
    output: str


def run(layout: Layout, python: str, files: list[Path], log_path: Path | None = None) -> TestRun:
    """pytest the files with the target python from the tree root (so `import sglang` is the patched one).

    With ``log_path`` the run is verbose (every test and its printed accuracy numbers) and its whole
    output is written there; the report keeps the tail either way.
    """
    flags = ["-v", "-s", "-rA"] if log_path else ["-q", "-x"]
    cmd = [python, "-m", "pytest", *flags, *map(str, files)]
    if log_path:
        # Streamed, so a run cut short (timeout, crash) still leaves its log behind.
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log:
            log.write(f"$ {' '.join(cmd)}\n(cwd {layout.root})\n\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=layout.root, stdout=log, stderr=subprocess.STDOUT, check=False)
        output = log_path.read_text()
    else:
        proc = subprocess.run(cmd, cwd=layout.root, capture_output=True, text=True, check=False)
        output = proc.stdout + proc.stderr
    return TestRun(cmd, proc.returncode, output[-6000:])
