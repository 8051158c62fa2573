"""From raw worker results to checks: each criterion = measured value, threshold, pass/fail.

Pure Python + numpy (reads the workers' JSON/npz), so it is tested on CPU with fabricated results.
A check passes when all its criteria pass; it is ``error`` when something it needs was not measured
(never silently ``pass``), and ``n/a`` when it cannot apply (accuracy checks on dummy weights).
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics, passkey
from .workload import BUCKETS

CHECK_IDS = ("runtime_flag", "logits", "perplexity", "throughput", "memory", "drift", "context", "determinism")
CHECK_TITLES = {
    "runtime_flag": "1. runtime flag (default off; Engine + HTTP server; 8-bit kernels proven by counters)",
    "logits": "2. logits, teacher-forced (all buckets pooled), against the floor backend",
    "perplexity": "3. perplexity, sliding window (medium window)",
    "throughput": "4. throughput",
    "memory": "5. memory footprint",
    "drift": "6. activation precision drift over depth",
    "context": "7. accuracy per context bucket (+ passkey), against the floor backend",
    "determinism": "determinism (greedy, repeats and cache states)",
}
ACCURACY_CHECKS = ("logits", "perplexity", "drift", "context")

# name: (default, unit, why)
THRESHOLDS: dict[str, tuple[float, str, str]] = {
    "top1_max_gap_to_floor": (1.0, "points",
                              "top-1 agreement with the baseline may be at most this many percentage points below the "
                              "floor's (another exact bf16 backend, same positions, same run): two exact kernels "
                              "already disagree on 1.5-2 % of SmolLM2's arg-max decisions (near-ties compounding over "
                              "30 layers), so an absolute 99 % is reachable by no kernel but the baseline itself"),
    "kl_floor_factor": (3.0, "x floor",
                        "mean KL(baseline‖sage) at most this multiple of KL(baseline‖floor): the 8-bit path may move "
                        "the distribution a few times as far as a change of exact kernel does, not more"),
    "kl_min_limit": (1e-3, "nats/token",
                     "the KL limit is max(factor x floor, this): a floor near 0 must not demand bit-identical "
                     "kernels; 1e-3 nats/token bounds the expected extra log-loss to 0.1 %"),
    "max_dlogprob_max": (2.0, "nats", "gross-error guard on the largest single log-prob change among shared top-K"),
    "ppl_max_rel_delta": (0.002, "relative",
                          "maintainer's bar: perplexity within 0.2 % of the baseline (absolute, not relative to the "
                          "floor; the floor's Δ is shown beside it)"),
    "passkey_max_drop": (0.1, "accuracy", "sage may miss at most one trial in ten more than the baseline per bucket"),
    "prefill_min_ratio": (0.95, "sage/baseline",
                          "issue #11: an 8-bit backend is chosen for speed, so input tok/s must reach 0.95x the "
                          "baseline on every row (SmolLM2 and, with --speed-model, the full-size geometry)"),
    "decode_min_ratio": (0.95, "sage/baseline",
                         "decode is delegated to the baseline's kernel: output tok/s within 5 % of the baseline"),
    "kv_capacity_min_ratio": (0.99, "sage/baseline", "8-bit attention must not shrink the KV pool (same cache dtype)"),
    "peak_extra_max_mib": (512.0, "MiB", "scratch for INT8 K/fp16 V copies is per layer and small"),
    "drift_local_max_rel_l2": (0.10, "relative L2",
                               "one layer's 8-bit attention output vs bf16 SDPA on identical inputs: "
                               "INT8/fp16 split QK with per-row scales gives ~1 % (cos ≥ 0.999); "
                               "10 % flags a broken kernel"),
    "drift_propagated_max_rel_l2": (0.25, "relative L2", "last layer after 30 layers of each run feeding itself"),
    "drift_logits_kl_max": (0.01, "nats/token",
                            "full-vocabulary KL of the final logits (HF model vs the same model with bf16 SDPA): "
                            "0.01 nats bounds the perplexity inflation to ~1 %"),
}


def kl_limit(floor_kl: float, t: dict[str, float]) -> float:
    """The mean-KL limit against a measured floor: max(factor x floor, absolute minimum)."""
    return max(t["kl_floor_factor"] * floor_kl, t["kl_min_limit"])


def default_thresholds() -> dict[str, float]:
    return {k: v[0] for k, v in THRESHOLDS.items()}


def parse_threshold_overrides(items: list[str] | None) -> dict[str, float]:
    """``["kl_floor_factor=2", ...]`` → thresholds; unknown names are an error (a typo must not pass)."""
    out = default_thresholds()
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--threshold expects NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        name = name.strip()
        if name not in THRESHOLDS:
            raise ValueError(f"unknown threshold {name!r}; known: {', '.join(THRESHOLDS)}")
        out[name] = float(value)
    return out


_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "==": operator.eq, "<": operator.lt,
        "!=": operator.ne}


@dataclass
class Criterion:
    name: str
    value: Any
    op: str | None = None
    threshold: Any = None
    unit: str = ""
    note: str = ""
    passed: bool | None = None  # None = informational
    floor: Any = None  # the same quantity measured for the floor backend (shown beside the value)

    def evaluate(self) -> Criterion:
        if self.op is not None:
            if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
                self.passed = False
                self.note = (self.note + "; " if self.note else "") + "not measured"
            else:
                self.passed = bool(_OPS[self.op](self.value, self.threshold))
        return self


@dataclass
class Check:
    id: str
    title: str
    status: str = "pending"  # pass | fail | error | n/a | skipped | pending
    criteria: list[Criterion] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def add(self, name: str, value: Any, op: str | None = None, threshold: Any = None, unit: str = "",
            note: str = "", floor: Any = None) -> Criterion:
        c = Criterion(name, value, op, threshold, unit, note, floor=floor).evaluate()
        self.criteria.append(c)
        return c

    def finish(self) -> Check:
        if self.status in ("n/a", "skipped", "error"):
            return self
        judged = [c for c in self.criteria if c.passed is not None]
        if not judged:
            self.status = "error"
            self.error = self.error or "no criterion could be evaluated"
        else:
            self.status = "pass" if all(c.passed for c in judged) else "fail"
        return self

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "status": self.status, "error": self.error,
                "criteria": [c.__dict__ for c in self.criteria], "info": self.info}


# ---- data assembly -------------------------------------------------------------------------


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def compare_bucket(base: dict[str, np.ndarray], sage: dict[str, np.ndarray]) -> dict[str, Any]:
    """Perplexities and logit comparison of one bucket; refuses misaligned inputs."""
    if base["tok"].shape != sage["tok"].shape or not np.array_equal(base["tok"], sage["tok"]):
        raise ValueError("baseline and sage scored different tokens: inputs are not aligned")
    ppl_b, ppl_s = metrics.perplexity(base["lp"]), metrics.perplexity(sage["lp"])
    cmp = metrics.compare_topk(base["topk_ids"], base["topk_lp"], sage["topk_ids"], sage["topk_lp"])
    return {"positions": int(base["lp"].size), "ppl_baseline": ppl_b, "ppl_sage": ppl_s,
            "ppl_rel_delta": metrics.relative_delta(ppl_s, ppl_b),
            "mean_abs_dnll": float(np.abs(base["lp"] - sage["lp"]).mean()), **cmp.as_dict()}


_TABLE_CACHE: dict[str, dict[str, Any]] = {}


def bucket_table(base_res: dict, sage_res: dict, key_b: str = "accuracy", key_s: str = "accuracy") -> dict[str, Any]:
    """Per-bucket comparisons, plus ``pooled`` over every scored position of every bucket.

    Cached per input (the report is re-rendered after every stage; the npz files do not change).
    """
    b_ph = (base_res.get("phases") or {}).get(key_b) or {}
    s_ph = (sage_res.get("phases") or {}).get(key_s) or {}
    cache_key = json.dumps([b_ph, s_ph], sort_keys=True, default=str)
    if cache_key not in _TABLE_CACHE:
        _TABLE_CACHE[cache_key] = _bucket_table(b_ph, s_ph)
    return _TABLE_CACHE[cache_key]


def _bucket_table(b_ph: dict, s_ph: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pooled: dict[str, list] = {k: [] for k in ("bi", "bl", "si", "sl", "blp", "slp", "btok", "stok")}
    for name in BUCKETS:
        b, s = b_ph.get(name), s_ph.get(name)
        if not b or not s or "npz" not in b or "npz" not in s:
            if b or s:
                why = [f"{side}: {x.get('error') or x.get('skipped') or 'not measured'}"
                       for side, x in (("baseline", b or {}), ("sage", s or {})) if "npz" not in x]
                out[name] = {"error": "; ".join(why)}
            continue
        try:
            bz, sz = load_npz(b["npz"]), load_npz(s["npz"])
            out[name] = compare_bucket(bz, sz)
            for k_src, k_dst, z in (("topk_ids", "bi", bz), ("topk_lp", "bl", bz), ("topk_ids", "si", sz),
                                    ("topk_lp", "sl", sz), ("lp", "blp", bz), ("lp", "slp", sz),
                                    ("tok", "btok", bz), ("tok", "stok", sz)):
                pooled[k_dst].append(z[k_src])
        except Exception as e:  # noqa: BLE001 - one bad bucket must not hide the others
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    if pooled["bi"]:
        cat = {k: np.concatenate(v) for k, v in pooled.items()}
        cmp = metrics.compare_topk(cat["bi"], cat["bl"], cat["si"], cat["sl"])
        out["pooled"] = {"positions": int(cat["blp"].size), **cmp.as_dict(),
                         "mean_abs_dnll": float(np.abs(cat["blp"] - cat["slp"]).mean())}
    return out


def passkey_table(results: dict) -> dict[str, dict[str, Any]]:
    """bucket -> accuracy and trials, scored here from the raw answers."""
    trials = (results.get("phases") or {}).get("passkey") or []
    by: dict[str, list[bool]] = {}
    for t in trials:
        by.setdefault(t["bucket"], []).append(passkey.score_answer(t.get("answer") or "", t["key"]))
    return {b: {"accuracy": passkey.accuracy(h), "trials": len(h), "hits": int(sum(h))} for b, h in by.items()}


def throughput_rows(results: dict) -> list[dict[str, Any]]:
    """Median-wall throughput and TTFT per (shape, batch)."""
    rows = []
    for r in (results.get("phases") or {}).get("throughput") or []:
        kind = r.get("kind") or r.get("shape")
        if r.get("skipped") or not r.get("walls_s"):
            rows.append({"shape": r.get("shape"), "kind": kind, "batch": r.get("batch"),
                         "input_len": r.get("input_len"), "output_len": r.get("output_len"),
                         "skipped": r.get("skipped", "no data")})
            continue
        med = metrics.median(r["walls_s"])
        ttft = r.get("mean_e2e_latency_s") if r["output_len"] == 1 else r.get("ttft_mean_latency_s")
        if ttft is None:
            ttft = med if r["output_len"] == 1 else r.get("ttft_wall_s")
        rows.append({"shape": r["shape"], "kind": kind, "batch": r["batch"], "input_len": r["input_len"],
                     "output_len": r["output_len"], "wall_s": med,
                     "input_tok_s": metrics.tokens_per_second(r["input_tokens"], med),
                     "output_tok_s": metrics.tokens_per_second(r["output_tokens"], med),
                     "ttft_s": ttft, "runs": len(r["walls_s"])})
    return rows


# ---- the checks ----------------------------------------------------------------------------


@dataclass
class Inputs:
    """Everything the checks read; any part may be None (stage failed or not run)."""

    base: dict | None
    sage: dict | None
    drift: dict | None
    server: dict | None
    thresholds: dict[str, float]
    sage_backend: str = "sage_attn"
    accuracy_applicable: bool = True
    notes: dict[str, str] = field(default_factory=dict)
    overlay: dict | None = None  # envinfo.overlay_match: is the installed backend this checkout's code?
    floor: dict | None = None  # the floor backend's engine (accuracy phase only)
    floor_backend: str = "flashinfer"
    compare: dict[str, dict | None] = field(default_factory=dict)  # extra configurations, e.g. fa3+fp8_e4m3
    speed: dict[str, dict | None] | None = None  # --speed-model engines: baseline, sage, compare names; None = off
    model_label: str = "model"
    speed_label: str = "speed model"
    speed_left_out: list[str] = field(default_factory=list)


def _stage_error(name: str, res: dict | None) -> str | None:
    if res is None:
        return f"{name} stage produced no result"
    if res.get("engine_started") is False:
        return f"{name} engine did not start: " + str((res.get("errors") or {}).get("engine_start", ""))[:800]
    return None


def _phase_error(res: dict, phase: str) -> str | None:
    return (res.get("errors") or {}).get(phase)


def check_runtime_flag(inp: Inputs) -> Check:
    c = Check("runtime_flag", CHECK_TITLES["runtime_flag"])
    probe = (inp.base or {}).get("flag_probe") or {}
    resolved = probe.get("resolved_default")
    if resolved is not None:
        c.add("default attention backend (ServerArgs without the flag)", resolved, "!=", inp.sage_backend)
    elif probe:
        ok = probe.get("field_default") in (None, "") and probe.get("auto_selector_mentions_sage") is False
        crit = c.add("default attention backend (field default; auto-selector source)",
                     f"{probe.get('field_default')!r}; selector mentions sage: "
                     f"{probe.get('auto_selector_mentions_sage')}",
                     note="resolution raised: " + str(probe.get("resolved_default_error", ""))[:200])
        crit.passed, crit.threshold = ok, f"≠ {inp.sage_backend}"
    else:
        crit = c.add("default attention backend", None, note="probe did not run")
        crit.passed = False
    cli = probe.get("cli_flag_backend")
    crit = c.add(f"`--attention-backend {inp.sage_backend}` parsed by prepare_server_args (sglang serve's parser)",
                 cli if cli is not None else probe.get("cli_flag_error"))
    crit.passed, crit.threshold = cli == inp.sage_backend, f"= {inp.sage_backend}"
    if probe:
        c.info["choices_has_sage"] = probe.get("choices_has_sage")
    if inp.overlay and inp.overlay.get("checked") and inp.sage_backend == "sage_attn":
        crit = c.add("installed sage_attn files identical to this checkout's overlay/",
                     "yes" if inp.overlay.get("identical") else
                     f"no: differ {inp.overlay.get('differ')}, missing {inp.overlay.get('missing')}")
        if inp.overlay.get("exact_expected", True):
            crit.passed, crit.threshold = bool(inp.overlay.get("identical")), "yes"
        else:
            crit.note = "informational: this SGLang release may install a per-version patched overlay"
    # Engine
    err = _stage_error("sage", inp.sage)
    sage = inp.sage or {}
    si = sage.get("server_info") or {}
    crit = c.add("sglang.Engine started; its attention_backend", si.get("attention_backend") if not err else err)
    crit.passed, crit.threshold = (not err and si.get("attention_backend") == inp.sage_backend), f"= {inp.sage_backend}"
    stats = (sage.get("stats") or {})
    final = (stats.get("final") or stats.get("after_throughput") or stats.get("after_passkey")
             or stats.get("after_accuracy") or stats.get("after_partial_prefix") or {})
    counters = final.get("counters") or {}
    c.add("prefill_8bit_layer_calls (Engine, whole run)", counters.get("prefill_8bit_layer_calls"), ">", 0)
    before = (stats.get("before_radix_hit") or {}).get("counters")
    after = (stats.get("after_partial_prefix") or {}).get("counters")
    delta = None
    if before is not None and after is not None:
        name = "extend_prefix_8bit_layer_calls"
        delta = int(after.get(name, 0)) - int(before.get(name, 0))
    c.add("extend_prefix_8bit_layer_calls added by radix-hit requests", delta, ">", 0)
    if sage.get("radix_hit_counter_delta"):
        c.info["counter_delta_full_prompt_hits"] = sage["radix_hit_counter_delta"]
    c.info["sage_counters_final"] = counters
    c.info["decode_backends"] = final.get("decode_backends")
    c.info["sage_stats_processes"] = final.get("processes")
    base_final = ((inp.base or {}).get("stats") or {}).get("final") or {}
    if inp.base is not None and base_final:
        crit = c.add("baseline engine wrote no sage counters (counters are not fake)",
                     base_final.get("processes"), "==", 0)
    # HTTP server
    srv = inp.server
    if srv is None:
        crit = c.add("HTTP server (launch_server --attention-backend ...) answered /v1/completions", None)
        crit.passed = False
        crit.note = "server stage did not run"
    else:
        crit = c.add("HTTP server answered (status, text)", f"{srv.get('status_code')} {srv.get('text')!r}"
                     if not srv.get("error") else srv.get("error"))
        crit.passed = bool(srv.get("ok"))
        crit.threshold = "200 and non-empty"
        crit = c.add("HTTP server /server_info attention_backend", srv.get("attention_backend"))
        crit.passed, crit.threshold = srv.get("attention_backend") == inp.sage_backend, f"= {inp.sage_backend}"
        sc = (srv.get("stats") or {}).get("counters") or {}
        c.add("HTTP server prefill_8bit_layer_calls", sc.get("prefill_8bit_layer_calls"), ">", 0)
        c.info["server_cmd"] = srv.get("cmd")
        c.info["server_start_s"] = srv.get("start_s")
        if srv.get("engine_text_same") is not None:
            c.info["server_text_equals_engine_text"] = srv.get("engine_text_same")
    return c.finish()


def _floor_why(inp: Inputs, ftab: dict | None, key: str) -> str:
    """Why the floor has no row ``key`` (stage failure, bucket error, or simply not measured)."""
    err = _stage_error(f"floor ({inp.floor_backend})", inp.floor)
    if err:
        return err
    row = (ftab or {}).get(key)
    if isinstance(row, dict) and row.get("error"):
        return str(row["error"])[:300]
    return "not measured"


def _usable_floor(s: dict, f: Any, inp: Inputs, ftab: dict | None, key: str) -> tuple[dict | None, str]:
    """The floor's row for bucket ``key`` when it was scored on exactly sage's positions, else (None, why).

    Token ids are checked against the baseline's per bucket (``compare_bucket``), so equal position
    counts over the same buckets mean the same positions."""
    if not isinstance(f, dict) or "mean_kl" not in f:
        return None, _floor_why(inp, ftab, key)
    if f.get("positions") != s.get("positions"):
        return None, f"floor scored {f.get('positions')} positions, sage {s.get('positions')}: not the same positions"
    return f, ""


def _gap_note(gap: float) -> str:
    """sage's top-1 distance to the floor in words (a gap may be negative: sage above the floor)."""
    return f"{100 * abs(gap):.2f} points {'below' if gap > 0 else 'above'} the floor" if gap else "equal to the floor"


