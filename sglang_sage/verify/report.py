"""report.json (everything, machine-readable) and report.md (a PR-ready summary) of one run.

Both are rewritten after every stage, so an interrupted run still leaves what it measured.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .checks import THRESHOLDS

STATUS_MARK = {"pass": "✅ pass", "fail": "❌ fail", "error": "⚠️ error", "n/a": "➖ n/a", "skipped": "⏭ skipped",
               "pending": "… pending"}

NOTES = [
    "**KL from top-K.** SGLang returns the top-K log-probs per prompt position, not full logits. KL(baseline‖sage) "
    "is computed over the cells {each token in both top-K sets} + {all other tokens}; every cell's mass is known "
    "exactly (the rest cell is 1 − Σ), nothing is imputed, and by the data-processing inequality this is a lower "
    "bound of the full-vocabulary KL. The drift check reports the full-vocabulary KL of the same model (HF, no "
    "top-K) for comparison. Max |Δ log-prob| is taken over tokens in both top-K sets (log-probs are logits shifted "
    "by one constant per position).",
    "**Perplexity.** Sliding windows of W tokens with stride S over the corpus; only the last S tokens of each "
    "window are scored (the first window scores all but its first token), so every scored token is scored once "
    "and sees ≥ W−S tokens of context. Perplexity = exp(mean NLL) ≥ 1 by construction (asserted).",
    "**Buckets.** short: W=256, S=128 (context 128–255); medium: W=2048, S=512 (context 1536–2047); long: "
    "W=context−64, S=1024 (context ≥ 7K). The same windows and token ids go to both backends, each bucket after "
    "flush_cache (every window is a cold prefill).",
    "**Noise floor.** The baseline's teacher-forced requests are run a second time on the same engine; its KL and "
    "perplexity Δ show what re-run variance alone measures (it is not counted as drift).",
    "**Passkey.** A 5-digit key hidden at several depths of filler text; greedy answer; a hit is the key as a "
    "whole run of digits in the answer.",
    "**Throughput.** Median wall time of repeated batched Engine.generate calls after a warm-up of the same shape, "
    "radix cache flushed before each run, distinct prompts. TTFT: mean per-request latency of a 1-output-token "
    "request of the same shape. Decode of sage_attn is delegated (to the baseline's backend by default), so decode "
    "numbers mainly show that nothing regressed.",
    "**Drift.** HF transformers model (bf16) with a registered attention function: one run with torch SDPA in "
    "every layer, one with the sage_attn kernel in every layer; per layer the relative L2 / cosine between the two "
    "runs (propagated) and, inside the sage run, sage vs SDPA on identical inputs (local) and SDPA-bf16 vs fp32 "
    "(the floor every bf16 backend has).",
]


def write_json(report: dict[str, Any], path: Path) -> None:
    """Atomic write, NaN/inf as strings (JSON has none)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(report), indent=1, default=str, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def fmt(v: Any, digits: int = 4) -> str:
    """Numbers for humans: small values in scientific notation, booleans as yes/no."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.2e}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(c) for c in r) + " |")
    return "\n".join(lines)


def _crit_result(c: dict) -> str:
    if c.get("passed") is None:
        return "info"
    return "✅" if c["passed"] else "❌"


def _threshold(c: dict) -> str:
    if c.get("op") is None:
        return str(c["threshold"]) if c.get("threshold") is not None else ""
    return f"{c['op']} {fmt(c['threshold'])}"


def render_md(report: dict[str, Any]) -> str:
    env = report.get("environment") or {}
    gpu = (env.get("gpu") or {}).get("name", "?")
    pk = env.get("packages") or {}
    checks = report.get("checks") or []
    counts = {s: sum(1 for c in checks if c["status"] == s) for s in STATUS_MARK}
    verdict = report.get("verdict", "pending")
    out = [f"# sage_attn verification — SGLang {pk.get('sglang') or '?'} on {gpu}", ""]
    out.append(f"**Verdict: {verdict.upper()}** — " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    cfg = report.get("config") or {}
    out += ["", f"- model: `{(report.get('model') or {}).get('path')}` ({(report.get('model') or {}).get('source')})",
            f"- baseline: `{cfg.get('baseline_backend')}` vs `{cfg.get('sage_backend')}` "
            f"(sage decode delegated to `{cfg.get('sage_decode_backend')}`); load format `{cfg.get('load_format')}`"
            f"{'; quick mode' if cfg.get('quick') else ''}",
            f"- command: `{env.get('command')}`",
            f"- date: {env.get('date_utc')}; commit `{(env.get('git') or {}).get('commit')}`"
            f"{' (dirty tree)' if (env.get('git') or {}).get('dirty') else ''}", ""]
    out += ["## Checks", "", md_table(["check", "result", "error"],
                                      [[c["title"], STATUS_MARK.get(c["status"], c["status"]), c.get("error") or ""]
                                       for c in checks]), ""]
    out += ["## Criteria", ""]
    rows = []
    for c in checks:
        for cr in c.get("criteria") or []:
            name = cr["name"] + (f" ({cr['unit']})" if cr.get("unit") else "")
            rows.append([c["id"], name, cr["value"], _threshold(cr), _crit_result(cr), cr.get("note") or ""])
    out += [md_table(["check", "criterion", "measured", "threshold", "result", "note"], rows), ""]
    out += _bucket_section(report)
    out += _throughput_section(report)
    out += _memory_section(report)
    out += _drift_section(report)
    plots = report.get("plots") or {}
    if plots:
        out += ["## Plots", ""]
        for name, v in plots.items():
            out.append(f"![{name}]({name})" if v == name else f"- {name}: {v}")
        out.append("")
    out += ["## Thresholds", "", md_table(["name", "value", "unit", "why"],
                                          [[k, (report.get("thresholds") or {}).get(k, v[0]), v[1], v[2]]
                                           for k, v in THRESHOLDS.items()]), ""]
    out += ["## Environment", "", md_table(["what", "value"], _env_rows(report)), ""]
    stages = report.get("stages") or {}
    if stages:
        out += ["## Stages", "", md_table(["stage", "status", "seconds", "log"],
                                          [[k, v.get("status"), v.get("seconds"), v.get("log")]
                                           for k, v in stages.items()]), ""]
    out += ["## Method", ""] + [f"- {n}" for n in NOTES] + [""]
    return "\n".join(out)


def _bucket_section(report: dict) -> list[str]:
    t = report.get("tables") or {}
    b = t.get("buckets") or {}
    if not b:
        return []
    pk = t.get("passkey") or {}
    pkb, pks = pk.get("baseline") or {}, pk.get("sage") or {}
    floor = t.get("noise_floor") or {}
    rows = []
    for name in ("short", "medium", "long", "pooled"):
        r = b.get(name)
        if not isinstance(r, dict):
            continue
        if "error" in r:
            rows.append([name, r["error"]] + [""] * 9)
            continue
        pb, ps = pkb.get(name) or {}, pks.get(name) or {}
        rows.append([name, r.get("positions"), r.get("ppl_baseline"), r.get("ppl_sage"),
                     None if r.get("ppl_rel_delta") is None else f"{100 * r['ppl_rel_delta']:+.4f} %",
                     r.get("mean_kl"), r.get("top1_agreement"), r.get("max_abs_dlogprob"),
                     (floor.get(name) or {}).get("mean_kl"),
                     f"{pb['hits']}/{pb['trials']}" if pb else None, f"{ps['hits']}/{ps['trials']}" if ps else None])
    return ["## Accuracy per context bucket", "",
            md_table(["bucket", "scored tokens", "ppl baseline", "ppl sage", "Δ ppl", "mean KL", "top-1",
                      "max Δlogprob", "KL noise floor", "passkey baseline", "passkey sage"], rows), ""]


def _throughput_section(report: dict) -> list[str]:
    t = (report.get("tables") or {}).get("throughput") or {}
    rb, rs = t.get("baseline") or [], t.get("sage") or []
    if not rb and not rs:
        return []
    by_s = {(r.get("shape"), r.get("batch")): r for r in rs}
    rows = []
    for r in rb:
        s = by_s.get((r.get("shape"), r.get("batch"))) or {}
        if "wall_s" not in r or "wall_s" not in s:
            rows.append([r.get("shape"), r.get("batch"), r.get("skipped") or s.get("skipped") or "missing"] + [""] * 7)
            continue
        rows.append([r["shape"], r["batch"], f"{r['input_len']} → {r['output_len']}",
                     r["input_tok_s"], s["input_tok_s"], r["output_tok_s"], s["output_tok_s"],
                     None if r["ttft_s"] is None else f"{1000 * r['ttft_s']:.1f} ms",
                     None if s["ttft_s"] is None else f"{1000 * s['ttft_s']:.1f} ms",
                     f"{s['wall_s'] and r['wall_s'] / s['wall_s']:.3f}×"])
    return ["## Throughput", "", md_table(["shape", "batch", "in → out tokens", "in tok/s baseline", "in tok/s sage",
                                           "out tok/s baseline", "out tok/s sage", "TTFT baseline", "TTFT sage",
                                           "speed-up"], rows), ""]


def _memory_section(report: dict) -> list[str]:
    m = (report.get("tables") or {}).get("memory") or {}
    b, s = m.get("baseline") or {}, m.get("sage") or {}
    if not b and not s:
        return []
    keys = ["max_total_num_tokens", "engine_footprint_mib", "peak_used_mib", "peak_extra_over_start_mib",
            "torch_cross_check_footprint_mib"]
    rows = [[k, b.get(k), s.get(k)] for k in keys]
    ub, us = b.get("memory_usage_gb") or {}, s.get("memory_usage_gb") or {}
    for k in ("weight", "kvcache", "token_capacity"):
        if k in ub or k in us:
            rows.append([f"SGLang memory_usage.{k}", ub.get(k), us.get(k)])
    return ["## Memory", "", md_table(["quantity", "baseline", "sage"], rows), ""]


def _drift_section(report: dict) -> list[str]:
    d = (report.get("tables") or {}).get("drift") or {}
    lengths = d.get("lengths") or {}
    if not lengths:
        return []
    rows = []
    for L, r in sorted(lengths.items(), key=lambda kv: int(kv[0])):
        rows.append([L, max(r["local_rel_l2"]), min(r["local_cos"]), max(r["bf16_vs_fp32_rel_l2"]),
                     max(r["sage_vs_fp32_rel_l2"]), r["propagated_rel_l2"][-1], r["propagated_cos"][-1],
                     r["logits"]["full_kl_mean"], r["logits"]["top1_agreement"]])
    return ["## Activation drift (HF model, all layers)", "",
            md_table(["tokens", "max local rel-L2", "min local cos", "bf16 floor (max)", "sage vs fp32 (max)",
                      "last layer propagated rel-L2", "last layer cos", "logits KL (full vocab)", "logits top-1"],
                     rows), ""]


def _env_rows(report: dict) -> list[list[Any]]:
    env = report.get("environment") or {}
    gpu = env.get("gpu") or {}
    rows = [["GPU", gpu.get("name")], ["driver", gpu.get("driver")], ["CUDA (torch)", gpu.get("torch_cuda")],
            ["python", env.get("python")]]
    rows += [[k, v] for k, v in (env.get("packages") or {}).items() if v]
    ov = env.get("overlay") or {}
    if ov.get("checked"):
        same = "yes" if ov.get("identical") else f"NO (differ: {ov.get('differ')}, missing: {ov.get('missing')})"
        rows.append(["installed sage_attn files = this checkout's overlay", same])
    model = report.get("model") or {}
    rows += [["model", model.get("path")], ["model source", model.get("source")]]
    corpus = report.get("corpus") or {}
    if corpus:
        rows.append(["corpus", f"{corpus.get('name')} sha256 {str(corpus.get('sha256'))[:16]}…, "
                               f"{corpus.get('tokens')} tokens"])
    return rows
