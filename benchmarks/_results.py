"""Shared helpers for the benchmarks: environment capture, incremental JSON, tables, plots, targets.

Pure Python + (optionally) matplotlib; importing this module never touches CUDA, so the
CPU test-suite (tests/benchmarks/) can render tables and plots from fake results.

Result documents are plain dicts:

* kernel (bench_kernels.py): ``{"kind": "kernels", "env": {...}, "config": {...},
  "results": [record, ...], "targets": [...]}`` where a record is one problem shape with
  ``record["backends"][name] = {"status": "ok"|"error"|"skipped", "ms", "tflops", "cos", ...}``
  and ``record["ratios"]``.
* e2e (bench_e2e.py): ``{"kind": "e2e", ..., "results": [engine_record, ...]}`` where an engine
  record holds ``prefill[str(len)]["ms"]`` and ``decode[str(len)]["tok_s"]``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata as _md
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_ROOT = Path(__file__).resolve().parent / "results"

# Backend display names of the kernel benchmark, in table order.
KERNEL_BACKENDS: tuple[str, ...] = ("sage", "cudnn", "flash", "sageattn", "triton_extend")
KERNEL_LABELS: dict[str, str] = {
    "sage": "sage_attn",
    "cudnn": "cuDNN SDPA",
    "flash": "torch flash",
    "sageattn": "sageattention 1.0.6",
    "triton_extend": "SGLang triton extend",
}
# Engine configurations of the e2e benchmark, in table order.
E2E_CONFIGS: tuple[str, ...] = ("sage_attn", "sage_attn+flashinfer", "flashinfer", "triton")

# Targets of issue #5 (printed as PASS/FAIL lines, never asserted).
KERNEL_TARGET_LENGTHS: tuple[int, int] = (16384, 32768)
KERNEL_MIN_VS_CUDNN = 1.3
KERNEL_MIN_VS_TRITON = 4.0
KERNEL_MIN_COS = 0.99  # a speed-up of an output below this cosine does not count
E2E_PREFILL_LEN = 32768
E2E_MIN_PREFILL_VS_FLASHINFER = 1.4
E2E_MIN_PREFILL_VS_TRITON = 2.5
E2E_DECODE_LENGTHS: tuple[int, int] = (4096, 32768)
E2E_MIN_DECODE_VS_FLASHINFER = 1.0


# --------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    """Print one progress line, flushed (the lead watches the output live)."""
    print(msg, flush=True)


def gpu_slug(name: str | None) -> str:
    """Directory name for a GPU: 'NVIDIA H200' -> 'h200', 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    if not name:
        return "unknown-gpu"
    low = name.lower()
    m = re.search(r"\b([a-z]{1,3}\d{2,4}[a-z]?)\b", low.replace("nvidia", " "))
    if m:
        return m.group(1)
    slug = re.sub(r"[^a-z0-9]+", "-", low).strip("-")
    return slug or "unknown-gpu"