def _vs_floor(c: Check, label: str, s: dict, f: dict | None, why: str, inp: Inputs) -> None:
    """The floor-relative criteria of one bucket (or of all positions pooled): top-1 agreement at most
    ``top1_max_gap_to_floor`` points below the floor's, mean KL within max(factor x floor, minimum); p99 KL
    beside the floor's (informational)."""
    t = inp.thresholds
    gap = t["top1_max_gap_to_floor"]
    n_top1 = f"{label}top-1 agreement (≥ floor − {gap:g} point{'' if gap == 1 else 's'})"
    n_kl = f"{label}mean KL(baseline‖sage) (≤ max({t['kl_floor_factor']:g} × floor, {t['kl_min_limit']:g}))"
    if f is None:
        for name, value, unit in ((n_top1, s["top1_agreement"], ""), (n_kl, s["mean_kl"], "nats/token")):
            crit = c.add(name, value, unit=unit, note=f"floor ({inp.floor_backend}) not measured: {why}")
            crit.passed = False
        c.add(f"{label}p99 KL", s["p99_kl"], unit="nats/token")
        return
    c.add(n_top1, s["top1_agreement"], ">=", round(f["top1_agreement"] - gap / 100, 10), floor=f["top1_agreement"],
          note=_gap_note(f["top1_agreement"] - s["top1_agreement"]))
    c.add(n_kl, s["mean_kl"], "<=", kl_limit(f["mean_kl"], t), "nats/token", floor=f["mean_kl"],
          note=f"{s['mean_kl'] / f['mean_kl']:.2f} × floor" if f["mean_kl"] > 0 else "floor KL is 0")
    c.add(f"{label}p99 KL", s["p99_kl"], unit="nats/token", floor=f["p99_kl"])


