"""PNG plots of a report: drift over depth, accuracy per context bucket (sage, floor, compared
configurations), throughput bars (the model and, with --speed-model, the full-size geometry).

matplotlib (Agg backend) is imported lazily; a missing or failing plot is recorded in the report,
it never fails the verification.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_drift(drift: dict[str, Any], path: Path) -> Path:
    """Relative L2 of the attention output per layer: propagated, local (kernel only), bf16 floor."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lengths = sorted(drift.get("lengths", {}).items(), key=lambda kv: int(kv[0]))
    if not lengths:
        raise ValueError("no drift data")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (L, r) in enumerate(lengths):
        col = colors[i % len(colors)]
        ax.plot(r["layers"], r["propagated_rel_l2"], "-o", ms=3, color=col, label=f"L={L} propagated")
        ax.plot(r["layers"], r["local_rel_l2"], "--", color=col, label=f"L={L} local (same inputs)")
        ax.plot(r["layers"], r["bf16_vs_fp32_rel_l2"], ":", color=col, alpha=0.6, label=f"L={L} bf16 SDPA vs fp32")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("relative L2 error of attention output")
    ax.set_title("sage_attn vs bf16 SDPA: drift over depth")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_buckets(buckets: dict[str, Any], floor: dict[str, Any] | None, thresholds: dict[str, float], path: Path,
                 compare: dict[str, dict] | None = None, kl_limits: dict[str, float] | None = None,
                 floor_name: str = "floor") -> Path:
    """Per context bucket: top-1 agreement, mean KL and |Δ perplexity| vs the baseline, for sage, the floor
    backend and the compared configurations side by side, with the limits the floor sets."""
    plt = _plt()
    names = [n for n in ("short", "medium", "long") if isinstance(buckets.get(n), dict) and "mean_kl" in buckets[n]]
    if not names:
        raise ValueError("no bucket data")
    series = [("sage_attn", buckets)]
    if floor:
        series.append((f"floor: {floor_name}", floor))
    series += list((compare or {}).items())
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    width = 0.8 / len(series)
    x = list(range(len(names)))
    panels = (("top1_agreement", 100.0, "top-1 agreement with the baseline (%)"),
              ("mean_kl", 1.0, "mean KL(baseline‖config) (nats/token)"),
              ("ppl_rel_delta", 100.0, "|Δ perplexity| (%)"))
    for ax, (key, scale, title) in zip(axes, panels):
        for i, (label, tab) in enumerate(series):
            vals = [(tab or {}).get(n, {}).get(key) if isinstance((tab or {}).get(n), dict) else None for n in names]
            xs = [xi + (i - (len(series) - 1) / 2) * width for xi, v in zip(x, vals) if v is not None]
            ys = [abs(v) * scale for v in vals if v is not None]
            if xs:
                ax.bar(xs, ys, width, label=label)
        ax.set_xticks(x, names)
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    if floor:
        gap = thresholds["top1_max_gap_to_floor"]
        fx = [i for i, n in enumerate(names) if isinstance(floor.get(n), dict) and "top1_agreement" in floor[n]]
        axes[0].plot(fx, [100 * floor[names[i]]["top1_agreement"] - gap for i in fx], "r_", ms=24, mew=2,
                     label=f"limit: floor − {gap:g} point{'' if gap == 1 else 's'}")
        shown = [100 * tab[n]["top1_agreement"] for _, tab in series for n in names
                 if isinstance((tab or {}).get(n), dict) and "top1_agreement" in tab[n]]
        lo = min(shown + [100 * floor[names[i]]["top1_agreement"] - gap for i in fx])
        axes[0].set_ylim(max(0.0, lo - 2.0), 100.0)
    lim = [i for i, n in enumerate(names) if (kl_limits or {}).get(n) is not None]
    if lim:
        axes[1].plot(lim, [kl_limits[names[i]] for i in lim], "r_", ms=24, mew=2,
                     label=f"limit: max({thresholds['kl_floor_factor']:g}× floor, {thresholds['kl_min_limit']:g})")
    axes[2].axhline(100 * thresholds["ppl_max_rel_delta"], color="red", ls="--",
                    label=f"limit {100 * thresholds['ppl_max_rel_delta']:g} %")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(table: dict[str, Any], path: Path, title: str = "throughput",
                    min_ratio: float | None = None) -> Path:
    """Grouped bars per (shape, batch): the metric that matters (prefill: input tok/s, decode: output tok/s)
    relative to the baseline, for sage and every compared configuration; TTFT beside it."""
    plt = _plt()
    rows_b = [r for r in table.get("baseline") or [] if "wall_s" in r]
    series = [("sage_attn", table.get("sage") or [])] + list((table.get("compare") or {}).items())
    series = [(name, {(r["shape"], r["batch"]): r for r in rows if "wall_s" in r}) for name, rows in series]
    keys = [(r["shape"], r["batch"]) for r in rows_b if any((r["shape"], r["batch"]) in by for _, by in series)]
    if not keys:
        raise ValueError("no throughput pairs")
    by_b = {(r["shape"], r["batch"]): r for r in rows_b}
    labels = [f"{s}\nb={b}" for s, b in keys]
    metric = ["input_tok_s" if (by_b[k].get("kind") or k[0]) == "prefill" else "output_tok_s" for k in keys]
    width = 0.8 / (len(series) + 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(10, 1.6 * len(keys) + 4), 4))
    allc = [("baseline", by_b)] + series
    for i, (name, by) in enumerate(allc):
        off = (i - len(allc) / 2 + 0.5) * width
        xs = [j + off for j, k in enumerate(keys) if k in by]
        a1.bar(xs, [by[k][m] / by_b[k][m] for k, m in zip(keys, metric) if k in by], width, label=name)
        a2.bar(xs, [1000 * (by[k]["ttft_s"] or 0) for k in keys if k in by], width, label=name)
    a1.axhline(1.0, color="gray", lw=0.8)
    if min_ratio is not None:
        a1.axhline(min_ratio, color="red", ls="--", lw=1, label=f"sage limit {min_ratio:g}×")
    for a in (a1, a2):
        a.set_xticks(list(range(len(keys))), labels, fontsize=7)
        a.grid(True, axis="y", alpha=0.3)
        a.legend(fontsize=7)
    a1.set_ylabel("tok/s ÷ baseline (prefill: in, decode: out)")
    a1.set_title(title)
    a2.set_ylabel("TTFT (ms)")
    a2.set_yscale("log")
    a2.set_title("time to first token")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(tables: dict[str, Any], thresholds: dict[str, float], out_dir: Path) -> dict[str, str]:
    """Every plot whose data exists; name -> file name, or 'error: ...'."""
    jobs = {
        "drift_over_depth.png": lambda p: plot_drift(tables.get("drift") or {}, p),
        "context_buckets.png": lambda p: plot_buckets(tables.get("buckets") or {}, tables.get("floor"), thresholds, p,
                                                      tables.get("compare"), tables.get("kl_limits"),
                                                      tables.get("floor_backend") or "floor"),
        "throughput.png": lambda p: plot_throughput(tables.get("throughput") or {}, p,
                                                    f"throughput: {(tables.get('throughput') or {}).get('model')}",
                                                    thresholds.get("prefill_min_ratio")),
    }
    if tables.get("speed"):
        jobs["throughput_speed_model.png"] = lambda p: plot_throughput(
            tables["speed"], p, f"throughput: {tables['speed'].get('model')} (dummy weights)",
            thresholds.get("prefill_min_ratio"))
    out: dict[str, str] = {}
    for name, fn in jobs.items():
        try:
            fn(out_dir / name)
            out[name] = name
        except Exception as e:  # noqa: BLE001 - plots are documentation, not verdicts
            out[name] = f"error: {type(e).__name__}: {e}"
    return out