def run_cmd(args: Sequence[str], timeout: float = 15.0, cwd: str | Path | None = None) -> str | None:
    """Run a command and return its stripped stdout, or None when it fails or is missing."""
    try:
        out = subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip()


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a file (identifies e.g. the kernel version that was measured), or None."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def git_info(repo: str | Path = REPO_ROOT) -> dict[str, Any]:
    """Commit and dirty flag of the project checkout (the device copy may carry no .git, or a stale
    one: ``$SGLANG_SAGE_GIT_COMMIT``, set by the sender, wins)."""
    given = os.environ.get("SGLANG_SAGE_GIT_COMMIT")
    if given:
        return {"commit": given, "dirty": None}
    commit = run_cmd(["git", "rev-parse", "HEAD"], cwd=repo)
    if commit is None:
        head = Path(repo) / ".git" / "HEAD"
        try:
            ref = head.read_text().strip()
            if ref.startswith("ref: "):
                commit = (Path(repo) / ".git" / ref[5:]).read_text().strip()
            else:
                commit = ref
        except OSError:
            commit = None
    status = run_cmd(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return {
        "commit": commit or "unknown",
        "dirty": None if status is None else bool(status),
    }


def pkg_version(name: str) -> str | None:
    """Installed version of a distribution, or None (never imports the package)."""
    try:
        return _md.version(name)
    except _md.PackageNotFoundError:
        return None


def nvidia_smi_query(fields: str) -> list[str] | None:
    """First GPU's values of ``nvidia-smi --query-gpu=<fields>``, or None."""
    out = run_cmd(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"])
    if not out:
        return None
    return [x.strip() for x in out.splitlines()[0].split(",")]


def capture_env(argv: Sequence[str] | None = None, extra_files: dict[str, str | Path] | None = None,
                with_torch: bool = True) -> dict[str, Any]:
    """Environment of a run: GPU, driver, library versions, date, command line, git commit.

    ``extra_files`` maps a label to a file whose sha256 is recorded (kernel source, scripts).
    ``with_torch=False`` avoids importing torch (and creating a CUDA context).
    """
    env: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *(sys.argv if argv is None else argv)]),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "git": git_info(),
        "versions": {n: pkg_version(n) for n in (
            "torch", "triton", "sglang", "sglang-kernel", "flashinfer-python", "sageattention",
            "transformers", "numpy", "matplotlib")},
    }
    smi = nvidia_smi_query("name,driver_version,memory.total")
    if smi and len(smi) >= 3:
        env["gpu"] = smi[0]
        env["driver"] = smi[1]
        env["gpu_memory_mib"] = smi[2]
    if with_torch:
        try:
            import torch

            env["torch"] = torch.__version__
            env["torch_cuda"] = torch.version.cuda
            env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
            if torch.cuda.is_available():
                env.setdefault("gpu", torch.cuda.get_device_name(0))
                env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        except Exception as exc:  # noqa: BLE001 - environment capture must never fail
            env["torch_error"] = repr(exc)
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = pkg_version("triton")
    env["gpu_slug"] = gpu_slug(env.get("gpu"))
    env["files_sha256"] = {k: file_sha256(v) for k, v in (extra_files or {}).items()}
    env["env_vars"] = {k: os.environ.get(k) for k in ("PYTHONPATH", "CUDA_VISIBLE_DEVICES", "CUDA_HOME",
                                                       "SGLANG_SAGE_DECODE_BACKEND", "TRITON_INTERPRET")
                       if os.environ.get(k)}
    return env


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file atomically (tmp + rename) so a crash never leaves a half-written result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    """JSON fallback for numpy/torch scalars and paths."""
    for attr in ("item", "tolist"):
        method = getattr(obj, attr, None)
        if callable(method):
            try:
                return method()
            except (TypeError, ValueError, RuntimeError):
                return str(obj)
    return str(obj)


def _clean(obj: Any) -> Any:
    """Replace NaN/inf (invalid JSON) by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dump_json(obj: Any) -> str:
    """Serialize a result document (strict JSON: NaN/inf become null)."""
    return json.dumps(_clean(obj), indent=1, default=_json_default, allow_nan=False) + "\n"


class ResultsFile:
    """A result document that is rewritten to disk after every change (crash-safe, incremental)."""

    def __init__(self, path: str | Path, doc: dict[str, Any]) -> None:
        self.path = Path(path)
        self.doc = doc
        self.doc.setdefault("results", [])
        self.save()

    def add(self, record: dict[str, Any]) -> None:
        """Append one record and save."""
        self.doc["results"].append(record)
        self.save()

    def replace_where(self, key: str, value: Any, record: dict[str, Any]) -> None:
        """Replace records whose ``key`` equals ``value`` by ``record`` (or append) and save."""
        res = [r for r in self.doc["results"] if r.get(key) != value]
        res.append(record)
        self.doc["results"] = res
        self.save()

    def set(self, key: str, value: Any) -> None:
        """Set a top-level key and save."""
        self.doc[key] = value
        self.save()

    def save(self) -> None:
        """Write the document now."""
        atomic_write_text(self.path, dump_json(self.doc))


def load_json(path: str | Path) -> dict[str, Any] | None:
    """Load a result document, or None when it does not exist or is unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------
def fmt(x: Any, spec: str = ".2f", none: str = "–") -> str:
    """Format a number (None/NaN -> a dash)."""
    if x is None:
        return none
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(xf):
        return none
    return format(xf, spec)