def check_logits(inp: Inputs, buckets: dict, floor: dict | None, compare: dict[str, dict]) -> Check:
    t = inp.thresholds
    c = Check("logits", CHECK_TITLES["logits"])
    if not inp.accuracy_applicable:
        c.status, c.error = "n/a", inp.notes.get("accuracy", "not applicable")
        return c
    pooled = buckets.get("pooled")
    if not pooled:
        c.status = "error"
        c.error = "no teacher-forced data from both backends: " + "; ".join(
            f"{k}: {v.get('error')}" for k, v in buckets.items() if isinstance(v, dict) and v.get("error"))
        return c.finish()
    fp, why = _usable_floor(pooled, (floor or {}).get("pooled"), inp, floor, "pooled")
    c.info["floor_backend"] = inp.floor_backend
    _vs_floor(c, "", pooled, fp, why, inp)
    c.add("max |Δ log-prob| over shared top-K", pooled["max_abs_dlogprob"], "<=", t["max_dlogprob_max"], "nats",
          floor=(fp or {}).get("max_abs_dlogprob"))
    c.add("positions compared", pooled["positions"], floor=(fp or {}).get("positions"))
    c.add("top-K sets identical", pooled["topk_set_equal"], floor=(fp or {}).get("topk_set_equal"))
    c.add("mean |Δ NLL| of the actual next token", pooled["mean_abs_dnll"], unit="nats",
          floor=(fp or {}).get("mean_abs_dnll"))
    for name, tab in compare.items():
        cp = (tab or {}).get("pooled")
        if not cp:
            c.add(f"{name} vs baseline", None, note="not measured (see its stage)")
            continue
        c.add(f"{name} vs baseline: top-1 agreement", cp["top1_agreement"], floor=(fp or {}).get("top1_agreement"),
              note=f"{cp['positions']} positions")
        c.add(f"{name} vs baseline: mean KL", cp["mean_kl"], unit="nats/token", floor=(fp or {}).get("mean_kl"))
    return c.finish()


