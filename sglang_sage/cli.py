"""Command line of apply.py: argument parsing, rich/JSON rendering, build and GPU-test steps."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sglang_sage import build, engine, fetch, gpu_tests, maint, pr
from sglang_sage import errors as ec
from sglang_sage.errors import SageError
from sglang_sage.layout import LayoutKind, detect
from sglang_sage.manifest import Manifest
from sglang_sage.series import PATCHES_DIR, available_versions, patchset_dir

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("apply", "status", "revert", "check", "test", "manifest", "pr")


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in ec.EXIT_CODES.items())
    return (
        "examples:\n"
        "  python apply.py                                # fetch pinned SGLang into .sglang/<ver>/, apply, test\n"
        "  python apply.py --sglang-dir ~/src/sglang      # git checkout at v0.5.17\n"
        "  python apply.py --sglang-dir .venv/lib/python3.11/site-packages --no-tests\n"
        "  python apply.py status --sglang-dir DIR --json\n"
        "  python apply.py revert --sglang-dir DIR\n\n"
        f"exit codes:\n{codes}\n"
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sglang-dir",
        type=Path,
        metavar="DIR",
        help="SGLang git checkout, unpacked sdist or site-packages dir (default: fetch the pinned "
        "release from PyPI into .sglang/<version>/ as a git checkout)",
    )
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON report on stdout")


def _patch_set_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--patch-set",
        metavar="VERSION",
        help="use patches/VERSION/ instead of the set matching the tree's SGLang version (its sha256 "
        "pins are still checked: it applies only where the patched files are byte-identical)",
    )


def _apply_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="proceed when pinned files differ/are dirty: 3-way apply (git checkouts), never fuzz",
    )
    p.add_argument("--skip-api-check", action="store_true", help="do not run the static API check (development only)")


def _run_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--python",
        default=sys.executable,
        metavar="EXE",
        help="interpreter of the SGLang environment, for build and GPU tests (default: this one)",
    )
    p.add_argument("--no-tests", action="store_true", help="do not run the GPU attention tests")
    p.add_argument(
        "--test-log",
        type=Path,
        metavar="FILE",
        help="write the GPU tests' whole pytest output (verbose) to FILE, e.g. to commit it as evidence",
    )


def parser() -> argparse.ArgumentParser:
    """The argparse tree (exposed for tests and docs)."""
    top = argparse.ArgumentParser(
        prog="apply.py",
        description="Turn a pinned SGLang into SGLang + the 8-bit SageAttention backend `sage_attn`, "
        "reproducibly, or refuse with a reason and change nothing. Default command: apply.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "apply",
        help="verify pins, apply patches + overlay, rebuild, run GPU tests",
        epilog=_epilog(),
        formatter_class=fmt,
    )
    _common(p)
    _patch_set_opt(p)
    _apply_opts(p)
    _run_opts(p)
    p.add_argument("--no-build", action="store_true", help="skip the rebuild step")
    p.add_argument(
        "--build-cmd",
        metavar="CMD",
        help="rebuild command instead of `pip install -e python --no-deps` ({python}, {pkg_root}, {root} expand)",
    )

    p = sub.add_parser(
        "status",
        help="pristine / applied / partially applied / drifted, per file",
        epilog=_epilog(),
        formatter_class=fmt,
    )
    _common(p)
    _patch_set_opt(p)
    p = sub.add_parser(
        "revert", help="restore the byte-identical pristine tree (hash-verified)", epilog=_epilog(), formatter_class=fmt
    )
    _common(p)
    _patch_set_opt(p)
    p = sub.add_parser("check", help="every apply check, without writing", epilog=_epilog(), formatter_class=fmt)
    _common(p)
    _patch_set_opt(p)
    _apply_opts(p)
    p = sub.add_parser(
        "test",
        help="run the registered sage_attn GPU tests against an applied tree",
        epilog=_epilog(),
        formatter_class=fmt,
    )
    _common(p)
    _patch_set_opt(p)
    _run_opts(p)
    p = sub.add_parser(
        "manifest", help="maintenance: regenerate manifest hashes", epilog=_epilog(), formatter_class=fmt
    )
    _common(p)
    p.add_argument(
        "--update",
        metavar="VERSION",
        required=True,
        help="patch set to refresh; overlay hashes always, pre/post-image hashes from --sglang-dir "
        "(a pristine tree) or the fetched release",
    )
    p = sub.add_parser(
        "pr",
        help="upstream PR: branch sage-attn/<version>, one commit per step, format-patch series + PR.md",
        epilog=_epilog(),
        formatter_class=fmt,
    )
    _common(p)
    p.add_argument("--out", type=Path, metavar="DIR", required=True, help="new or empty directory for *.patch + PR.md")
    p.add_argument(
        "--report", type=Path, metavar="JSON", help="verify.py report.json whose tables and plots go in PR.md"
    )
    p.add_argument("--author", metavar="'NAME <MAIL>'", help="commit author (default: the patches' From: line)")
    return top


def _default_version() -> str:
    """The newest GPU-verified patch set (newest of all when none is)."""
    versions = available_versions()
    if not versions:
        raise SageError(f"no patch sets under {PATCHES_DIR}")
    gpu = [v for v in versions if Manifest.load(patchset_dir(v) / "manifest.toml").tier == "gpu"]
    return max(gpu or versions, key=Version)


def _target_dir(args: argparse.Namespace, console: Console) -> Path:
    if args.sglang_dir is not None:
        return args.sglang_dir
    version = getattr(args, "patch_set", None) or _default_version()
    manifest = Manifest.load(patchset_dir(version) / "manifest.toml")
    dest = REPO / ".sglang" / version
    if not (dest / "python" / "sglang").is_dir():
        console.print(
            f"[bold]fetching[/] SGLang {version} from PyPI (pip download, cached in {fetch.cache_dir()}) "
            f"-> git checkout {dest}"
        )
    return fetch.ensure_checkout(version, manifest.upstream_tag, dest)


# ----------------------------------------------------------------------------- rendering

_COLORS = {
    engine.PRISTINE: "cyan",
    engine.APPLIED: "green",
    engine.PARTIAL: "yellow",
    engine.DRIFTED: "red",
    engine.NA: "dim",
}


def _render(report: engine.Report, console: Console) -> None:
    console.print(f"[bold]{report.command}[/] {report.target}  ({report.layout}, SGLang {report.version})")
    if report.items:
        table = Table(show_lines=False, expand=False)
        table.add_column("step", no_wrap=True)
        table.add_column("file", overflow="fold")
        table.add_column("state", no_wrap=True)
        table.add_column("detail", overflow="fold")
        for i in report.items:
            step = i.step.split("-", 1)[0] if i.kind != "overlay" else "overlay"
            table.add_row(step, escape(i.path), f"[{_COLORS.get(i.state, 'white')}]{i.state}[/]", escape(i.detail))
        console.print(table)
    for a in report.actions:
        console.print(f"  [green]•[/] {escape(a)}")
    for w in report.warnings:
        console.print(f"  [yellow]warning:[/] {escape(w)}")
    if report.state:
        console.print(f"state: [{_COLORS.get(report.state, 'white')}]{report.state}[/]")
    if report.message:
        style = "green" if report.exit_code == ec.OK else ("yellow" if report.exit_code == ec.NO_GPU else "red")
        console.print(f"[{style}]{report.message}[/]")


def _emit(report: engine.Report, args: argparse.Namespace, console: Console) -> int:
    if getattr(args, "json", False):
        print(json.dumps(report.to_json(), indent=2))
    else:
        _render(report, console)
    return report.exit_code


# ----------------------------------------------------------------------------- steps after apply


def _check_python(python: str, manifest: Manifest) -> None:
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


def _build(t: engine.Target, args: argparse.Namespace, report: engine.Report, progress) -> None:  # type: ignore[no-untyped-def]
    progress("rebuilding")
    files = engine.touched_sources(t)
    before = engine.existing_pyc(files) if t.layout.kind is LayoutKind.INSTALLED else {}
    result = build.run(t.layout, args.python, files, args.build_cmd)
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
    if t.layout.kind is LayoutKind.INSTALLED and not args.build_cmd:
        engine.record_pyc(t, files, before)
    report.actions.append(f"built: {' '.join(result.command[:6])}{' ...' if len(result.command) > 6 else ''}")


def _gpu_tests(t: engine.Target, args: argparse.Namespace, report: engine.Report, progress) -> None:  # type: ignore[no-untyped-def]
    progress("probing the GPU")
    gpu = gpu_tests.probe(args.python)
    if not gpu.available:
        report.exit_code = ec.NO_GPU
        report.message = (
            f"{report.message}; GPU tests NOT run: no CUDA GPU visible to {args.python} ({gpu.detail}). "
            f"Exit code {ec.NO_GPU} means 'applied, untested' (use --no-tests to skip on purpose)"
        )
        return
    files, not_here = gpu_tests.split_by_gpus(gpu_tests.test_files(t.layout, t.overlay_root), gpu.count)
    skipped = "; ".join(f"{f.name} needs {n} GPUs, {gpu.count} visible" for f, n in not_here)
    if not files and not_here:
        report.exit_code = ec.NO_GPU
        report.message = f"{report.message}; GPU tests NOT run: {skipped}"
        return
    if not files:
        report.exit_code = ec.TESTS_FAILED
        report.message = f"no registered tests matching {gpu_tests.TEST_GLOB} found"
        return
    progress(f"running {len(files)} GPU test file(s) on {gpu.detail}")
    run = gpu_tests.run(t.layout, args.python, files, log_path=args.test_log)
    if run.returncode != 0:
        report.exit_code = ec.TESTS_FAILED
        report.message = f"GPU tests failed ({' '.join(run.command)}):\n{run.output}"
    else:
        report.actions.append(
            f"GPU tests passed on {gpu.detail}: {run.output.strip().splitlines()[-1] if run.output.strip() else ''}"
        )
        if not_here:  # passed is not "all tested": the multi-GPU tests did not run on this machine
            report.exit_code = ec.NO_GPU
            report.message = f"{report.message}; GPU tests NOT run: {skipped}"


# ----------------------------------------------------------------------------- commands


def _cmd(args: argparse.Namespace, console: Console) -> int:
    quiet = args.json
    status_ctx = console.status("working...") if not quiet else None

    def progress(msg: str) -> None:
        if status_ctx is not None:
            status_ctx.update(f"{msg}...")

    if args.command == "pr":
        if args.report is not None:
            pr.load_report(args.report)  # a broken report is refused before a checkout is even fetched
        target = _target_dir(args, console)
        if status_ctx is not None:
            status_ctx.start()
        try:
            result = pr.prepare(target, args.out, report=args.report, author=args.author, progress=progress)
        finally:
            if status_ctx is not None:
                status_ctx.stop()
        return _emit_pr(result, args, console)
    if args.command == "manifest":
        directory = patchset_dir(args.update)
        layout = None
        if args.sglang_dir is not None:
            layout = detect(args.sglang_dir)
        else:
            m = Manifest.load(directory / "manifest.toml")
            layout = detect(fetch.ensure_checkout(args.update, m.upstream_tag, REPO / ".sglang" / args.update))
        m = maint.update(directory, layout)
        report = engine.Report(
            "manifest",
            str(directory),
            version=m.version,
            message=f"rewrote {directory / 'manifest.toml'}: {len(m.pre)} patched file pins, "
            f"{len(m.overlay)} overlay files",
        )
        return _emit(report, args, console)

    target = _target_dir(args, console)
    t = engine.open_target(target, patch_set=args.patch_set)
    if status_ctx is not None:
        status_ctx.start()
    try:
        if args.command == "status":
            report = engine.status(t)
        elif args.command == "revert":
            report = engine.revert(t, progress=progress)
        elif args.command == "check":
            report = engine.check(t, force=args.force, skip_api_check=args.skip_api_check, progress=progress)
        elif args.command == "test":
            report = engine.status(t)
            if report.state != engine.APPLIED:
                raise SageError(f"{t.layout.root} is {report.state}; apply first")
            report.command = "test"
            report.message = "applied"
            _gpu_tests(t, args, report, progress)
        else:
            if not args.no_tests or not args.no_build:
                _check_python(args.python, t.manifest)
            report = engine.apply(t, force=args.force, skip_api_check=args.skip_api_check, progress=progress)
            if not report.message.startswith("already applied"):
                if not args.no_build:
                    _build(t, args, report, progress)
                if report.exit_code == ec.OK and not args.no_tests:
                    _gpu_tests(t, args, report, progress)
    finally:
        if status_ctx is not None:
            status_ctx.stop()
    if t.manifest.version != t.layout.version:
        report.warnings.insert(
            0,
            f"--patch-set {t.manifest.version} on SGLang {t.layout.version}: the set was made for "
            f"{t.manifest.version}; only its sha256 pins vouch for this tree",
        )
    return _emit(report, args, console)


def _emit_pr(result: pr.PrResult, args: argparse.Namespace, console: Console) -> int:
    """`pr` has its own result type (commits, written files, self-check verdict), not an engine.Report."""
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return result.exit_code
    console.print(f"[bold]pr[/] {result.target}  (SGLang {result.version}, base {result.base[:12]})")
    table = Table(expand=False)
    for col in ("commit", "step", "subject", "files"):
        table.add_column(col, overflow="fold")
    for c in result.commits:
        table.add_row(c.sha[:12], escape(c.step), escape(c.subject), str(len(c.files)))
    console.print(table)
    for s in result.skipped:
        console.print(f"  [dim]no commit:[/] {escape(s)}")
    for w in result.written:
        console.print(f"  [green]•[/] wrote {escape(w)}")
    for w in result.warnings:
        console.print(f"  [yellow]warning:[/] {escape(w)}")
    v = result.verdict
    mark = "[green]ok[/]" if v.ok else "[red]MISMATCH[/]"
    console.print(
        f"self-check {mark}: git am {'applies' if v.git_am else 'FAILS'}; trees: branch {v.branch_tree[:12]}, "
        f"git am {v.am_tree[:12] or '-'}, apply {v.apply_tree[:12] or '-'}"
    )
    for d in v.details:
        console.print(f"  - {escape(d)}")
    console.print(f"[{'green' if result.exit_code == ec.OK else 'red'}]{escape(result.message)}[/]")
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point of apply.py; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "apply")
    args = parser().parse_args(argv)
    console = Console(stderr=bool(args.json), highlight=False)
    try:
        return _cmd(args, console)
    except SageError as exc:
        if args.json:
            print(
                json.dumps(
                    {"command": args.command, "exit_code": exc.code, "message": exc.message, "details": exc.details},
                    indent=2,
                )
            )
        else:
            console.print(f"[red]error:[/] {exc.message}")
            for d in exc.details:
                console.print(f"  - {d}", markup=False, highlight=False)
            if exc.code == ec.REFUSED:
                console.print("nothing was changed.")
            elif exc.code == ec.APPLY_FAILED:
                console.print("all changes were rolled back.")
        return exc.code
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: all changes were rolled back.")
        return ec.INTERRUPTED