def fmt_len(n: float | None) -> str:
    """16384 -> '16K', 1000 -> '1000'."""
    if n is None:
        return "–"
    n = int(n)
    if n % 1024 == 0 and n >= 1024:
        return f"{n // 1024}K"
    return str(n)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are str()-ed and '|' is escaped."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def env_markdown(env: dict[str, Any]) -> str:
    """A short bullet list describing the environment of a run."""
    v = env.get("versions", {})
    git = env.get("git", {})
    items = [
        ("GPU", f"{env.get('gpu', '?')} (sm {env.get('capability', '?')}), driver {env.get('driver', '?')}"),
        ("torch / CUDA / cuDNN",
         f"{env.get('torch', v.get('torch'))} / {env.get('torch_cuda', '?')} / {env.get('cudnn', '?')}"),
        ("triton", env.get("triton", v.get("triton"))),
        ("sglang / flashinfer / sageattention",
         f"{v.get('sglang')} / {v.get('flashinfer-python')} / {v.get('sageattention')}"),
        ("date (UTC)", env.get("date_utc")),
        ("project commit", f"{git.get('commit')}{' (dirty)' if git.get('dirty') else ''}"),
        ("command", f"`{env.get('command')}`"),
    ]
    shas = env.get("files_sha256") or {}
    if shas:
        items.append(("sha256", ", ".join(f"{k} {str(s)[:12]}" for k, s in shas.items())))
    return "".join(f"- {k}: {val}\n" for k, val in items)


# --------------------------------------------------------------------------------------------
# kernel benchmark: ratios, targets, table, plot
# --------------------------------------------------------------------------------------------
def causal_flops(batch: int, hq: int, d: int, lq: int, lkv: int) -> float:
    """FLOPs of bottom-right causal attention, the convention of issue #5.

    Query i (0-based) of a request with prefix p = lkv - lq sits at position p + i and attends to
    p + i + 1 keys; summed over i that is ``lq*lkv - lq*(lq-1)/2`` (query, key) pairs. Each pair
    costs 2*d FLOPs for Q·Kᵀ and 2*d for P·V, so exactly ``4*B*Hq*d*(lq*lkv - lq²/2 + lq/2)``.
    The conventional count used here drops the ``+lq/2`` term (relative size ``1/lq`` for
    prefix 0, ≤0.1 % at 1K): ``4*B*Hq*d*(lq*lkv - lq²/2)``. Softmax (exp) FLOPs are not counted.
    """
    return 4.0 * batch * hq * d * (lq * lkv - lq * lq / 2.0)


def _ok(entry: dict[str, Any] | None) -> bool:
    return bool(entry) and entry.get("status") == "ok" and entry.get("ms") is not None


