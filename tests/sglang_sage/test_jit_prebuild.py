"""The rebuild step's ahead-of-time JIT build: probe, parallel builds, and how `apply` reports each outcome.

A fake interpreter (a script standing in for the target python) answers the probe and the build commands as
the test tells it through environment variables, so every branch runs without a GPU; one test runs the real
probe text with this interpreter (no CUDA here: it must say so and skip).
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from sglang_sage import errors as ec
from sglang_sage import jit_prebuild, patcher, pipeline

FAKE = f"""#!{sys.executable}
import json, os, sys
code = sys.argv[2]
log = os.environ.get("FAKE_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps(sys.argv[3:]) + "\\n")
if "def out(" in code:  # the probe
    sys.stdout.write(os.environ["FAKE_PROBE"] + "\\n")
    sys.exit(0)
name = "d%s/%s" % (sys.argv[4], sys.argv[5])
if name in os.environ.get("FAKE_FAIL", "").split(","):
    sys.stderr.write("nvcc error: ptxas fatal in " + name + "\\n")
    sys.exit(1)
"""


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exe = tmp_path / "python"
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    return exe


def _calls(fake_python: Path) -> list[list[str]]:
    log = fake_python.parent / "calls.log"
    return (
        [json.loads(line) for line in log.read_text().splitlines()]
        if log.exists()
        else []
    )


MODULES = [[64, "bfloat16"], [64, "float16"], [128, "bfloat16"], [128, "float16"]]


def test_skip_reason_is_reported_and_nothing_is_built(
    fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROBE", json.dumps({"skip": "no CUDA GPU visible"}))
    res = jit_prebuild.run(str(fake_python))
    assert res.skipped == "no CUDA GPU visible" and res.built == [] and res.failed == []
    assert _calls(fake_python) == [[]]  # the probe only

    report = patcher.Report(command="apply")
    pipeline.prebuild_jit(str(fake_python), report, patcher.quiet)
    assert report.exit_code == ec.OK
    assert report.warnings == [
        "JIT kernels not built ahead of time: no CUDA GPU visible"
    ]
    assert report.actions == []


def test_every_module_is_built_once_with_its_own_arguments(
    fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROBE", json.dumps({"modules": MODULES}))
    res = jit_prebuild.run(str(fake_python))
    assert res.skipped == "" and res.failed == []
    assert res.built == ["d64/bfloat16", "d64/float16", "d128/bfloat16", "d128/float16"]
    builds = sorted(c for c in _calls(fake_python) if c)
    assert builds == sorted([[jit_prebuild.OP_MODULE, str(d), dt] for d, dt in MODULES])

    report = patcher.Report(command="apply")
    pipeline.prebuild_jit(str(fake_python), report, patcher.quiet)
    assert report.exit_code == ec.OK and report.warnings == []
    assert len(report.actions) == 1
    assert report.actions[0].startswith("JIT kernels built ahead of time in ")
    assert report.actions[0].endswith(
        ": d64/bfloat16, d64/float16, d128/bfloat16, d128/float16"
    )


def test_a_failing_module_fails_the_build_step_and_is_named(
    fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROBE", json.dumps({"modules": MODULES}))
    monkeypatch.setenv("FAKE_FAIL", "d128/float16")
    res = jit_prebuild.run(str(fake_python))
    assert res.built == ["d64/bfloat16", "d64/float16", "d128/bfloat16"]
    assert len(res.failed) == 1
    assert (
        res.failed[0].startswith("d128/float16: exit 1\n")
        and "ptxas fatal in d128/float16" in res.failed[0]
    )

    report = patcher.Report(command="apply", message="applied")
    pipeline.prebuild_jit(str(fake_python), report, patcher.quiet)
    assert report.exit_code == ec.BUILD_FAILED
    assert report.message.startswith("JIT kernel build failed; the tree stays patched")
    assert "d128/float16: exit 1" in report.message and report.actions == []


@pytest.mark.parametrize(
    ("probe_out", "want"),
    [
        ("", "probe printed nothing"),
        ("garbage", "probe output is not JSON: 'garbage'"),
        (
            json.dumps(
                {"error": "sglang.kernels.ops.attention.sage_attn_sm90 not importable"}
            ),
            "not importable",
        ),
        (json.dumps({"modules": []}), "probe named no modules to build"),
    ],
)
def test_a_bad_probe_is_a_failure_not_a_skip(
    fake_python: Path, monkeypatch: pytest.MonkeyPatch, probe_out: str, want: str
) -> None:
    monkeypatch.setenv("FAKE_PROBE", probe_out)
    res = jit_prebuild.run(str(fake_python))
    assert res.skipped == "" and res.built == []
    assert len(res.failed) == 1 and want in res.failed[0]
    assert _calls(fake_python) == [[]]  # nothing built after a bad probe


def test_missing_interpreter_is_a_failure(tmp_path: Path) -> None:
    res = jit_prebuild.run(str(tmp_path / "no-such-python"))
    assert (
        res.skipped == "" and len(res.failed) == 1 and "failed to run" in res.failed[0]
    )


def test_real_probe_on_this_cpu_machine_skips_with_the_reason() -> None:
    """The probe text itself runs (syntax, imports): without CUDA it must skip, naming why."""
    env_has_gpu = False
    try:
        import torch

        env_has_gpu = torch.cuda.is_available()
    except ImportError:
        pass
    if env_has_gpu:
        pytest.fail(
            "this test is for CPU machines (CI); the GPU path is exercised by apply.py on the GPU"
        )
    res = jit_prebuild.run(sys.executable)
    assert res.failed == [] and res.built == []
    assert res.skipped in ("no CUDA GPU visible",) or res.skipped.startswith(
        "torch not importable"
    )


def test_apply_pipeline_runs_the_prebuild_after_a_successful_build(
    fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_build calls prebuild_jit with the target interpreter once the rebuild succeeded (and not after a failure)."""
    seen: list[str] = []
    monkeypatch.setattr(
        pipeline, "prebuild_jit", lambda python, report, progress: seen.append(python)
    )

    class _Build:
        def __init__(self, rc: int) -> None:
            self.rc = rc

        def __call__(
            self, layout, python, files, cmd
        ):  # noqa: ANN001, ANN204 - build.run's signature
            from sglang_sage.build import BuildResult

            return BuildResult(["true"], self.rc, "out")

    class _T:
        class layout:  # noqa: N801 - stands in for Target.layout
            kind = None
            root = Path(os.sep)

    monkeypatch.setattr(patcher, "touched_sources", lambda t: [])
    opts = pipeline.Options(python=str(fake_python), build_cmd="true")
    monkeypatch.setattr(pipeline.build, "run", _Build(0))
    report = patcher.Report(command="apply")
    pipeline.run_build(_T(), opts, report, patcher.quiet)
    assert seen == [str(fake_python)] and report.exit_code == ec.OK

    seen.clear()
    monkeypatch.setattr(pipeline.build, "run", _Build(2))
    report = patcher.Report(command="apply")
    pipeline.run_build(_T(), opts, report, patcher.quiet)
    assert seen == [] and report.exit_code == ec.BUILD_FAILED
