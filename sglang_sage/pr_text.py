"""The text of `apply.py pr`'s PR.md: motivation and design from README.md, the change tables, the test
plan, and a verify report's tables and plots.

One source for the design text: the PR's Motivation and Design are README.md's "Why this rewrite of
the seed backend" part and the bullet list of its "## Backend" section, read at the time the PR is
made. A second copy here used to drift from the README (its refusal list had lost DCP, fp32 and
v_head_dim); whoever changes the backend updates the README, and the next PR says the same.
"""

from __future__ import annotations

import ast
import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sglang_sage import gpu_tests
from sglang_sage.errors import SageError

if TYPE_CHECKING:
    from sglang_sage.patcher import Target
    from sglang_sage.pr import Commit, Verdict

README = Path(__file__).resolve().parent.parent / "README.md"
BACKEND_DOC = "sglang/srt/layers/attention/sage_attn_backend.py"
KERNELS_DOC = "sglang/srt/layers/attention/sage_attn/kernels.py"
SKIPPED_REPORT_SECTIONS = {"Stages", "Plots", "Method"}
MOTIVATION_START = "Why this rewrite of the seed backend"
DESIGN_SECTION = "## Backend"
LEAD = (
    "SGLang has no 8-bit attention for prefill. SageAttention quantizes Q·Kᵀ to 8 bits and keeps P·V in "
    "fp16, trading a small, measured accuracy loss for cheaper attention on long prompts. A community "
    "`sage_attn` backend existed but was not safe to merge; this PR is a rewrite."
)


# ----------------------------------------------------------------------------- inputs


@dataclass
class VerifyReport:
    """A verify.py report: its JSON, its markdown (report.md next to it, or rendered) and its plots."""

    path: Path
    data: dict[str, object]
    markdown: str
    plots: list[Path]
    missing_plots: list[str]


def load_report(path: Path) -> VerifyReport:
    """Read and validate `--report` before anything is written (a PR must not cite a broken report)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SageError(f"--report {path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SageError(f"--report {path}: cannot read it ({exc})") from exc
    except ValueError as exc:
        raise SageError(f"--report {path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("checks"), list) or "verdict" not in data:
        raise SageError(f"--report {path}: not a verify.py report (needs 'verdict' and a 'checks' list)")
    md_path = Path(path).with_name("report.md")
    try:
        markdown = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise SageError(f"{md_path}: cannot read it ({exc})") from exc
    if not markdown:
        from sglang_sage.verify.report import render_md  # numpy-backed; only needed without report.md

        markdown = render_md(data)
    plots, missing = [], []
    names = data.get("plots") if isinstance(data.get("plots"), dict) else {}
    for name in names:  # type: ignore[union-attr]
        candidate = Path(path).parent / str(name)
        if candidate.is_file() and candidate.suffix == ".png" and "/" not in str(name):
            plots.append(candidate)
        else:
            missing.append(str(name))
    return VerifyReport(Path(path), data, markdown, plots, missing)


def docstring(path: Path) -> str:
    """A module's docstring, or "" (unreadable files have none)."""
    try:
        return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""


