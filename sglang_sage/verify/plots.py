"""PNG plots of a report: drift over depth, accuracy per context bucket, throughput bars.

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


def plot_buckets(buckets: dict[str, Any], floor: dict[str, Any] | None, thresholds: dict[str, float],
                 path: Path) -> Path:
    """Mean KL and relative perplexity Δ per context bucket, with the thresholds (and noise floor)."""
    plt = _plt()
    names = [n for n in ("short", "medium", "long") if isinstance(buckets.get(n), dict) and "mean_kl" in buckets[n]]
    if not names:
        raise ValueError("no bucket data")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    kl = [buckets[n]["mean_kl"] for n in names]
    dp = [100 * buckets[n]["ppl_rel_delta"] for n in names]
    a1.bar(names, kl, color="tab:blue", label="sage vs baseline")
    a1.axhline(thresholds["kl_max"], color="red", ls="--", label=f"threshold {thresholds['kl_max']}")
    a1.set_ylabel("mean KL (nats/token)")
    a1.set_title("KL(baseline‖sage) per bucket")
    a2.bar(names, dp, color="tab:orange", label="sage vs baseline")
    lim = 100 * thresholds["ppl_max_rel_delta"]
    a2.axhline(lim, color="red", ls="--", label=f"±{lim:g} %")
    a2.axhline(-lim, color="red", ls="--")
    a2.set_ylabel("relative Δ perplexity (%)")
    a2.set_title("perplexity Δ per bucket")
    if floor:
        fx = [n for n in names if isinstance(floor.get(n), dict) and "mean_kl" in floor[n]]
        if fx:
            a1.plot(fx, [floor[n]["mean_kl"] for n in fx], "k_", ms=20, mew=2, label="noise floor (re-run)")
            a2.plot(fx, [100 * floor[n]["ppl_rel_delta"] for n in fx], "k_", ms=20, mew=2, label="noise floor")
    for a in (a1, a2):
        a.grid(True, axis="y", alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(rows_b: list[dict], rows_s: list[dict], path: Path) -> Path:
    """Grouped bars: the relevant tokens/s per shape and batch, and TTFT, for both backends."""
    plt = _plt()
    by_s = {(r["shape"], r["batch"]): r for r in rows_s if "wall_s" in r}
    keys = [(r["shape"], r["batch"]) for r in rows_b if "wall_s" in r and (r["shape"], r["batch"]) in by_s]
    if not keys:
        raise ValueError("no throughput pairs")
    by_b = {(r["shape"], r["batch"]): r for r in rows_b}
    labels = [f"{s}\nb={b}" for s, b in keys]
    metric = ["input_tok_s" if s == "prefill" else "output_tok_s" for s, _ in keys]
    x = range(len(keys))
    w = 0.38
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.bar([i - w / 2 for i in x], [by_b[k][m] for k, m in zip(keys, metric)], w, label="baseline")
    a1.bar([i + w / 2 for i in x], [by_s[k][m] for k, m in zip(keys, metric)], w, label="sage_attn")
    a1.set_xticks(list(x), labels)
    a1.set_ylabel("tokens/s (prefill: input, decode: output)")
    a1.set_yscale("log")
    a1.set_title("throughput")
    t_b = [1000 * (by_b[k]["ttft_s"] or 0) for k in keys]
    t_s = [1000 * (by_s[k]["ttft_s"] or 0) for k in keys]
    a2.bar([i - w / 2 for i in x], t_b, w, label="baseline")
    a2.bar([i + w / 2 for i in x], t_s, w, label="sage_attn")
    a2.set_xticks(list(x), labels)
    a2.set_ylabel("TTFT (ms)")
    a2.set_title("time to first token")
    for a in (a1, a2):
        a.grid(True, axis="y", alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(tables: dict[str, Any], thresholds: dict[str, float], out_dir: Path) -> dict[str, str]:
    """Every plot whose data exists; name -> file name, or 'error: ...'."""
    jobs = {
        "drift_over_depth.png": lambda p: plot_drift(tables.get("drift") or {}, p),
        "context_buckets.png": lambda p: plot_buckets(tables.get("buckets") or {}, tables.get("noise_floor"),
                                                      thresholds, p),
        "throughput.png": lambda p: plot_throughput((tables.get("throughput") or {}).get("baseline") or [],
                                                    (tables.get("throughput") or {}).get("sage") or [], p),
    }
    out: dict[str, str] = {}
    for name, fn in jobs.items():
        try:
            fn(out_dir / name)
            out[name] = name
        except Exception as e:  # noqa: BLE001 - plots are documentation, not verdicts
            out[name] = f"error: {type(e).__name__}: {e}"
    return out
