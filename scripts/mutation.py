#!/usr/bin/env python3
"""Mutation testing of the tool's core modules with mutmut (not in CI: minutes to an hour per module on 2 cores).

Each module is run on its own, against only the tests that exercise it (MODULES below), in a scratch copy of
the repository outside any git repository (`$TMPDIR/sglang-sage-mutation/<module>/`), so that mutmut's per-run
configuration, its `mutants/` directory and any git command a mutant runs never touch the work tree. The result
is written to `reports/mutation/<module>.json` and the table in `reports/mutation/README.md` is regenerated from
all module files.

Counting: a mutant is *killed* when the selected tests do not pass with it (failure, error or timeout), *survived*
when they pass, and "no tests" (no selected test runs the mutated function) counts as survived. Survivors that
`reports/mutation/equivalent.toml` judges equivalent (same mutant name and the same diff; a judgement whose diff
no longer matches is ignored) are left out of the kill rate: killed / (mutants - equivalent).

    python -m pip install mutmut==3.8.1
    python scripts/mutation.py engine            # one module (see MODULES), or several, or "all"
    python scripts/mutation.py --table           # only regenerate reports/mutation/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "reports" / "mutation"
EQUIVALENT = OUT / "equivalent.toml"
T = "tests/sglang_sage/"
V = "tests/verify/"

# module -> (source file, the tests that exercise it)
MODULES: dict[str, tuple[str, list[str]]] = {
    "transaction": ("sglang_sage/transaction.py", [T + "test_transaction.py", T + "test_patcher.py"]),
    "manifest": ("sglang_sage/manifest.py", [T + "test_overlay_manifest.py", T + "test_patchset.py"]),
    "overlay": ("sglang_sage/overlay.py", [T + "test_overlay_manifest.py", T + "test_patchset.py"]),
    "pyproject_edit": ("sglang_sage/pyproject_edit.py", [T + "test_pyproject_edit.py", T + "test_patcher.py"]),
    "gitapply": ("sglang_sage/gitapply.py", [T + "test_gitapply.py", T + "test_patcher.py"]),
    # engine.py became patcher.py (issue 15): apply / status / revert / check
    # test_revert_bytecode.py (the real tree, ~10 s per run) is left out: test_patcher.py covers the bytecode too
    "patcher": ("sglang_sage/patcher.py", [T + "test_patcher.py"]),
    # the real-release tests (test_apicheck.py) take ~10 s per mutant: the miniature tree covers the same code
    "apicheck": ("sglang_sage/apicheck.py", [T + "test_apicheck_units.py"]),
    "metrics": ("sglang_sage/verify/metrics.py", [V + "test_metrics.py", V + "test_checks_report.py"]),
    "checks": ("sglang_sage/verify/checks.py", [V + "test_checks_report.py"]),
    # test_pr.py (the real 0.5.17 checkout, ~10 s per run) is left out: the miniature release covers the same code;
    # test_pr_paths.py: the git plumbing, failure paths and self-check reports (fake formatters, ~4 s)
    "pr": ("sglang_sage/pr.py", [T + "test_pr_mini.py", T + "test_pr_paths.py"]),
}
ALSO_COPY = [
    "patches/",
    "overlay/",
    "benchmarks/",
    "docs/",
    "reports/",
    "scripts/",
    "apply.py",
    "verify.py",
    "README.md",
]
KILLED_STATUSES = {"killed", "timeout", "segfault", "suspicious", "check was interrupted by user"}


def scratch_copy(module: str) -> Path:
    """A fresh copy of the repository's files (tracked and new, not ignored), outside the repository."""
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "sglang-sage-mutation" / module  # outside any repository
    if work.exists():
        shutil.rmtree(work)
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in filter(None, files):
        rel = raw.decode()
        src = REPO / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    return work


def configure(work: Path, source: str, tests: list[str]) -> None:
    """mutmut reads [tool.mutmut] from the scratch copy's pyproject.toml."""
    conf = [
        "",
        "[tool.mutmut]",
        'source_paths = ["sglang_sage/"]',
        f"only_mutate = {json.dumps([source])}",
        f"also_copy = {json.dumps(ALSO_COPY)}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not gpu"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        "",
    ]
    with (work / "pyproject.toml").open("a", encoding="utf-8") as fh:
        fh.write("\n".join(conf))


def mutmut_command() -> list[str]:
    script = Path(sys.executable).parent / "mutmut"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mutmut"]


def run_module(module: str, max_children: int) -> dict[str, object]:
    source, tests = MODULES[module]
    work = scratch_copy(module)
    configure(work, source, tests)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # A mutant may run git with a wrong cwd (the scratch copy): git must never find this repository from
    # there (one such mutant ran `git am` on the work tree's branch before this line existed).
    env["GIT_CEILING_DIRECTORIES"] = str(work)
    started = time.time()
    log = work / "mutmut.log"
    with log.open("w") as fh:
        proc = subprocess.run(
            [*mutmut_command(), "run", "--max-children", str(max_children)], cwd=work, env=env, stdout=fh, stderr=fh
        )
    if proc.returncode != 0:
        raise SystemExit(f"mutmut run failed for {module} (exit {proc.returncode}); see {log}")
    return summarize(module, source, tests, work, time.time() - started)


