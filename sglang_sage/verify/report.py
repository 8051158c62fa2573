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
    "**Floor.** A second exact bf16 backend (`--floor-backend`, default flashinfer) is measured against the baseline "
    "on exactly the positions and windows sage is measured on (same token ids, checked per bucket). Its top-1 "
    "agreement, KL and perplexity Δ are what a change of exact kernel alone costs; checks 2, 3 and 7 judge sage "
    "against them: top-1 at most `top1_max_gap_to_floor` points below the floor's, mean KL ≤ max(`kl_floor_factor` × "
    "floor, `kl_min_limit`), |Δ perplexity| ≤ `ppl_max_rel_delta` (absolute, floor shown beside it).",
    "**Compared configurations.** `--compare-config BACKEND+KV_DTYPE` (e.g. fa3 with an FP8 KV cache, SGLang's own "
    "8-bit option) is measured like sage on the same positions and prompts and shown beside it; it is not judged.",
    "**Passkey.** A 5-digit key hidden at several depths of filler text; greedy answer; a hit is the key as a "
    "whole run of digits in the answer.",
    "**Throughput.** Median wall time of repeated batched Engine.generate calls after a warm-up of the same shape, "
    "radix cache flushed before each run, distinct prompts. TTFT: mean per-request latency of a 1-output-token "
    "request of the same shape. Decode of sage_attn is delegated (to the baseline's backend by default), so decode "
    "numbers mainly show that nothing regressed. Warm-up: the batch, or as many prompts as hold 64K tokens. With "
    "`--speed-model` the same is measured on a full-size geometry with dummy weights (Llama-3.1-8B: 32 q / 8 kv "
    "heads of 128, 32 layers) at 4K and 32K prompts, batch 1 and 32; prefill rows repeat until ~300K prompt "
    "tokens were timed (at most 3, at least 1 run), decode rows run once where their KV fits.",
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
    speed = report.get("speed_model") or {}
    out += ["", f"- model: `{(report.get('model') or {}).get('path')}` ({(report.get('model') or {}).get('source')})",
            f"- baseline: `{cfg.get('baseline_backend')}` vs `{cfg.get('sage_backend')}` "
            f"(sage decode delegated to `{cfg.get('sage_decode_backend')}`); load format `{cfg.get('load_format')}`"
            f"{'; quick mode' if cfg.get('quick') else ''}",
            f"- floor (another exact backend vs the baseline, same positions): `{cfg.get('floor_backend', '—')}`",
            f"- compared configurations: {', '.join(f'`{x}`' for x in cfg.get('compare_configs') or []) or 'none'}",
            "- speed model (check 4, dummy weights): " + (f"`{speed.get('path')}` ({speed.get('source')})"
                                                           if speed else "none"),
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
            rows.append([c["id"], name, cr["value"], cr.get("floor"), _threshold(cr), _crit_result(cr),
                         cr.get("note") or ""])
    floor_name = cfg.get("floor_backend") or "floor"
    out += [md_table(["check", "criterion", "measured", f"floor ({floor_name})", "threshold", "result", "note"],
                     rows), ""]
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


def _pct(v: Any) -> str | None:
    return None if v is None else f"{100 * v:.2f} %"


def _dppl(r: dict) -> str | None:
    return None if r.get("ppl_rel_delta") is None else f"{100 * r['ppl_rel_delta']:+.4f} %"


def _bucket_section(report: dict) -> list[str]:
    """Per bucket: sage vs baseline beside floor vs baseline (top-1, mean/p99 KL, Δ perplexity), the KL limit
    the floor sets, passkey; then the compared configurations on the same positions."""
    t = report.get("tables") or {}
    b = t.get("buckets") or {}
    if not b:
        return []
    pk = t.get("passkey") or {}
    pkb, pks = pk.get("baseline") or {}, pk.get("sage") or {}
    floor = t.get("floor") or {}
    limits = t.get("kl_limits") or {}
    fname = t.get("floor_backend") or "floor"
    rows = []
    for name in ("short", "medium", "long", "pooled"):
        r = b.get(name)
        if not isinstance(r, dict):
            continue
        if "error" in r:
            rows.append([name, r["error"]] + [""] * 12)
            continue
        f = floor.get(name) if isinstance(floor.get(name), dict) and "mean_kl" in floor.get(name, {}) else {}
        pb, ps = pkb.get(name) or {}, pks.get(name) or {}
        rows.append([name, r.get("positions"), _pct(r.get("top1_agreement")), _pct(f.get("top1_agreement")),
                     r.get("mean_kl"), f.get("mean_kl"), limits.get(name), r.get("p99_kl"), f.get("p99_kl"),
                     _dppl(r), _dppl(f), f"{pb['hits']}/{pb['trials']}" if pb else None,
                     f"{ps['hits']}/{ps['trials']}" if ps else None])
    out = ["## Accuracy per context bucket", "",
           f"sage vs the baseline beside the floor (`{fname}`) vs the baseline, on the same positions.", "",
           md_table(["bucket", "scored tokens", "top-1 sage", "top-1 floor", "mean KL sage", "mean KL floor",
                     "KL limit", "p99 KL sage", "p99 KL floor", "Δ ppl sage", "Δ ppl floor", "passkey baseline",
                     "passkey sage"], rows), ""]
    compare = t.get("compare") or {}
    if compare:
        rows = []
        pkc = pk.get("compare") or {}
        for cname, tab in compare.items():
            for name in ("short", "medium", "long", "pooled"):
                r = (tab or {}).get(name)
                if not isinstance(r, dict):
                    continue
                if "error" in r:
                    rows.append([cname, name, r["error"]] + [""] * 5)
                    continue
                pc = (pkc.get(cname) or {}).get(name) or {}
                rows.append([cname, name, r.get("positions"), _pct(r.get("top1_agreement")), r.get("mean_kl"),
                             r.get("p99_kl"), _dppl(r), f"{pc['hits']}/{pc['trials']}" if pc else None])
            if not tab:
                rows.append([cname, "—", "not measured (see its stage)"] + [""] * 5)
        out += ["### Compared configurations (vs the baseline, same positions)", "",
                md_table(["configuration", "bucket", "scored tokens", "top-1", "mean KL", "p99 KL", "Δ ppl",
                          "passkey"], rows), ""]
    return out


def _tp_value(r: dict | None, metric: str) -> Any:
    return None if not r or "wall_s" not in r else r[metric]


def _ratio(a: Any, b: Any) -> str | None:
    return f"{a / b:.3f}×" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _throughput_table(title: str, t: dict) -> list[str]:
    """One model's rows: baseline, sage and every compared configuration, the metric that matters per shape
    (prefill: input tok/s, decode: output tok/s), ratios to the baseline, TTFT."""
    rb, rs = t.get("baseline") or [], t.get("sage") or []
    comp = t.get("compare") or {}
    if not rb and not rs and not any(comp.values()):
        return []
    def key(r: dict) -> tuple:
        return (r.get("shape"), r.get("batch"))

    by = {"baseline": {key(r): r for r in rb}, "sage": {key(r): r for r in rs}}
    by.update({name: {key(r): r for r in rows} for name, rows in comp.items()})
    keys: list = []
    for rows in by.values():
        keys += [k for k in rows if k not in keys]
    headers = ["shape", "batch", "in → out", "metric", "baseline", "sage", "sage/baseline"]
    for name in comp:
        headers += [name, f"{name}/baseline", f"sage/{name}"]
    headers += ["TTFT baseline", "TTFT sage", "note"]
    table = []
    for k in keys:
        ref = next(rows[k] for rows in by.values() if k in rows)
        kind = ref.get("kind") or ref.get("shape")
        metric = "input_tok_s" if kind == "prefill" else "output_tok_s"
        b, s = by["baseline"].get(k), by["sage"].get(k)
        vb, vs = _tp_value(b, metric), _tp_value(s, metric)
        row = [k[0], k[1], f"{ref.get('input_len')} → {ref.get('output_len')}",
               "in tok/s" if metric == "input_tok_s" else "out tok/s", vb, vs, _ratio(vs, vb)]
        for name in comp:
            vc = _tp_value(by[name].get(k), metric)
            row += [vc, _ratio(vc, vb), _ratio(vs, vc)]
        skipped = "; ".join(f"{n}: {rows[k]['skipped']}" for n, rows in by.items()
                            if k in rows and rows[k].get("skipped"))
        row += [_ms(_tp_value(b, "ttft_s")), _ms(_tp_value(s, "ttft_s")), skipped]
        table.append(row)
    return [f"### {title}", "", md_table(headers, table), ""]


def _ms(v: Any) -> str | None:
    return None if v is None else f"{1000 * v:.1f} ms"


def _throughput_section(report: dict) -> list[str]:
    t = report.get("tables") or {}
    out = _throughput_table(f"{(t.get('throughput') or {}).get('model') or 'model'}", t.get("throughput") or {})
    speed = t.get("speed")
    if speed:
        out += _throughput_table(f"{speed.get('model')} (dummy weights)", speed)
        if speed.get("left_out"):
            out += ["Left out of the speed plan: " + "; ".join(speed["left_out"]), ""]
    return (["## Throughput", ""] + out) if out else []


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