def check_perplexity(inp: Inputs, buckets: dict, floor: dict | None, compare: dict[str, dict],
                     primary: str = "medium") -> Check:
    t = inp.thresholds
    c = Check("perplexity", CHECK_TITLES["perplexity"])
    if not inp.accuracy_applicable:
        c.status, c.error = "n/a", inp.notes.get("accuracy", "not applicable")
        return c
    b = buckets.get(primary)
    if not b or "ppl_baseline" not in b:
        c.status = "error"
        c.error = f"{primary} bucket not measured: {(b or {}).get('error', 'missing')}"
        return c
    f, why = _usable_floor(b, (floor or {}).get(primary), inp, floor, primary)
    c.add("perplexity baseline", b["ppl_baseline"], ">=", 1.0, note="≥ 1 by construction")
    c.add("perplexity sage", b["ppl_sage"], ">=", 1.0, note="≥ 1 by construction (floor column: the floor's)",
          floor=None if f is None else f["ppl_sage"])
    c.add("|relative Δ perplexity|", abs(b["ppl_rel_delta"]), "<=", t["ppl_max_rel_delta"],
          floor=None if f is None else abs(f["ppl_rel_delta"]),
          note="" if f is not None else f"floor ({inp.floor_backend}): {why}")
    c.add("scored tokens", b["positions"])
    for name, tab in compare.items():
        cb = (tab or {}).get(primary) or {}
        if "ppl_rel_delta" in cb:
            c.add(f"{name}: |relative Δ perplexity|", abs(cb["ppl_rel_delta"]),
                  floor=None if f is None else abs(f["ppl_rel_delta"]))
    return c.finish()


