"""Command line of apply.py: argument parsing, target selection, rich/JSON rendering (steps: pipeline.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from packaging.version import Version
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sglang_sage import errors as ec
from sglang_sage import fetch, installed, maint, patcher, pipeline, pr
from sglang_sage.errors import SageError
from sglang_sage.layout import detect
from sglang_sage.manifest import Manifest
from sglang_sage.series import PATCHES_DIR, available_versions, patchset_dir

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("apply", "status", "revert", "check", "test", "manifest", "pr")


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {text}" for code, text in ec.EXIT_CODES.items())
    return (
        "examples:\n"
        "  python apply.py                                # the SGLang this python imports (else the pinned release)\n"
        "  python apply.py --fetch                        # fetch pinned SGLang into .sglang/<ver>/, apply, test\n"
        "  python apply.py --sglang-dir ~/src/sglang      # git checkout at v0.5.17\n"
        "  python apply.py --sglang-dir .venv/lib/python3.11/site-packages --no-tests\n"
        "  python apply.py status --sglang-dir DIR --json\n"
        "  python apply.py revert --sglang-dir DIR\n\n"
        f"exit codes:\n{codes}\n"
    )


_FETCHED_TARGET = "the pinned release fetched from PyPI into .sglang/<version>/ as a git checkout"
_INSTALLED_TARGET = "the SGLang that --python imports when it is a supported version, else " + _FETCHED_TARGET


def _common(p: argparse.ArgumentParser, *, default_target: str = _FETCHED_TARGET) -> None:
    p.add_argument(
        "--sglang-dir",
        type=Path,
        metavar="DIR",
        help=f"SGLang git checkout, unpacked sdist or site-packages dir (default: {default_target})",
    )
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON report on stdout")


def _target_opts(p: argparse.ArgumentParser, python_help: str) -> None:
    p.add_argument("--python", default=sys.executable, metavar="EXE", help=python_help + " (default: this one)")
    p.add_argument(
        "--fetch",
        action="store_true",
        help="without --sglang-dir: use the fetched pinned release even when --python has an SGLang installed",
    )


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


_RUN_PYTHON = "interpreter of the SGLang environment: its installed SGLang is the default target; build and GPU tests"
_FIND_PYTHON = "interpreter whose installed SGLang is the default target"


def _run_opts(p: argparse.ArgumentParser) -> None:
    _target_opts(p, _RUN_PYTHON)
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
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "apply",
        help="verify pins, apply patches + overlay, rebuild, run GPU tests",
        formatter_class=fmt,
    )
    _common(p, default_target=_INSTALLED_TARGET)
    _patch_set_opt(p)
    _apply_opts(p)
    _run_opts(p)
    p.add_argument("--no-build", action="store_true", help="skip the rebuild step")
    p.add_argument(
        "--build-cmd",
        metavar="CMD",
        help="rebuild command instead of `pip install -e python --no-deps` ({python}, {pkg_root}, {root} expand)",
    )
    # `python apply.py --help` is what people type first: show the default command's options there too
    top.epilog = _options_of(p, "options of apply, the default command (python apply.py [apply] [options])") + (
        "\n" + _epilog()
    )
    p.epilog = _epilog()

    p = sub.add_parser(
        "status",
        help="pristine / applied / partially applied / drifted, per file",
        epilog=_epilog(),
        formatter_class=fmt,
    )
    _common(p, default_target=_INSTALLED_TARGET)
    _patch_set_opt(p)
    _target_opts(p, _FIND_PYTHON)
    p = sub.add_parser(
        "revert", help="restore the byte-identical pristine tree (hash-verified)", epilog=_epilog(), formatter_class=fmt
    )
    _common(p, default_target=_INSTALLED_TARGET)
    _patch_set_opt(p)
    _target_opts(p, _FIND_PYTHON)
    p = sub.add_parser("check", help="every apply check, without writing", epilog=_epilog(), formatter_class=fmt)
    _common(p, default_target=_INSTALLED_TARGET)
    _patch_set_opt(p)
    _apply_opts(p)
    _target_opts(p, _FIND_PYTHON)
    p = sub.add_parser(
        "test",
        help="run the registered sage_attn GPU tests against an applied tree",
        epilog=_epilog(),
        formatter_class=fmt,
    )
    _common(p, default_target=_INSTALLED_TARGET)
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


def _options_of(p: argparse.ArgumentParser, title: str) -> str:
    """The option list of one subcommand, as its own --help prints it (without usage and epilog)."""
    formatter = p._get_formatter()
    formatter.start_section(title)
    for group in p._action_groups:
        formatter.add_arguments([a for a in group._group_actions if a.option_strings and a.dest != "help"])
    formatter.end_section()
    return formatter.format_help()


def _default_version() -> str:
    """The newest GPU-verified patch set (newest of all when none is)."""
    versions = available_versions()
    if not versions:
        raise SageError(f"no patch sets under {PATCHES_DIR}")
    gpu = [v for v in versions if Manifest.load(patchset_dir(v) / "manifest.toml").tier == "gpu"]
    return max(gpu or versions, key=Version)


def _target_dir(args: argparse.Namespace, console: Console) -> Path:
    """--sglang-dir; else the SGLang that --python imports (named before anything is written); else, or
    with --fetch, the pinned release fetched into .sglang/<version>/."""
    if args.sglang_dir is not None:
        if getattr(args, "fetch", False):
            raise SageError("--fetch and --sglang-dir exclude each other: name one target", code=ec.USAGE)
        return args.sglang_dir
    python = getattr(args, "python", None)
    if python is not None and not args.fetch:
        found = installed.find(python)
        if found is not None:
            console.print(f"[bold]target:[/] {escape(found.describe())}", soft_wrap=True)
            try:
                patchset_dir(getattr(args, "patch_set", None) or found.layout.version)
            except SageError as exc:
                exc.details.append(
                    f"this is the SGLang installed for {python}; `--fetch` uses the pinned release instead, "
                    "`--sglang-dir DIR` another tree"
                )
                raise
            return found.layout.root
    version = getattr(args, "patch_set", None) or _default_version()
    manifest = Manifest.load(patchset_dir(version) / "manifest.toml")
    dest = REPO / ".sglang" / version
    if python is not None and not args.fetch:
        console.print(
            f"[bold]target:[/] no SGLang installed for {escape(python)}; using the pinned release {dest}",
            soft_wrap=True,
        )
    return fetch.ensure_checkout(version, manifest.upstream_tag, dest, _printer(console))


def _printer(console: Console) -> fetch.Progress:
    """Progress lines for steps that run before the status spinner (the fetch)."""

    def say(message: str) -> None:
        console.print(escape(message), soft_wrap=True, highlight=False)

    return say


# ----------------------------------------------------------------------------- rendering

_COLORS = {
    patcher.PRISTINE: "cyan",
    patcher.APPLIED: "green",
    patcher.PARTIAL: "yellow",
    patcher.DRIFTED: "red",
    patcher.NA: "dim",
}


def _render(report: patcher.Report, console: Console) -> None:
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


def _emit(report: patcher.Report, args: argparse.Namespace, console: Console) -> int:
    if getattr(args, "json", False):
        print(json.dumps(report.to_json(), indent=2))
    else:
        _render(report, console)
    return report.exit_code


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
            layout = detect(
                fetch.ensure_checkout(args.update, m.upstream_tag, REPO / ".sglang" / args.update, _printer(console))
            )
        m = maint.update(directory, layout)
        report = patcher.Report(
            "manifest",
            str(directory),
            version=m.version,
            message=f"rewrote {directory / 'manifest.toml'}: {len(m.pre)} patched file pins, "
            f"{len(m.overlay)} overlay files",
        )
        return _emit(report, args, console)

    target = _target_dir(args, console)
    t = patcher.open_target(target, patch_set=args.patch_set)
    if status_ctx is not None:
        status_ctx.start()
    try:
        if args.command == "status":
            report = patcher.status(t)
        elif args.command == "revert":
            with patcher.locked(t, progress) as notes:
                report = patcher.revert(t, progress=progress)
            report.warnings[:0] = notes
        elif args.command == "check":
            report = patcher.check(t, force=args.force, skip_api_check=args.skip_api_check, progress=progress)
        elif args.command == "test":
            report = pipeline.test_applied(t, args.python, test_log=args.test_log, progress=progress)
        else:
            options = pipeline.Options(
                python=args.python,
                force=args.force,
                skip_api_check=args.skip_api_check,
                build=not args.no_build,
                build_cmd=args.build_cmd,
                tests=not args.no_tests,
                test_log=args.test_log,
            )
            report = pipeline.apply_build_test(t, options, progress=progress)
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
    """`pr` has its own result type (commits, written files, self-check verdict), not an patcher.Report."""
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
    style = "ok" if v.style_ok else ("NOT RUN" if v.style_error else "WOULD REFORMAT")
    console.print(
        f"self-check {mark}: git am {'applies' if v.git_am else 'FAILS'}; trees: branch {v.branch_tree[:12]}, "
        f"git am {v.am_tree[:12] or '-'}, apply {v.apply_tree[:12] or '-'}; SGLang's formatters on "
        f"{v.style_checked} Python file(s): {style}"
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
