"""The sm90 kernel sources compile for sm_90a on a CPU machine (nvcc, no GPU), within their register
limits, without spills or serialized wgmma; the generated wgmma wrappers match their generator.

CI's machines carry nvcc 13.0 (the GPU image's version); the GPU run itself is the registered test.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "overlay/sglang/kernels/jit/csrc/sage_attn_sm90"
DEV = REPO / "scripts/sage_sm90_dev"


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    assert path.is_file(), f"triton {triton.__version__} ships no cuobjdump at {path}"
    return str(path)


# the overlay's kernel (v3) and the development harness's candidates (patches: scripts/sage_sm90_dev/dev.py PATCHES)
VERSIONS = ("v3", "v5", "v6")


def _dev():
    spec = importlib.util.spec_from_file_location("sage_sm90_dev", DEV / "dev.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    nvcc = shutil.which("nvcc")
    assert nvcc, "nvcc not on PATH: the sm90 compile check needs the CUDA compiler (CI machines have nvcc 13.0)"
    so = tmp_path_factory.mktemp("sm90") / f"libsage_sm90_{request.param}.so"
    dirs = _dev().kernel_dirs(request.param, so.parent)
    includes = [arg for d in dirs for arg in ("-I", str(d))]
    cmd = [nvcc, "-O3", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-shared", "-Xcompiler", "-fPIC",
           "-Xptxas", "-v", *includes, "-o", str(so), str(DEV / "capi.cu")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return so, r.stdout + r.stderr


def test_attention_kernels_have_no_spills_and_no_serialized_wgmma(built: tuple[Path, str]) -> None:
    _, log = built
    assert "C7510" not in log and "C7520" not in log and "C7512" not in log, "wgmma serialized:\n" + log
    # ptxas prints "Function properties for <name>" then "N bytes stack frame, N bytes spill stores, ..."
    blocks = re.findall(r"Function properties for (\S+)\n\s+(\d+) bytes stack frame, (\d+) bytes spill stores", log)
    attn = [(name, int(spill)) for name, _, spill in blocks if "sage_attn_sm90_kernel" in name]
    assert len(attn) == 4, f"expected 4 instantiations (d 64/128 x bf16/fp16), got {attn}"
    assert all(spill == 0 for _, spill in attn), attn


def test_register_regions_stay_within_setmaxnreg(built: tuple[Path, str]) -> None:
    so, _ = built
    r = subprocess.run([sys.executable, str(DEV / "check_regs.py"), str(so), "--cuobjdump", _cuobjdump()],
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok ") == 8, r.stdout  # 4 kernels x (producer, consumer) regions


def test_check_regs_flags_a_producer_over_its_limit() -> None:
    sys.path.insert(0, str(DEV))
    try:
        import check_regs
    finally:
        sys.path.pop(0)
    sass = (
        "\n        Function : k\n"
        "        /*0010*/                   USETMAXREG.DEALLOC.CTAPOOL 0x18 ;\n"
        "        /*0020*/                   IADD3 R30, R1, R2, RZ ;\n"
        "        /*0030*/                   EXIT ;\n"
        "        /*0040*/                   IADD3 R200, R1, R2, RZ ;\n"
    )
    used = check_regs.regions(sass)["k"]
    assert used == {("DEALLOC", 24): 31}  # R30 counts; code after the unpredicated EXIT does not


def test_generated_wgmma_wrappers_are_current() -> None:
    r = subprocess.run([sys.executable, str(REPO / "scripts/gen_sage_sm90_wgmma.py")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (CSRC / "wgmma.cuh").read_text(), "run scripts/gen_sage_sm90_wgmma.py > .../wgmma.cuh"


def test_a_candidate_patch_that_no_longer_applies_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = _dev()
    bad = tmp_path / "v9.patch"
    bad.write_text("--- a/kernel.cuh\n+++ b/kernel.cuh\n@@ -1,1 +1,1 @@\n-no such line in the kernel\n+x\n")
    monkeypatch.setitem(dev.PATCHES, "v9", bad)
    with pytest.raises(SystemExit, match="v9.patch no longer applies to"):
        dev.kernel_dirs("v9", tmp_path / "out")
    assert dev.kernel_dirs("v3", tmp_path / "out") == [CSRC]