def check_context(inp: Inputs, buckets: dict, floor: dict | None, pk_base: dict, pk_sage: dict,
                  bucket_specs: dict) -> Check:
    t = inp.thresholds
    c = Check("context", CHECK_TITLES["context"])
    if not inp.accuracy_applicable:
        c.status, c.error = "n/a", inp.notes.get("accuracy", "not applicable")
        return c
    c.info["floor_backend"] = inp.floor_backend
    for name in BUCKETS:
        spec = bucket_specs.get(name)
        if spec is None:
            c.add(f"{name}: bucket", "not applicable", note="model context too short for ≥ 7K tokens")
            continue
        label = f"{name} (context ≥ {spec['min_context']}, window {spec['window']})"
        b = buckets.get(name) or {}
        if "ppl_baseline" not in b:
            crit = c.add(f"{label}: teacher-forced data", b.get("error", "missing"))
            crit.passed = False
        else:
            f, why = _usable_floor(b, (floor or {}).get(name), inp, floor, name)
            _vs_floor(c, f"{label}: ", b, f, why, inp)
            c.add(f"{label}: |Δ perplexity|", abs(b["ppl_rel_delta"]), "<=", t["ppl_max_rel_delta"],
                  floor=None if f is None else abs(f["ppl_rel_delta"]),
                  note=f"ppl {b['ppl_baseline']:.4f} → {b['ppl_sage']:.4f}")
        pb, ps = pk_base.get(name), pk_sage.get(name)
        if pb is None or ps is None:
            crit = c.add(f"{label}: passkey", None, note="passkey not measured on both backends")
            crit.passed = False
        else:
            c.add(f"{label}: passkey sage − baseline", ps["accuracy"] - pb["accuracy"], ">=", -t["passkey_max_drop"],
                  note=f"baseline {pb['hits']}/{pb['trials']}, sage {ps['hits']}/{ps['trials']}")
    return c.finish()


