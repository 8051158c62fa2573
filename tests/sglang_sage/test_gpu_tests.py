"""Which registered GPU tests `apply.py` runs on a machine, and what it says about the others: a test
registered for two GPUs (SGLang's ``runner_config="2-gpu-..."``) is not run on one GPU and is named
in the report with exit code 3 ("applied, GPU tests not run"), never counted as passed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_sage import errors as ec
from sglang_sage import gpu_tests
from sglang_sage.apply_cli import main

REPO = Path(__file__).resolve().parents[2]
REGISTERED = REPO / "overlay/test/registered/attention"


def test_gpus_needed_reads_the_registration(tmp_path: Path) -> None:
    assert gpu_tests.gpus_needed(REGISTERED / "test_sage_attn_tp.py") == 2
    assert gpu_tests.gpus_needed(REGISTERED / "test_sage_attn_engine.py") == 1
    assert gpu_tests.gpus_needed(REGISTERED / "test_sage_attn_kernels.py") == 1
    cases = {
        'register_cuda_ci(est_time=5, stage="b", runner_config="8-gpu-h200")\n': 8,
        'register_cuda_ci(5, "stage-b-test-small-1-gpu")\n': 1,
        'def f():\n    register_cuda_ci(est_time=5, runner_config="4-gpu")\n': 1,  # not a registration
        "register_cuda_ci(\n": 1,  # syntax error: the file still runs (and fails loudly there)
        'x = "runner_config=\\"2-gpu\\""\n': 1,
    }
    for i, (src, want) in enumerate(cases.items()):
        f = tmp_path / f"t{i}.py"
        f.write_text(src)
        assert gpu_tests.gpus_needed(f) == want, src
    run_here, not_here = gpu_tests.split_by_gpus(sorted(REGISTERED.glob("test_sage_attn*.py")), 1)
    assert [f.name for f in run_here] == ["test_sage_attn_engine.py", "test_sage_attn_kernels.py"]
    assert [(f.name, n) for f, n in not_here] == [("test_sage_attn_tp.py", 2)]
    assert len(gpu_tests.split_by_gpus(run_here + [f for f, _ in not_here], 2)[0]) == 3


def _apply(capsys: pytest.CaptureFixture[str], target: Path) -> tuple[int, dict]:
    code = main(["apply", "--sglang-dir", str(target), "--no-build", "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("count", "want_code", "ran"), [(1, ec.NO_GPU, 2), (2, ec.OK, 3)])
def test_apply_runs_what_the_machine_can_and_names_the_rest(
    installed: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    want_code: int,
    ran: int,
) -> None:
    seen: list[list[str]] = []

    def fake_run(layout, python, files, log_path=None):  # type: ignore[no-untyped-def]
        seen.append([f.name for f in files])
        return gpu_tests.TestRun(["pytest"], 0, "3 passed in 1.0s")

    monkeypatch.setattr(gpu_tests, "probe", lambda python: gpu_tests.GpuProbe(True, "NVIDIA H200", count))
    monkeypatch.setattr(gpu_tests, "run", fake_run)
    code, rep = _apply(capsys, installed)
    assert code == want_code, rep
    assert len(seen) == 1 and len(seen[0]) == ran and "test_sage_attn_kernels.py" in seen[0]
    if count == 1:
        assert "GPU tests NOT run: test_sage_attn_tp.py needs 2 GPUs, 1 visible" in rep["message"]
        assert any("GPU tests passed" in a for a in rep["actions"])  # what ran, passed
    else:
        assert "NOT run" not in rep["message"] and "test_sage_attn_tp.py" in seen[0]


def test_failed_tests_still_exit_6_on_one_gpu(
    installed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_tests, "probe", lambda python: gpu_tests.GpuProbe(True, "NVIDIA H200", 1))
    monkeypatch.setattr(gpu_tests, "run", lambda *a, **k: gpu_tests.TestRun(["pytest"], 1, "1 failed"))
    code, rep = _apply(capsys, installed)
    assert code == ec.TESTS_FAILED and "GPU tests failed" in rep["message"], rep


def test_probe_reports_the_gpu_count_line(tmp_path: Path) -> None:
    """The real probe in a python without CUDA (this one), and in a fake one that claims 2 GPUs."""
    import sys

    p = gpu_tests.probe(sys.executable)
    assert (p.available, p.count) == (False, 0) and "no CUDA device" in p.detail
    fake = tmp_path / "py"
    fake.write_text("#!/bin/sh\necho GPUS=2\necho 'torch 2.11.0, cuda 13.0, NVIDIA H200'\n")
    fake.chmod(0o755)
    p = gpu_tests.probe(str(fake))
    assert (p.available, p.count) == (True, 2) and p.detail == "torch 2.11.0, cuda 13.0, NVIDIA H200 (x2)"
