"""`apply` as a user runs it: apply, then rebuild, then the registered GPU tests, under the tree's lock.

The steps after the transaction run only when it changed the tree (`Report.changed`): applying to
an already applied tree builds and tests nothing. Each step that fails sets its own exit code
(7 build, 6 tests, 3 no GPU), so "applied but untested" never reads as success.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from sglang_sage import build, gpu_tests, jit_prebuild, patcher
from sglang_sage import errors as ec
from sglang_sage.errors import SageError
from sglang_sage.layout import LayoutKind
from sglang_sage.manifest import Manifest


@dataclass(frozen=True)
class Options:
    """What `apply` was asked to do besides applying."""

    python: str
    force: bool = False
    skip_api_check: bool = False
    build: bool = True
    build_cmd: str | None = None
    tests: bool = True
    test_log: Path | None = None


def check_python(python: str, manifest: Manifest) -> None:
    """The target interpreter runs, and its version is one the release supports (refused before writing)."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise SageError(f"--python {python}: cannot run it ({exc})") from exc
    if Version(out) not in SpecifierSet(manifest.requires_python):
        raise SageError(
            f"--python {python} is Python {out}; SGLang {manifest.version} requires {manifest.requires_python}"
        )


def apply_build_test(
    t: patcher.Target, options: Options, progress: patcher.Progress = patcher.quiet
) -> patcher.Report:
    """The `apply` command: lock, apply, and when that changed the tree, rebuild and run the GPU tests."""
    if options.tests or options.build:
        check_python(options.python, t.manifest)
    with patcher.locked(
        t, progress
    ) as notes:  # held through build and tests: both read the tree
        report = patcher.apply(
            t,
            force=options.force,
            skip_api_check=options.skip_api_check,
            progress=progress,
        )
        if report.changed:
            if options.build:
                run_build(t, options, report, progress)
            if report.exit_code == ec.OK and options.tests:
                run_gpu_tests(t, options.python, options.test_log, report, progress)
    report.warnings[:0] = notes
    return report


def test_applied(
    t: patcher.Target,
    python: str,
    *,
    test_log: Path | None = None,
    progress: patcher.Progress = patcher.quiet,
) -> patcher.Report:
    """The `test` command: the registered GPU tests against a tree that is applied already."""
    report = patcher.status(t)
    if report.state != patcher.APPLIED:
        raise SageError(f"{t.layout.root} is {report.state}; apply first")
    report.command = "test"
    report.message = "applied"
    run_gpu_tests(t, python, test_log, report, progress)
    return report


def run_build(
    t: patcher.Target,
    options: Options,
    report: patcher.Report,
    progress: patcher.Progress,
) -> None:
    """Rebuild (editable reinstall, or byte-compile an installed package); a failure is exit 7, tree kept."""
    progress("rebuilding")
    files = patcher.touched_sources(t)
    before = (
        patcher.existing_pyc(files) if t.layout.kind is LayoutKind.INSTALLED else {}
    )
    result = build.run(t.layout, options.python, files, options.build_cmd)
    if result.skipped:
        report.warnings.append(f"build skipped: {result.skipped}")
        return
    if result.returncode != 0:
        report.exit_code = ec.BUILD_FAILED
        report.message = (
            f"build failed ({' '.join(result.command)}, exit {result.returncode}); the tree stays patched "
            f"(`python apply.py revert --sglang-dir {t.layout.root}` undoes it)\n{result.output}"
        )
        return
    if t.layout.kind is LayoutKind.INSTALLED and not options.build_cmd:
        patcher.record_pyc(t, files, before)
    report.actions.append(
        f"built: {' '.join(result.command[:6])}{' ...' if len(result.command) > 6 else ''}"
    )
    prebuild_jit(options.python, report, progress)


def prebuild_jit(
    python: str, report: patcher.Report, progress: patcher.Progress
) -> None:
    """Compile the sm90 JIT kernels now (where torch sees an sm90 GPU and nvcc exists), not at server start."""
    progress("building the JIT kernels (sm90 sage_attn)")
    jit = jit_prebuild.run(python)
    if jit.skipped:
        report.warnings.append(f"JIT kernels not built ahead of time: {jit.skipped}")
    elif jit.failed:
        report.exit_code = ec.BUILD_FAILED
        report.message = (
            "JIT kernel build failed; the tree stays patched, and a server with the sage_attn backend on this "
            "GPU would fail the same way at start:\n" + "\n".join(jit.failed)
        )
    else:
        report.actions.append(
            f"JIT kernels built ahead of time in {jit.seconds:.0f} s: {', '.join(jit.built)}"
        )


def run_gpu_tests(
    t: patcher.Target,
    python: str,
    test_log: Path | None,
    report: patcher.Report,
    progress: patcher.Progress,
) -> None:
    """The registered attention tests on the target python's GPU: exit 3 without one, 6 when they fail."""
    progress("probing the GPU")
    gpu = gpu_tests.probe(python)
    if not gpu.available:
        report.exit_code = ec.NO_GPU
        report.message = (
            f"{report.message}; GPU tests NOT run: no CUDA GPU visible to {python} ({gpu.detail}). "
            f"Exit code {ec.NO_GPU} means 'applied, untested' (use --no-tests to skip on purpose)"
        )
        return
    files, not_here = gpu_tests.split_by_gpus(
        gpu_tests.test_files(t.layout, t.overlay_root), gpu.count
    )
    skipped = "; ".join(
        f"{f.name} needs {n} GPUs, {gpu.count} visible" for f, n in not_here
    )
    if not files and not_here:
        report.exit_code = ec.NO_GPU
        report.message = f"{report.message}; GPU tests NOT run: {skipped}"
        return
    if not files:
        report.exit_code = ec.TESTS_FAILED
        report.message = f"no registered tests matching {gpu_tests.TEST_GLOB} found"
        return
    progress(f"running {len(files)} GPU test file(s) on {gpu.detail}")
    run = gpu_tests.run(t.layout, python, files, log_path=test_log)
    if run.returncode != 0:
        report.exit_code = ec.TESTS_FAILED
        report.message = f"GPU tests failed ({' '.join(run.command)}):\n{run.output}"
    else:
        report.actions.append(
            f"GPU tests passed on {gpu.detail}: {run.output.strip().splitlines()[-1] if run.output.strip() else ''}"
        )
        if (
            not_here
        ):  # passed is not "all tested": the multi-GPU tests did not run on this machine
            report.exit_code = ec.NO_GPU
            report.message = f"{report.message}; GPU tests NOT run: {skipped}"