def _tp_key(r: dict) -> tuple:
    return (r.get("shape"), r.get("batch"))


def _throughput_criteria(c: Check, label: str, rows_b: list, rows_s: list, t: dict[str, float],
                         why_missing: str) -> None:
    """sage/baseline per (shape, batch) of one model: prefill rows by input tok/s, decode rows by output
    tok/s. Every row either side planned is judged: a row missing or skipped on either side fails."""
    by_b, by_s = {_tp_key(r): r for r in rows_b}, {_tp_key(r): r for r in rows_s}
    keys = list(by_b) + [k for k in by_s if k not in by_b]
    if not keys:
        crit = c.add(f"{label}: throughput rows", None, note=why_missing or "no throughput data")
        crit.passed = False
        return
    for key in keys:
        b, s = by_b.get(key), by_s.get(key)
        ref = b or s
        kind = ref.get("kind") or ref.get("shape")
        name = f"{label}: {ref['shape']} (prompt {ref.get('input_len')}, {ref.get('output_len')} new), batch {key[1]}"
        if not b or not s or b.get("skipped") or s.get("skipped"):
            why = ((s or {}).get("skipped") or (b or {}).get("skipped")
                   or ("sage row missing" if not s else "baseline row missing"))
            crit = c.add(name, None, note=str(why))
            crit.passed = False
            continue
        metric, thr = ("input_tok_s", "prefill_min_ratio") if kind == "prefill" else ("output_tok_s",
                                                                                     "decode_min_ratio")
        what = "input tok/s" if metric == "input_tok_s" else "output tok/s"
        c.add(f"{name}: {what} sage/baseline", s[metric] / b[metric], ">=", t[thr],
              note=f"{b[metric]:,.0f} → {s[metric]:,.0f} tok/s; TTFT {_ms(b['ttft_s'])} → {_ms(s['ttft_s'])}")


def check_throughput(inp: Inputs, tp: dict, speed: dict | None) -> Check:
    t = inp.thresholds
    c = Check("throughput", CHECK_TITLES["throughput"])
    err = _stage_error("baseline", inp.base) or _stage_error("sage", inp.sage)
    if err and speed is None:
        c.status, c.error = "error", err
        return c
    why = err or str(_phase_error(inp.sage or {}, "throughput") or _phase_error(inp.base or {}, "throughput") or "")
    _throughput_criteria(c, inp.model_label, tp["baseline"], tp["sage"], t, why[:500])
    if speed is not None:
        res = inp.speed or {}
        why = (_stage_error(f"{inp.speed_label} baseline", res.get("baseline"))
               or _stage_error(f"{inp.speed_label} sage", res.get("sage")) or "")
        _throughput_criteria(c, inp.speed_label, speed["baseline"], speed["sage"], t, why[:500])
        stats = (res.get("sage") or {}).get("stats") or {}
        counters = (stats.get("final") or stats.get("after_throughput") or {}).get("counters") or {}
        c.add(f"{inp.speed_label}: sage prefill_8bit_layer_calls (the 8-bit path ran)",
              counters.get("prefill_8bit_layer_calls"), ">", 0)
        for note in speed.get("left_out") or []:
            c.add(f"{inp.speed_label}: left out of the plan", note)
    return c.finish()


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:.1f} ms"