def readme_sections(readme: Path = README) -> tuple[str, str]:
    """(motivation, design) as README.md states them; a README without them is refused, not papered over."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith(MOTIVATION_START)), None)
    backend = next((i for i, ln in enumerate(lines) if ln.strip() == DESIGN_SECTION), None)
    if start is None or backend is None:
        raise SageError(
            f"{readme}: PR.md takes its motivation and design from the README, which lacks "
            f"{'the ' + repr(MOTIVATION_START) + ' paragraph' if start is None else repr(DESIGN_SECTION)}"
        )
    end = next(i for i in range(start, len(lines) + 1) if i == len(lines) or lines[i].startswith("## "))
    motivation = "\n".join(lines[start:end]).strip()
    bullets: list[str] = []
    for line in lines[backend + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("* ") or (bullets and line.startswith("  ")):
            bullets.append(line)
        elif bullets and not line.strip():
            break
    return motivation, "\n".join(bullets)


# ----------------------------------------------------------------------------- PR.md


def _report_sections(markdown: str) -> tuple[list[str], dict[str, str]]:
    """report.md -> its summary lines (verdict, model, ...) and its table sections by heading."""
    intro: list[str] = []
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            current = sections.setdefault(line[3:].strip(), [])
        elif line.startswith("# "):
            continue
        elif current is None:
            intro.append(line)
        else:
            current.append(line)
    tables = {
        name: "\n".join(lines).strip()
        for name, lines in sections.items()
        if name not in SKIPPED_REPORT_SECTIONS and any(ln.startswith("|---") or ln.startswith("| ---") for ln in lines)
    }
    while intro and not intro[0].strip():
        intro.pop(0)
    return "\n".join(intro).strip().splitlines(), tables


def render_pr(
    t: Target,
    base: str,
    branch: str,
    commits: list[Commit],
    verdict: Verdict,
    report: VerifyReport | None,
    skipped: list[str],
) -> str:
    """The pull-request body: motivation, design, per-file changes, test plan, verification evidence."""
    version = t.layout.version
    tag = t.manifest.upstream_tag
    motivation, design = readme_sections()
    out = [
        f"# [Feature] `sage_attn`: 8-bit SageAttention backend for prefill/extend (SGLang {version})",
        "",
        f"Adds the opt-in attention backend `sage_attn` (`--attention-backend sage_attn`). Branch `{branch}` on "
        f"`{tag}` (`{base[:12]}`), {len(commits)} commit(s); generated by `python apply.py pr` from the "
        f"sglang-sage patch set `patches/{t.manifest.version}/`.",
        "",
        "## Motivation",
        "",
        LEAD,
        "",
        motivation,
        "",
        "## Design",
        "",
        design,
        "",
    ]
    docs = [(rel, docstring(t.overlay_root / rel)) for rel in (BACKEND_DOC, KERNELS_DOC)]
    docs = [(rel, d) for rel, d in docs if d]
    if docs:
        out += ["<details><summary>module docstrings</summary>", ""]
        for rel, d in docs:
            out += [f"`python/{rel}`:", "", "```text", d, "```", ""]
        out += ["</details>", ""]
    out += ["## What changed", "", "| file | from | + | − |", "| --- | --- | ---: | ---: |"]
    for c in commits:
        for f in c.files:
            origin = "overlay" if c.step == "overlay" else "patch"
            out.append(f"| `{f.path}` | {origin} `{f.source}` | {f.added} | {f.removed} |")
    out += ["", "| # | commit | subject |", "| --- | --- | --- |"]
    out += [f"| {i} | `{c.sha[:12]}` | {c.subject} |" for i, c in enumerate(commits, 1)]
    if skipped:
        out += ["", "Steps without a commit on this tree: " + "; ".join(f"`{s}`" for s in skipped) + "."]
    tests = [of for of in t.overlay_files if fnmatch.fnmatch(of.dest, gpu_tests.TEST_GLOB)]
    out += ["", "## Test plan", "", "Registered tests (need a CUDA GPU):", ""]
    out += [f"- `{of.dest}`: {(docstring(of.source).splitlines() or ['(no docstring)'])[0]}" for of in tests]
    out += [
        "",
        "```bash",
        *[f"python -m pytest -q {of.dest}" for of in tests],
        "```",
        "",
        "From the sglang-sage repository this series comes from:",
        "",
        "```bash",
        "python apply.py --sglang-dir SGLANG_CHECKOUT   # pins, API check, apply, registered GPU tests",
        f"python verify.py --out reports/{version}/GPU       # the checks below: report.json/.md + plots",
        "python benchmarks/bench_kernels.py --out-root OUT  # kernels: sage_attn vs cuDNN/flash SDPA, SageAttention",
        "python benchmarks/bench_e2e.py --out-root OUT      # Engine prefill latency / decode tok/s per backend",
        'python -m pytest -q -m "not gpu" tests             # CPU suite (patch set, kernels under TRITON_INTERPRET)',
        "```",
        "",
    ]
    if report is not None:
        intro, tables = _report_sections(report.markdown)
        out += ["## Verification", "", f"From `{report.path}`:", ""]
        out += intro + [""]
        checks = tables.pop("Checks", "")
        if checks:
            out += ["### Checks", "", checks, ""]
        if tables:
            out += ["<details><summary>criteria, per-bucket accuracy, throughput, memory, environment</summary>", ""]
            for name, table in tables.items():
                out += [f"### {name}", "", table, ""]
            out += ["</details>", ""]
        for png in report.plots:
            out += [f"![{png.stem}]({png.name})", ""]
    style = (
        "passes SGLang's formatters"
        if verdict.style_ok
        else "**does not pass SGLang's formatters** (see the self-check details below)"
    )
    out += [
        "## Reproducing this series",
        "",
        f"`git am` of the {len(commits)} patch(es) on `{base[:12]}` gives tree `{verdict.am_tree[:12] or '-'}`; "
        f"branch `{branch}` has tree `{verdict.branch_tree[:12]}`; `apply.py apply` on the same base gives tree "
        f"`{verdict.apply_tree[:12] or '-'}`: **{'identical' if verdict.trees_ok else 'MISMATCH'}**. The series' "
        f"Python files ({verdict.style_checked}) {style}.",
        "",
    ]
    out += [f"- {d}" for d in verdict.details]
    return "\n".join(out).rstrip() + "\n"