def kernel_ratios(backends: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Speed-ups of sage over every other backend (time_other / time_sage); None when missing."""
    out: dict[str, float | None] = {}
    sage = backends.get("sage")
    for name in KERNEL_BACKENDS:
        if name == "sage":
            continue
        other = backends.get(name)
        if _ok(sage) and _ok(other) and sage["ms"] > 0:
            out[f"sage_vs_{name}"] = other["ms"] / sage["ms"]
        else:
            out[f"sage_vs_{name}"] = None
    return out


def _cfg_label(r: dict[str, Any]) -> str:
    return (f"{r.get('geometry')} B={r.get('batch')} L={fmt_len(r.get('seq_len'))} "
            f"prefix={round(100 * float(r.get('prefix_frac', 0)))}%")


def evaluate_kernel_targets(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue #5 kernel targets for every shape with L in 16K–32K (status PASS/FAIL/N/A).

    * sage ≥ 1.3× cuDNN SDPA (only where cuDNN ran a native causal mask: a dense-mask cuDNN run
      is no fair baseline and is reported as N/A);
    * sage ≥ 4× SGLang's triton extend kernel.
    A speed-up only PASSes when sage's output cosine vs the exact reference is ≥ KERNEL_MIN_COS.
    """
    lo, hi = KERNEL_TARGET_LENGTHS
    out: list[dict[str, Any]] = []
    for r in results:
        if not (lo <= int(r.get("seq_len", 0)) <= hi):
            continue
        b = r.get("backends", {})
        sage = b.get("sage")
        sage_cos = sage.get("cos") if sage else None
        acc_ok = sage_cos is not None and sage_cos >= KERNEL_MIN_COS
        for other, thr in (("cudnn", KERNEL_MIN_VS_CUDNN), ("triton_extend", KERNEL_MIN_VS_TRITON)):
            ratio = (r.get("ratios") or {}).get(f"sage_vs_{other}")
            t = {"target": f"kernel sage/{other} >= {thr}x", "config": _cfg_label(r), "value": ratio,
                 "threshold": thr, "sage_cos": sage_cos}
            o = b.get(other) or {}
            if other == "cudnn" and _ok(o) and o.get("mask_method") == "dense_mask":
                t.update(status="N/A", detail=f"cuDNN ran with {o.get('mask_method')} (no native "
                                              f"bottom-right causal); ratio {fmt(ratio)}x not comparable")
            elif ratio is None:
                t.update(status="N/A", detail=f"missing: sage={(sage or {}).get('status')}, "
                                              f"{other}={o.get('status')}")
            elif not acc_ok:
                t.update(status="FAIL", detail=f"{ratio:.2f}x but sage cos={fmt(sage_cos, '.4f')} "
                                               f"< {KERNEL_MIN_COS}")
            else:
                t.update(status="PASS" if ratio >= thr else "FAIL", detail=f"{ratio:.2f}x")
            if _ok(sage) and _ok(o) and sage.get("ms_planned"):
                t["value_planned"] = o["ms"] / sage["ms_planned"]
                t["detail"] = f"{t['detail']} (plan prebuilt: {t['value_planned']:.2f}x)"
            out.append(t)
    return out


def target_lines(targets: Sequence[dict[str, Any]]) -> list[str]:
    """One short line per target, e.g. 'PASS kernel sage/cudnn >= 1.3x | llama... | 1.52x'."""
    return [f"{t['status']:<4} {t['target']} | {t['config']} | {t.get('detail', '')}" for t in targets]


def _backend_cell(e: dict[str, Any] | None) -> str:
    if not e:
        return "–"
    st = e.get("status")
    if st == "ok":
        star = "*" if e.get("mask_method") == "dense_mask" else ""
        return f"{fmt(e.get('ms'), '.3f')} ({fmt(e.get('tflops'), '.0f')}){star}"
    if st == "skipped":
        return "skip"
    return "ERR"


def _doc_header(title: str, doc: dict[str, Any]) -> list[str]:
    """Title with the GPU, the environment list and the run's scalar settings (both reports start so)."""
    parts = [f"# {title} ({doc.get('env', {}).get('gpu', '?')})\n\n", env_markdown(doc.get("env", {})), "\n"]
    cfg = doc.get("config", {})
    if cfg:
        parts.append("Settings: " + ", ".join(f"{k}={v}" for k, v in cfg.items()
                                              if not isinstance(v, (dict, list))) + "\n\n")
    return parts


def render_kernel_markdown(doc: dict[str, Any]) -> str:
    """Markdown report of a kernel result document: speed table, accuracy table, targets, notes."""
    results = doc.get("results", [])
    parts = _doc_header("Attention kernel benchmark", doc)
    parts.append("Time in ms (median of `triton.testing.do_bench`), TFLOPS in parentheses "
                 "(causal FLOPs `4·B·Hq·D·(Lq·Lkv − Lq²/2)`). `*`: ran with a dense mask "
                 "(no native bottom-right causal). Ratios are time(other)/time(sage_attn), where "
                 "sage_attn is the whole stand-alone `sage_extend_attention` call (host plan from the "
                 "indptrs, K smoothing, quantization, attention); \"plan prebuilt\" is the per-layer "
                 "call inside SGLang (the plan is built once per batch for all layers).\n\n")
    headers = ["shape", "Lq/Lkv", *[KERNEL_LABELS[b] for b in KERNEL_BACKENDS],
               "sage/cuDNN", "sage/flash", "sage/triton", "sage, plan prebuilt"]
    rows = []
    for r in results:
        b = r.get("backends", {})
        ra = r.get("ratios", {})
        sage = b.get("sage") or {}
        rows.append([_cfg_label(r), f"{fmt_len(r.get('lq'))}/{fmt_len(r.get('lkv'))}",
                     *[_backend_cell(b.get(n)) for n in KERNEL_BACKENDS],
                     fmt(ra.get("sage_vs_cudnn")), fmt(ra.get("sage_vs_flash")),
                     fmt(ra.get("sage_vs_triton_extend")),
                     f"{fmt(sage.get('ms_planned'), '.3f')} ({fmt(sage.get('tflops_planned'), '.0f')})"
                     if sage.get("ms_planned") is not None else "–"])
    parts.append(markdown_table(headers, rows))
    parts.append("\n## Accuracy (cosine vs exact fp32 attention on sampled query rows; "
                 "min over rows×heads in parentheses)\n\n")
    rows = []
    for r in results:
        b = r.get("backends", {})
        cells = []
        for n in KERNEL_BACKENDS:
            e = b.get(n) or {}
            cells.append(f"{fmt(e.get('cos'), '.5f')} ({fmt(e.get('min_cos'), '.4f')})"
                         if e.get("cos") is not None else "–")
        sage = b.get("sage") or {}
        rows.append([_cfg_label(r), *cells, fmt(sage.get("cos_vs_sdpa"), ".5f")])
    parts.append(markdown_table(["shape", *[KERNEL_LABELS[n] for n in KERNEL_BACKENDS],
                                 "sage vs SDPA (full)"], rows))
    targets = doc.get("targets") or evaluate_kernel_targets(results)
    if targets:
        parts.append("\n## Targets (issue #5)\n\n```\n" + "\n".join(target_lines(targets)) + "\n```\n")
    notes = []
    for r in results:
        for n in KERNEL_BACKENDS:
            e = (r.get("backends") or {}).get(n) or {}
            why = e.get("reason") or e.get("error")
            if e.get("status") in ("skipped", "error") and why:
                notes.append(f"- {_cfg_label(r)} {KERNEL_LABELS[n]}: {e['status']}: {str(why)[:300]}")
    if doc.get("notes"):
        notes = [f"- {x}" for x in doc["notes"]] + notes
    if notes:
        # collapse identical reasons to keep the report short
        seen: dict[str, int] = {}
        for x in notes:
            seen[x] = seen.get(x, 0) + 1
        parts.append("\n## Notes, skips and errors\n\n" + "\n".join(seen) + "\n")
    return "".join(parts)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_kernel(doc: dict[str, Any], path: str | Path) -> Path:
    """TFLOPS vs total length, one panel per (geometry, prefix); solid B=1, dashed B>1."""
    plt = _plt()
    results = doc.get("results", [])
    panels = sorted({(r.get("geometry"), float(r.get("prefix_frac", 0))) for r in results},
                    key=lambda x: (str(x[0]), x[1]))
    if not panels:
        panels = [("no data", 0.0)]
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4.2 * nrows), squeeze=False)
    colors = dict(zip(KERNEL_BACKENDS, ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple")))
    for ax, (geo, pf) in zip(axes.flat, panels):
        sub = [r for r in results if r.get("geometry") == geo and float(r.get("prefix_frac", 0)) == pf]
        for batch in sorted({int(r.get("batch", 1)) for r in sub}):
            rs = sorted((r for r in sub if int(r.get("batch", 1)) == batch), key=lambda r: r["seq_len"])
            for n in KERNEL_BACKENDS:
                pts = [(r["seq_len"], r["backends"][n]["tflops"]) for r in rs
                       if _ok(r.get("backends", {}).get(n)) and r["backends"][n].get("tflops")]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", color=colors[n], linestyle="-" if batch == 1 else "--",
                        label=f"{KERNEL_LABELS[n]} B={batch}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("total tokens per sequence (L)")
        ax.set_ylabel("TFLOPS (causal)")
        ax.set_title(f"{geo}, prefix {round(pf * 100)}%")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"Attention kernels on {doc.get('env', {}).get('gpu', '?')} (bf16, causal)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# e2e benchmark: targets, table, plot
# --------------------------------------------------------------------------------------------
def _e2e_by_config(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r.get("config"): r for r in results if r.get("config")}


def e2e_value(rec: dict[str, Any] | None, section: str, length: int, key: str) -> float | None:
    """rec[section][str(length)][key] or None."""
    if not rec:
        return None
    v = ((rec.get(section) or {}).get(str(length)) or {}).get(key)
    return float(v) if v is not None else None


def e2e_lengths(results: Sequence[dict[str, Any]]) -> list[int]:
    """All prompt lengths present in any engine record, sorted."""
    ls: set[int] = set()
    for r in results:
        for sec in ("prefill", "decode"):
            ls.update(int(k) for k in (r.get(sec) or {}))
    return sorted(ls)


def evaluate_e2e_targets(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue #5 e2e targets for each sage configuration present (status PASS/FAIL/N/A).

    * 32K prefill latency ≥ 1.4× faster than flashinfer and ≥ 2.5× faster than triton;
    * decode tokens/s at every measured context in 4K–32K ≥ flashinfer's.
    A sage engine whose backend counters show no 8-bit prefill fails the prefill targets.
    """
    by = _e2e_by_config(results)
    out: list[dict[str, Any]] = []
    lo, hi = E2E_DECODE_LENGTHS
    for sage_cfg in ("sage_attn", "sage_attn+flashinfer"):
        s = by.get(sage_cfg)
        if s is None:
            continue
        stats = (s.get("sage_stats") or {}).get("counters") or {}
        ran_8bit = stats.get("prefill_8bit_batches")
        for base, thr in (("flashinfer", E2E_MIN_PREFILL_VS_FLASHINFER), ("triton", E2E_MIN_PREFILL_VS_TRITON)):
            a = e2e_value(s, "prefill", E2E_PREFILL_LEN, "ms")
            b = e2e_value(by.get(base), "prefill", E2E_PREFILL_LEN, "ms")
            t = {"target": f"e2e {fmt_len(E2E_PREFILL_LEN)} prefill {sage_cfg} vs {base} >= {thr}x",
                 "config": sage_cfg, "threshold": thr}
            if a is None or b is None or a <= 0:
                t.update(status="N/A", value=None, detail=f"missing prefill time ({sage_cfg}={a}, {base}={b})")
            else:
                ratio = b / a
                t["value"] = ratio
                if ran_8bit == 0:
                    t.update(status="FAIL", detail=f"{ratio:.2f}x but the sage counters show no 8-bit prefill")
                else:
                    t.update(status="PASS" if ratio >= thr else "FAIL",
                             detail=f"{ratio:.2f}x ({b:.1f} ms -> {a:.1f} ms)")
            out.append(t)
        for length in sorted(set(e2e_lengths([s])) & set(e2e_lengths([by.get("flashinfer", {})]))):
            if not lo <= length <= hi:
                continue
            a = e2e_value(s, "decode", length, "tok_s")
            b = e2e_value(by.get("flashinfer"), "decode", length, "tok_s")
            t = {"target": f"e2e decode @{fmt_len(length)} {sage_cfg} vs flashinfer >= "
                           f"{E2E_MIN_DECODE_VS_FLASHINFER}x", "config": sage_cfg,
                 "threshold": E2E_MIN_DECODE_VS_FLASHINFER}
            if a is None or b is None or b <= 0:
                t.update(status="N/A", value=None, detail=f"missing decode tok/s ({sage_cfg}={a}, flashinfer={b})")
            else:
                ratio = a / b
                t.update(value=ratio, status="PASS" if ratio >= E2E_MIN_DECODE_VS_FLASHINFER else "FAIL",
                         detail=f"{ratio:.3f}x ({a:.1f} vs {b:.1f} tok/s)")
            out.append(t)
    return out


def render_e2e_markdown(doc: dict[str, Any]) -> str:
    """Markdown report of an e2e result document: prefill/decode tables, ratios, targets, notes."""
    results = doc.get("results", [])
    lengths = e2e_lengths(results)
    order = [c for c in E2E_CONFIGS if any(r.get("config") == c for r in results)]
    order += [r.get("config") for r in results if r.get("config") not in order]
    by = _e2e_by_config(results)
    parts = _doc_header("End-to-end SGLang benchmark", doc)
    parts.append("Prefill: wall latency of `Engine.generate(max_new_tokens=1)`, minimum over repeats "
                 "(fresh random prompt each time, so the radix cache never hits). Decode: "
                 "`(n-1) / (T(n tokens) - T(1 token))` tokens/s at batch 1.\n\n")
    headers = ["config", "status", *[f"prefill {fmt_len(x)} ms" for x in lengths],
               *[f"decode {fmt_len(x)} tok/s" for x in lengths], "startup s", "sage 8-bit prefills"]
    rows = []
    for c in order:
        r = by[c]
        counters = (r.get("sage_stats") or {}).get("counters") or {}
        rows.append([c, r.get("status", "?"),
                     *[fmt(e2e_value(r, "prefill", x, "ms"), ".1f") for x in lengths],
                     *[fmt(e2e_value(r, "decode", x, "tok_s"), ".1f") for x in lengths],
                     fmt(r.get("startup_s"), ".0f"),
                     counters.get("prefill_8bit_batches", "–") if c.startswith("sage") else ""])
    parts.append(markdown_table(headers, rows))
    ratio_rows = []
    for c in order if lengths else []:
        if not c.startswith("sage"):
            continue
        for base in ("flashinfer", "triton"):
            if base not in by:
                continue
            cells = []
            for x in lengths:
                a = e2e_value(by[c], "prefill", x, "ms")
                b = e2e_value(by[base], "prefill", x, "ms")
                cells.append(f"{b / a:.2f}x" if a and b else "–")
            for x in lengths:
                a = e2e_value(by[c], "decode", x, "tok_s")
                b = e2e_value(by[base], "decode", x, "tok_s")
                cells.append(f"{a / b:.3f}x" if a and b else "–")
            ratio_rows.append([f"{c} vs {base}", *cells])
    if ratio_rows:
        parts.append("\n## Speed-ups (prefill: time ratio; decode: tok/s ratio; >1 = sage faster)\n\n")
        parts.append(markdown_table(["pair", *[f"prefill {fmt_len(x)}" for x in lengths],
                                     *[f"decode {fmt_len(x)}" for x in lengths]], ratio_rows))
    targets = doc.get("targets") or evaluate_e2e_targets(results)
    if targets:
        parts.append("\n## Targets (issue #5)\n\n```\n" + "\n".join(target_lines(targets)) + "\n```\n")
    notes = [f"- {x}" for x in doc.get("notes", [])]
    for c in order:
        r = by[c]
        args = r.get("engine_args")
        if args:
            notes.append(f"- {c} engine args: `{json.dumps(args, sort_keys=True)}`")
        for e in r.get("errors", []) or []:
            notes.append(f"- {c}: {str(e)[:400]}")
        if r.get("reason"):
            notes.append(f"- {c}: {r['reason']}")
        mem = r.get("gpu_mem")
        if mem:
            notes.append(f"- {c}: GPU memory used (MiB) before start / after shutdown: "
                         f"{mem.get('before_mib')} / {mem.get('after_shutdown_mib')}"
                         f"{' (NOT FREED)' if mem.get('leak') else ''}")
    if notes:
        parts.append("\n## Notes\n\n" + "\n".join(notes) + "\n")
    return "".join(parts)


def plot_e2e(doc: dict[str, Any], path: str | Path) -> Path:
    """Two panels: prefill latency (ms) and decode tokens/s vs prompt length, one bar per config."""
    plt = _plt()
    results = doc.get("results", [])
    lengths = e2e_lengths(results)
    order = [c for c in E2E_CONFIGS if any(r.get("config") == c for r in results)]
    order += [r.get("config") for r in results if r.get("config") not in order]
    by = _e2e_by_config(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / max(1, len(order))
    for ax, (sec, key, ylabel) in zip(axes, (("prefill", "ms", "prefill latency (ms, lower is better)"),
                                             ("decode", "tok_s", "decode tokens/s (higher is better)"))):
        for i, c in enumerate(order):
            ys = [e2e_value(by[c], sec, x, key) for x in lengths]
            xs = [j + (i - (len(order) - 1) / 2) * width for j in range(len(lengths))]
            vals = [y if y is not None else 0.0 for y in ys]
            bars = ax.bar(xs, vals, width=width, label=c)
            for bar, y in zip(bars, ys):
                if y is not None:
                    ax.annotate(f"{y:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(lengths)))
        ax.set_xticklabels([fmt_len(x) for x in lengths])
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        if order:
            ax.legend(fontsize=7)
    fig.suptitle(f"SGLang Llama-3.1-8B geometry (dummy weights) on {doc.get('env', {}).get('gpu', '?')}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(doc: dict[str, Any], out_dir: str | Path, stem: str) -> dict[str, str]:
    """Write <stem>.json, <stem>.md and <stem>.png (plot errors are recorded, never raised)."""
    out_dir = Path(out_dir)
    paths = {"json": str(out_dir / f"{stem}.json")}
    is_e2e = doc.get("kind") == "e2e"
    md = render_e2e_markdown(doc) if is_e2e else render_kernel_markdown(doc)
    atomic_write_text(out_dir / f"{stem}.md", md)
    paths["md"] = str(out_dir / f"{stem}.md")
    try:
        (plot_e2e if is_e2e else plot_kernel)(doc, out_dir / f"{stem}.png")
        paths["png"] = str(out_dir / f"{stem}.png")
    except Exception as exc:  # noqa: BLE001 - a plot must never lose the measurements
        paths["png_error"] = repr(exc)
    atomic_write_text(out_dir / f"{stem}.json", dump_json(doc))
    return paths