def memory_summary(res: dict | None) -> dict[str, Any]:
    """Numbers of one engine: pool capacity, NVML footprint/peak, torch cross-check, SGLang's own split."""
    if not res:
        return {}
    mem = res.get("memory") or {}
    si = res.get("server_info") or {}
    out: dict[str, Any] = {"max_total_num_tokens": si.get("max_total_num_tokens"),
                           "memory_usage_gb": si.get("memory_usage")}
    b, a, p = mem.get("before_start_nvml_mib"), mem.get("after_start_nvml_mib"), mem.get("peak_nvml_mib")
    if a is not None and b is not None:
        out["engine_footprint_mib"] = a - b
    if p is not None:
        out["peak_used_mib"] = p
    if p is not None and a is not None:
        out["peak_extra_over_start_mib"] = max(0.0, p - a)
    tb, ta = mem.get("before_start_torch") or {}, mem.get("after_start_torch") or {}
    if tb.get("used_mib") is not None and ta.get("used_mib") is not None:
        out["torch_cross_check_footprint_mib"] = ta["used_mib"] - tb["used_mib"]
    if mem.get("nvml_error"):
        out["nvml_error"] = mem["nvml_error"]
    return out


def check_memory(inp: Inputs) -> Check:
    t = inp.thresholds
    c = Check("memory", CHECK_TITLES["memory"])
    err = _stage_error("baseline", inp.base) or _stage_error("sage", inp.sage)
    if err:
        c.status, c.error = "error", err
        return c
    mb, ms = memory_summary(inp.base), memory_summary(inp.sage)
    c.info = {"baseline": mb, "sage": ms}
    kb, ks = mb.get("max_total_num_tokens"), ms.get("max_total_num_tokens")
    c.add("KV-pool capacity sage/baseline (tokens)", (ks / kb) if kb and ks is not None else None, ">=",
          t["kv_capacity_min_ratio"], note=f"{kb} → {ks} tokens")
    pb, ps = mb.get("peak_extra_over_start_mib"), ms.get("peak_extra_over_start_mib")
    c.add("peak memory growth during the workload, sage − baseline", (ps - pb) if pb is not None and ps is not None
          else None, "<=", t["peak_extra_max_mib"], "MiB", note=f"baseline +{_mib(pb)}, sage +{_mib(ps)} over start")
    c.add("engine footprint after start (baseline → sage)",
          f"{_mib(mb.get('engine_footprint_mib'))} → {_mib(ms.get('engine_footprint_mib'))}")
    c.add("peak device memory used (baseline → sage)",
          f"{_mib(mb.get('peak_used_mib'))} → {_mib(ms.get('peak_used_mib'))}")
    return c.finish()


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f} MiB"


def check_drift(inp: Inputs) -> Check:
    t = inp.thresholds
    c = Check("drift", CHECK_TITLES["drift"])
    if not inp.accuracy_applicable:
        c.status, c.error = "n/a", inp.notes.get("accuracy", "not applicable")
        return c
    d = inp.drift
    if not d or d.get("fatal") or not d.get("lengths"):
        c.status = "error"
        why = (d or {}).get("fatal") or (d or {}).get("errors") or ""
        c.error = "drift stage produced no result: " + str(why)[:800]
        return c
    for key, err in (d.get("errors") or {}).items():
        crit = c.add(f"L={key}", None, note=str(err)[:300])
        crit.passed = False
    for key, r in sorted(d["lengths"].items(), key=lambda kv: int(kv[0])):
        c.add(f"L={key}: max local rel-L2 (sage vs bf16 SDPA, same inputs)", max(r["local_rel_l2"]), "<=",
              t["drift_local_max_rel_l2"], note=f"bf16-vs-fp32 floor max {max(r['bf16_vs_fp32_rel_l2']):.4f}")
        c.add(f"L={key}: last-layer propagated rel-L2", r["propagated_rel_l2"][-1], "<=",
              t["drift_propagated_max_rel_l2"], note=f"cos {r['propagated_cos'][-1]:.5f}")
        c.add(f"L={key}: final logits full-vocab KL", r["logits"]["full_kl_mean"], "<=", t["drift_logits_kl_max"],
              "nats/token", note=f"top-1 agreement {r['logits']['top1_agreement']:.4f}")
    c.info["kernel_source"] = d.get("kernel_source")
    return c.finish()


def determinism_summary(res: dict | None) -> dict[str, Any]:
    runs = ((res or {}).get("phases") or {}).get("determinism")
    if not runs or not runs.get("cold"):
        return {}
    ref = runs["cold"][0]["output_ids"]
    same = {kind: [r["output_ids"] == ref for r in runs.get(kind, [])] for kind in ("cold", "radix_hit", "after_flush")}
    return {"reference_len": len(ref), "identical": same,
            "radix_cached_tokens": [r.get("cached_tokens") for r in runs.get("radix_hit", [])],
            "cold_cached_tokens": [r.get("cached_tokens") for r in runs.get("cold", [])]}