def _diffs(work: Path, names: list[str]) -> dict[str, str]:
    """`mutmut show` for each name, in one process (cwd must be the scratch copy)."""
    code = (
        "import json, sys\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
        "names = json.loads(sys.stdin.read())\n"
        "print(json.dumps({n: get_diff_for_mutant(n) for n in names}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=work, input=json.dumps(names), capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def _changed_lines(diff: str) -> list[str]:
    """The -/+ lines of a mutant's diff: what a judgement is pinned to (hunk positions may move)."""
    return [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def load_judgements() -> dict[str, dict[str, object]]:
    if not EQUIVALENT.is_file():
        return {}
    data = tomllib.loads(EQUIVALENT.read_text(encoding="utf-8"))
    return {e["mutant"]: e for e in data.get("equivalent", [])}


def summarize(module: str, source: str, tests: list[str], work: Path, seconds: float) -> dict[str, object]:
    sys.path.insert(0, str(work))
    meta_path = work / "mutants" / (source + ".meta")
    meta = json.loads(meta_path.read_text())
    from mutmut.stats import status_by_exit_code  # noqa: PLC0415 - only needed here

    statuses = {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}
    not_run = sorted(n for n, s in statuses.items() if s in ("not checked", "skipped"))
    if not_run:
        raise SystemExit(f"{module}: {len(not_run)} mutant(s) were not checked, e.g. {not_run[:3]}")
    survivors = sorted(n for n, s in statuses.items() if s not in KILLED_STATUSES)
    diffs = _diffs(work, survivors) if survivors else {}
    by_status: dict[str, int] = {}
    for s in statuses.values():
        by_status[s] = by_status.get(s, 0) + 1
    result: dict[str, object] = {
        "module": module,
        "source": source,
        "tests": tests,
        "tool": "mutmut " + _mutmut_version(),
        "seconds": round(seconds),
        "mutants": len(statuses),
        "killed": len(statuses) - len(survivors),
        "survived": len(survivors),
        "by_status": dict(sorted(by_status.items())),
        "survivors": [{"mutant": n, "status": statuses[n], "diff": _changed_lines(diffs[n])} for n in survivors],
    }
    return classify(result)


def classify(result: dict[str, object]) -> dict[str, object]:
    """Split the survivors into judged-equivalent and live ones; compute the kill rate of the live ones."""
    judgements = load_judgements()
    equivalent, live, stale = [], [], []
    for entry in result["survivors"]:  # type: ignore[attr-defined]
        j = judgements.get(entry["mutant"])
        if j is not None and j.get("diff") == entry["diff"]:
            equivalent.append({"mutant": entry["mutant"], "why": j["why"]})
        else:
            if j is not None:
                stale.append(entry["mutant"])
            live.append(entry["mutant"])
    counted = int(result["mutants"]) - len(equivalent)  # type: ignore[call-overload]
    result["equivalent"] = len(equivalent)
    result["kill_rate_non_equivalent"] = round(int(result["killed"]) / counted, 4) if counted else 1.0  # type: ignore[call-overload]
    result["survivors_not_equivalent"] = live
    result["survivors_equivalent"] = equivalent
    result["stale_judgements"] = stale
    return result


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def judge(module: str, mutant: str, why: str) -> None:
    """Record a survivor of the last run as equivalent, pinned to its current diff."""
    path = OUT / f"{module}.json"
    result = json.loads(path.read_text())
    entry = next((s for s in result["survivors"] if s["mutant"] == mutant), None)
    if entry is None or mutant not in result["survivors_not_equivalent"]:
        raise SystemExit(f"{mutant} is not an unjudged survivor in {path}")
    lines = [
        "",
        "[[equivalent]]",
        f"module = {json.dumps(module)}",
        f"mutant = {json.dumps(mutant, ensure_ascii=False)}",
        f"diff = {json.dumps(entry['diff'], ensure_ascii=False)}",
        f"why = {json.dumps(why, ensure_ascii=False)}",
        "",
    ]
    with EQUIVALENT.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    path.write_text(json.dumps(classify(result), indent=1, ensure_ascii=False) + "\n")


def write_table() -> None:
    rows = []
    for module in MODULES:
        path = OUT / f"{module}.json"
        if not path.is_file():
            rows.append(f"| {module} | not run | | | | | |")
            continue
        r = json.loads(path.read_text())
        rate = f"{100 * r['kill_rate_non_equivalent']:.1f} %"
        rows.append(
            f"| {module} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['equivalent']} | {rate} | "
            f"{', '.join(Path(t).name for t in r['tests'])} |"
        )
    head = (OUT / "README.md").read_text().split("<!-- table -->")[0] if (OUT / "README.md").is_file() else ""
    table = [
        "<!-- table -->",
        "| module | mutants | killed | survived | equivalent | kill rate (non-equivalent) | tests run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
    ]
    (OUT / "README.md").write_text(head + "\n".join(table))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", help=f"one or more of: {', '.join(MODULES)}; or 'all'")
    p.add_argument("--max-children", type=int, default=2, help="parallel mutant workers (default 2)")
    p.add_argument("--table", action="store_true", help="only regenerate reports/mutation/README.md")
    p.add_argument(
        "--judge",
        nargs=3,
        metavar=("MODULE", "MUTANT", "WHY"),
        help="record a survivor of MODULE's last run as equivalent (one line why) and recount",
    )
    args = p.parse_args(argv)
    if args.judge:
        judge(*args.judge)
        write_table()
        return 0
    modules = list(MODULES) if args.modules == ["all"] else args.modules
    unknown = [m for m in modules if m not in MODULES]
    if unknown or (not modules and not args.table):
        p.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)} or 'all'")
    OUT.mkdir(parents=True, exist_ok=True)
    for module in modules:
        print(f"[mutation] {module}: running mutmut ...", flush=True)
        result = run_module(module, args.max_children)
        (OUT / f"{module}.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        print(
            f"[mutation] {module}: {result['mutants']} mutants, {result['killed']} killed, "
            f"{result['survived']} survived ({result['equivalent']} equivalent), "
            f"kill rate {100 * result['kill_rate_non_equivalent']:.1f} % in {result['seconds']} s",
            flush=True,
        )
    write_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