def check_determinism(inp: Inputs) -> Check:
    c = Check("determinism", CHECK_TITLES["determinism"])
    err = _stage_error("sage", inp.sage)
    s = determinism_summary(inp.sage)
    if err or not s:
        c.status = "error"
        c.error = err or ("not measured: " + str(_phase_error(inp.sage or {}, "determinism") or "")[:500])
        return c
    n_cold, n_hit = len(s["identical"]["cold"]), len(s["identical"]["radix_hit"])
    c.add(f"cold repeats identical ({n_cold}×, flush before each)", sum(s["identical"]["cold"]), "==", n_cold)
    c.add(f"radix-hit repeats identical to cold ({n_hit}×)", sum(s["identical"]["radix_hit"]), "==", n_hit)
    c.add("after flush_cache identical to cold", sum(s["identical"]["after_flush"]), "==",
          len(s["identical"]["after_flush"]))
    hits = [x for x in s["radix_cached_tokens"] if isinstance(x, int)]
    c.add("radix-hit runs really hit the cache (min cached_tokens)", min(hits) if hits else None, ">", 0)
    b = determinism_summary(inp.base)
    if b:
        c.info["baseline"] = {k: all(v) for k, v in b["identical"].items()}
    c.info["sage"] = s
    return c.finish()


def evaluate(inp: Inputs, selected: list[str], bucket_specs: dict) -> tuple[list[Check], dict[str, Any]]:
    """All selected checks, plus the tables the report and plots show."""
    tables: dict[str, Any] = {}
    buckets: dict = {}
    floor: dict | None = None
    compare: dict[str, dict] = {}
    if inp.accuracy_applicable and inp.base and inp.sage:
        buckets = bucket_table(inp.base, inp.sage)
    if inp.accuracy_applicable and inp.base and inp.floor:
        floor = bucket_table(inp.base, inp.floor)
    if inp.accuracy_applicable and inp.base:
        compare = {name: bucket_table(inp.base, res) if res else {} for name, res in inp.compare.items()}
    tables["buckets"], tables["floor"], tables["compare"] = buckets, floor, compare
    tables["floor_backend"] = inp.floor_backend
    tables["kl_limits"] = {k: kl_limit(v["mean_kl"], inp.thresholds) for k, v in (floor or {}).items()
                           if isinstance(v, dict) and "mean_kl" in v}
    pk_b = _safe(passkey_table, inp.base) if inp.accuracy_applicable else {}
    pk_s = _safe(passkey_table, inp.sage) if inp.accuracy_applicable else {}
    pk_c = {name: _safe(passkey_table, res) for name, res in inp.compare.items()} if inp.accuracy_applicable else {}
    tables["passkey"] = {"baseline": pk_b, "sage": pk_s, "compare": pk_c}
    tp = {"model": inp.model_label, "baseline": _safe(throughput_rows, inp.base, []),
          "sage": _safe(throughput_rows, inp.sage, []),
          "compare": {name: _safe(throughput_rows, res, []) for name, res in inp.compare.items()}}
    tables["throughput"] = tp
    speed = None
    if inp.speed is not None:
        sp = inp.speed
        speed = {"model": inp.speed_label, "baseline": _safe(throughput_rows, sp.get("baseline"), []),
                 "sage": _safe(throughput_rows, sp.get("sage"), []),
                 "compare": {name: _safe(throughput_rows, res, []) for name, res in sp.items()
                             if name not in ("baseline", "sage")},
                 "left_out": list(inp.speed_left_out)}
    tables["speed"] = speed
    tables["memory"] = {"baseline": memory_summary(inp.base), "sage": memory_summary(inp.sage)}
    tables["drift"] = inp.drift
    makers = {
        "runtime_flag": lambda: check_runtime_flag(inp),
        "logits": lambda: check_logits(inp, buckets, floor, compare),
        "perplexity": lambda: check_perplexity(inp, buckets, floor, compare),
        "throughput": lambda: check_throughput(inp, tp, speed),
        "memory": lambda: check_memory(inp),
        "drift": lambda: check_drift(inp),
        "context": lambda: check_context(inp, buckets, floor, pk_b, pk_s, bucket_specs),
        "determinism": lambda: check_determinism(inp),
    }
    checks = []
    for cid in CHECK_IDS:
        if cid not in selected:
            continue
        try:
            checks.append(makers[cid]())
        except Exception as e:  # noqa: BLE001 - an evaluation bug is an error row, not a crash
            checks.append(Check(cid, CHECK_TITLES[cid], status="error", error=f"{type(e).__name__}: {e}"))
    return checks, tables


def _safe(fn, res, default=None):
    if not res:
        return {} if default is None else default
    try:
        return fn(res)
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"} if default is None else default


def verdict(checks: list[Check]) -> bool:
    """Pass only when every selected check passed or does not apply."""
    return bool(checks) and all(c.status in ("pass", "n/a") for c in checks)
