"""Checks, report rendering and plots from fabricated worker results (the GPU workers' JSON/npz format)."""

from __future__ import annotations

import copy
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from sglang_sage.verify import checks as ck
from sglang_sage.verify import plots, report

SPECS = {"short": {"window": 256, "stride": 128, "min_context": 128, "windows": 2},
         "medium": {"window": 2048, "stride": 512, "min_context": 1536, "windows": 2},
         "long": {"window": 8128, "stride": 1024, "min_context": 7104, "windows": 1}}


def write_bucket(path, n: int, nll: float, perturb: float = 0.0, seed: int = 0, flip: float = 0.0,
                 kl: float = 0.0) -> str:
    """One bucket's npz. ``perturb`` moves mass between the first two tokens of every row (0.3 swaps the top-1);
    ``flip`` swaps the top-1 in that fraction of rows; ``kl`` moves a little mass in every row (a small KL)."""
    rng = np.random.default_rng(seed)
    k = 4
    probs = np.array([0.5, 0.2, 0.1, 0.05]) + perturb * np.array([-1, 1, 0, 0])  # perturb .3 swaps the top-1
    rows = np.tile(probs, (n, 1)) + kl * np.array([-1, 1, 0, 0])
    n_flip = int(round(flip * n))
    rows[:n_flip] = np.array([0.2, 0.5, 0.1, 0.05])
    np.savez(path, tok=np.arange(n, dtype=np.int32), lp=np.full(n, -nll), window=np.zeros(n, np.int32),
             topk_ids=np.tile(np.arange(k), (n, 1)) + rng.integers(0, 1, (n, 1)), topk_lp=np.log(rows))
    return str(path)


def results(tmp_path, tag: str, nll: float, perturb: float, backend: str, counters: int, walls: float,
            flip: float = 0.0, kl: float = 0.0) -> dict:
    acc = {b: {"npz": write_bucket(tmp_path / f"{tag}_{b}.npz", 1000, nll, flip=flip, kl=kl), "positions": 1000}
           for b in ("short", "medium", "long")}
    stats = {"processes": 1 if counters else 0,
             "counters": {"prefill_8bit_layer_calls": counters, "extend_prefix_8bit_layer_calls": 0},
             "decode_backends": ["triton"] if counters else []}
    after = copy.deepcopy(stats)
    after["counters"]["extend_prefix_8bit_layer_calls"] = counters
    det = {"cold": [{"output_ids": [1, 2, 3], "cached_tokens": 0}] * 3,
           "radix_hit": [{"output_ids": [1, 2, 3], "cached_tokens": 511}] * 3,
           "after_flush": [{"output_ids": [1, 2, 3], "cached_tokens": 0}], "partial_prefix": []}
    pk = [{"bucket": b, "depth": 0.5, "key": "12345", "answer": " 12345." if b != "long" else " 99"}
          for b in ("short", "medium", "long")]
    tp = [{"shape": "prefill", "kind": "prefill", "batch": 1, "input_len": 100, "output_len": 1,
           "walls_s": [walls, walls * 1.1],
           "input_tokens": 100, "output_tokens": 1, "mean_e2e_latency_s": walls},
          {"shape": "decode", "batch": 32, "input_len": 64, "output_len": 256, "walls_s": [walls * 10],
           "input_tokens": 64 * 32, "output_tokens": 256 * 32, "ttft_mean_latency_s": 0.01}]
    return {"engine_started": True, "backend": backend,
            "phases": {"accuracy": acc, "passkey": pk, "determinism": det, "throughput": tp},
            "server_info": {"attention_backend": backend, "max_total_num_tokens": 1000},
            "memory": {"before_start_nvml_mib": 1000.0, "after_start_nvml_mib": 5000.0, "peak_nvml_mib": 5100.0},
            "stats": {"before_radix_hit": stats, "after_partial_prefix": after, "final": after},
            "flag_probe": {"resolved_default": "fa3", "cli_flag_backend": "sage_attn", "choices_has_sage": True}}


@pytest.fixture
def inputs(tmp_path):
    base = results(tmp_path, "b", 2.0, 0.0, "triton", 0, 0.10)
    sage = results(tmp_path, "s", 2.0, 0.0, "sage_attn", 300, 0.08)
    server = {"ok": True, "status_code": 200, "text": " Paris", "attention_backend": "sage_attn",
              "stats": {"counters": {"prefill_8bit_layer_calls": 30}}}
    drift = {"lengths": {"256": {"layers": [0, 1], "propagated_rel_l2": [0.01, 0.02], "propagated_cos": [1.0, 0.999],
                                 "local_rel_l2": [0.01, 0.015], "local_cos": [1.0, 0.9999],
                                 "sage_vs_fp32_rel_l2": [0.01, 0.015], "bf16_vs_fp32_rel_l2": [0.002, 0.002],
                                 "logits": {"full_kl_mean": 1e-3, "full_kl_max": 1e-2, "top1_agreement": 0.99}}},
             "errors": {}}
    floor = results(tmp_path, "f", 2.0, 0.0, "flashinfer", 0, 0.10, flip=0.02, kl=0.01)
    return ck.Inputs(base=base, sage=sage, drift=drift, server=server, thresholds=ck.default_thresholds(),
                     floor=floor, floor_backend="flashinfer")


def by_id(checks):
    return {c.id: c for c in checks}


def test_all_pass_with_identical_accuracy_except_long_passkey(inputs):
    checks, tables = ck.evaluate(inputs, list(ck.CHECK_IDS), SPECS)
    c = by_id(checks)
    for cid in ("runtime_flag", "logits", "perplexity", "throughput", "memory", "drift", "determinism"):
        assert c[cid].status == "pass", (cid, c[cid].error, [x.__dict__ for x in c[cid].criteria if not x.passed])
    assert c["context"].status == "pass"  # both miss the long passkey: drop 0
    assert tables["passkey"]["baseline"]["long"]["accuracy"] == 0.0
    assert tables["buckets"]["medium"]["ppl_baseline"] == pytest.approx(math.exp(2.0))
    assert ck.verdict(checks)


def test_perplexity_delta_fails(tmp_path, inputs):
    sage = inputs.sage
    for b in ("short", "medium", "long"):
        sage["phases"]["accuracy"][b]["npz"] = write_bucket(tmp_path / f"x_{b}.npz", 1000, 2.01)
    checks, tables = ck.evaluate(inputs, ["perplexity", "context"], SPECS)
    c = by_id(checks)
    assert c["perplexity"].status == "fail"
    want = math.exp(2.01) / math.exp(2.0) - 1
    assert tables["buckets"]["medium"]["ppl_rel_delta"] == pytest.approx(want)
    assert c["context"].status == "fail"
    assert not ck.verdict(checks)


def test_perplexity_lower_than_baseline_beyond_the_bar_fails_too(tmp_path, inputs):
    """|Δ| is what the bar limits: a sage perplexity 1 % *below* the baseline is a change, not a win."""
    for b in ("short", "medium", "long"):
        inputs.sage["phases"]["accuracy"][b]["npz"] = write_bucket(tmp_path / f"lo_{b}.npz", 1000, 1.99)
    checks, tables = ck.evaluate(inputs, ["perplexity", "context"], SPECS)
    c = by_id(checks)
    assert tables["buckets"]["medium"]["ppl_rel_delta"] == pytest.approx(math.exp(-0.01) - 1)
    crit = next(x for x in c["perplexity"].criteria if x.name == "|relative Δ perplexity|")
    assert crit.value == pytest.approx(1 - math.exp(-0.01)) and crit.passed is False
    assert c["perplexity"].status == "fail"
    assert c["context"].status == "fail"


def test_kl_and_top1_fail(tmp_path, inputs):
    for b in ("short", "medium", "long"):
        inputs.sage["phases"]["accuracy"][b]["npz"] = write_bucket(tmp_path / f"y_{b}.npz", 1000, 2.0, perturb=0.3)
    c = by_id(ck.evaluate(inputs, ["logits"], SPECS)[0])["logits"]
    assert c.status == "fail"
    kl = next(x for x in c.criteria if x.name.startswith("mean KL"))
    assert kl.value > 0.01 and kl.passed is False
    top1 = next(x for x in c.criteria if x.name.startswith("top-1 agreement"))
    assert top1.value == 0.0 and top1.floor == pytest.approx(0.98)


def test_misaligned_tokens_are_an_error_not_a_pass(tmp_path, inputs):
    path = tmp_path / "bad.npz"
    write_bucket(path, 500, 2.0)
    for b in ("short", "medium", "long"):
        inputs.sage["phases"]["accuracy"][b]["npz"] = str(path)
    c = by_id(ck.evaluate(inputs, ["logits", "perplexity"], SPECS)[0])
    assert c["logits"].status == "error"
    assert c["perplexity"].status == "error"


def test_no_counters_fails_runtime_flag(inputs):
    for snap in inputs.sage["stats"].values():
        snap["counters"] = {"prefill_8bit_layer_calls": 0, "extend_prefix_8bit_layer_calls": 0}
    c = by_id(ck.evaluate(inputs, ["runtime_flag"], SPECS)[0])["runtime_flag"]
    assert c.status == "fail"
    failed = {x.name for x in c.criteria if x.passed is False}
    assert any("prefill_8bit" in n for n in failed) and any("extend_prefix" in n for n in failed)


def test_default_backend_equal_to_sage_fails(inputs):
    inputs.base["flag_probe"]["resolved_default"] = "sage_attn"
    assert by_id(ck.evaluate(inputs, ["runtime_flag"], SPECS)[0])["runtime_flag"].status == "fail"


def test_missing_server_fails(inputs):
    inputs.server = None
    assert by_id(ck.evaluate(inputs, ["runtime_flag"], SPECS)[0])["runtime_flag"].status == "fail"


def test_engine_start_failure_is_error(inputs):
    inputs.sage = {"engine_started": False, "errors": {"engine_start": "ValueError: invalid choice"}}
    c = by_id(ck.evaluate(inputs, list(ck.CHECK_IDS), SPECS)[0])
    assert c["throughput"].status == "error" and "invalid choice" in c["throughput"].error
    assert c["determinism"].status == "error"
    assert c["logits"].status == "error"
    assert c["runtime_flag"].status == "fail"


def test_nondeterminism_fails(inputs):
    inputs.sage["phases"]["determinism"]["radix_hit"] = [{"output_ids": [1, 2, 4], "cached_tokens": 511}] * 3
    c = by_id(ck.evaluate(inputs, ["determinism"], SPECS)[0])["determinism"]
    assert c.status == "fail"


def test_throughput_ratio_and_rows(inputs):
    inputs.sage["phases"]["throughput"][0]["walls_s"] = [1.0]  # 10x slower prefill
    checks, tables = ck.evaluate(inputs, ["throughput"], SPECS)
    row = tables["throughput"]["baseline"][0]
    assert row["input_tok_s"] == pytest.approx(100 / 0.105)
    c = by_id(checks)["throughput"]
    assert c.status == "fail"
    assert c.criteria[0].value == pytest.approx(0.105)
    inputs.sage["phases"]["throughput"][0]["walls_s"] = [0.105 / 0.94]  # 0.94x: below issue #11's 0.95x
    c = by_id(ck.evaluate(inputs, ["throughput"], SPECS)[0])["throughput"]
    assert c.status == "fail" and c.criteria[0].value == pytest.approx(0.94)


def test_memory_growth_over_budget_fails(inputs):
    inputs.sage["memory"]["peak_nvml_mib"] = 5000.0 + 100 + 600
    c = by_id(ck.evaluate(inputs, ["memory"], SPECS)[0])["memory"]
    assert c.status == "fail"
    grow = next(x for x in c.criteria if x.name.startswith("peak memory growth"))
    assert grow.value == pytest.approx(600.0)


def test_dummy_weights_make_accuracy_not_applicable(inputs):
    inputs.accuracy_applicable = False
    checks, _ = ck.evaluate(inputs, list(ck.CHECK_IDS), SPECS)
    c = by_id(checks)
    assert {c[x].status for x in ck.ACCURACY_CHECKS} == {"n/a"}
    assert ck.verdict(checks)  # n/a does not fail, but is never shown as pass


def test_drift_threshold(inputs):
    inputs.drift["lengths"]["256"]["local_rel_l2"] = [0.01, 0.2]
    assert by_id(ck.evaluate(inputs, ["drift"], SPECS)[0])["drift"].status == "fail"
    inputs.drift = {"fatal": "CUDA error"}
    assert by_id(ck.evaluate(inputs, ["drift"], SPECS)[0])["drift"].status == "error"


def test_threshold_overrides():
    t = ck.parse_threshold_overrides(["kl_floor_factor=2"])
    assert t["kl_floor_factor"] == 2.0 and t["top1_max_gap_to_floor"] == 1.0 and t["kl_min_limit"] == 1e-3
    assert t["prefill_min_ratio"] == t["decode_min_ratio"] == 0.95  # issue #11
    with pytest.raises(ValueError):
        ck.parse_threshold_overrides(["kl_max=1"])  # the pre-floor absolute limits are gone: a clear error
    with pytest.raises(ValueError):
        ck.parse_threshold_overrides(["kl_floor_factor"])


def test_empty_selection_is_not_a_pass():
    assert not ck.verdict([])


def test_report_render_and_plots(tmp_path, inputs):
    checks, tables = ck.evaluate(inputs, list(ck.CHECK_IDS), SPECS)
    rep = {"verdict": "pass", "environment": {"gpu": {"name": "NVIDIA H200"}, "packages": {"sglang": "0.5.17"},
                                              "command": "python verify.py", "git": {"commit": "abc"}},
           "model": {"path": "/m", "source": "test"}, "config": {"baseline_backend": "triton",
                                                                 "sage_backend": "sage_attn"},
           "thresholds": ck.default_thresholds(), "checks": [c.as_dict() for c in checks], "tables": tables,
           "stages": {"baseline": {"status": "done", "seconds": 1.0, "log": "logs/baseline.log"}},
           "corpus": {"name": "c", "sha256": "0" * 64, "tokens": 10}, "bad": float("nan")}
    md = report.render_md(rep)
    assert "# sage_attn verification — SGLang 0.5.17 on NVIDIA H200" in md
    assert "**Verdict: PASS**" in md
    assert "| perplexity | perplexity baseline |" in md
    assert "## Accuracy per context bucket" in md and "## Throughput" in md and "## Memory" in md
    assert "## Activation drift" in md
    report.write_json(rep, tmp_path / "report.json")
    back = json.loads((tmp_path / "report.json").read_text())
    assert back["bad"] == "nan" and back["verdict"] == "pass"
    assert report.fmt(1.23456e-5) == "1.23e-05" and report.fmt(12345.6) == "12,346" and report.fmt(True) == "yes"
    made = plots.make_all(tables, ck.default_thresholds(), tmp_path)
    for name in ("drift_over_depth.png", "context_buckets.png", "throughput.png"):
        assert made[name] == name, made[name]
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plots_report_missing_data_without_raising(tmp_path):
    made = plots.make_all({}, ck.default_thresholds(), tmp_path)
    assert all(v.startswith("error:") for v in made.values())


def test_installed_overlay_must_be_this_checkout(inputs):
    inputs.overlay = {"checked": True, "identical": False, "differ": ["srt/x.py"], "missing": [],
                      "exact_expected": True}
    assert by_id(ck.evaluate(inputs, ["runtime_flag"], SPECS)[0])["runtime_flag"].status == "fail"
    inputs.overlay["exact_expected"] = False  # another SGLang release: patched overlay copies are expected
    assert by_id(ck.evaluate(inputs, ["runtime_flag"], SPECS)[0])["runtime_flag"].status == "pass"
    inputs.overlay = {"checked": True, "identical": True, "differ": [], "missing": [], "exact_expected": True}
    assert by_id(ck.evaluate(inputs, ["runtime_flag"], SPECS)[0])["runtime_flag"].status == "pass"


# ---- the floor (issue #12), compared configurations and the speed model (issue #19) ---------------------


def crit(check, prefix):
    return next(x for x in check.criteria if x.name.startswith(prefix))


def set_acc(tmp_path, res, tag, **kw):
    """New npz files (new names: the bucket tables are cached per path) for every bucket of one result."""
    for b in ("short", "medium", "long"):
        res["phases"]["accuracy"][b]["npz"] = write_bucket(tmp_path / f"{tag}_{b}.npz", 1000, 2.0, **kw)


def set_sage(tmp_path, inputs, **kw):
    set_acc(tmp_path, inputs.sage, "sg" + "_".join(f"{k}{v}" for k, v in kw.items()), **kw)


def test_top1_is_judged_against_the_floor_not_an_absolute_99(tmp_path, inputs):
    set_sage(tmp_path, inputs, flip=0.028)  # 97.2 %: fails the old absolute 99 %, 0.8 points below the floor (98 %)
    c = by_id(ck.evaluate(inputs, ["logits", "context"], SPECS)[0])
    top1 = crit(c["logits"], "top-1 agreement")
    assert top1.value == pytest.approx(0.972) and top1.floor == pytest.approx(0.98)
    assert top1.threshold == pytest.approx(0.97) and top1.passed
    assert "0.80 points below the floor" in top1.note
    assert crit(c["context"], "long (context").passed
    set_sage(tmp_path, inputs, flip=0.031)  # 1.1 points below the floor
    c = by_id(ck.evaluate(inputs, ["logits", "context"], SPECS)[0])
    assert crit(c["logits"], "top-1 agreement").passed is False and c["logits"].status == "fail"
    assert all(not x.passed for x in c["context"].criteria if "top-1" in x.name) and c["context"].status == "fail"


def test_kl_limit_is_three_times_the_floor_with_an_absolute_minimum(tmp_path, inputs):
    t = ck.default_thresholds()
    assert ck.kl_limit(1e-5, t) == 1e-3 and ck.kl_limit(1e-3, t) == pytest.approx(3e-3)
    set_acc(tmp_path, inputs.floor, "fl_small", kl=0.005)  # floor KL ~9e-5
    set_sage(tmp_path, inputs, kl=0.02)  # ~1.4e-3: over 1e-3, the limit a small floor gets
    checks, tables = ck.evaluate(inputs, ["logits"], SPECS)
    kl = crit(by_id(checks)["logits"], "mean KL")
    floor_kl = tables["floor"]["pooled"]["mean_kl"]
    assert 0 < floor_kl < 1e-3 / 3 and kl.floor == floor_kl
    assert kl.threshold == 1e-3 and kl.value > 1e-3 and kl.passed is False
    assert tables["kl_limits"]["medium"] == 1e-3
    set_sage(tmp_path, inputs, kl=0.01)  # ~3.5e-4: 4x the floor, but under the 1e-3 minimum
    kl = crit(by_id(ck.evaluate(inputs, ["logits"], SPECS)[0])["logits"], "mean KL")
    assert kl.value > 3 * kl.floor and kl.passed
    # a larger floor (~3e-3) raises the limit to 3x of it: the 1.4e-3 sage now passes
    set_acc(tmp_path, inputs.floor, "fl_large", kl=0.03)
    set_sage(tmp_path, inputs, kl=0.02)
    kl = crit(by_id(ck.evaluate(inputs, ["logits"], SPECS)[0])["logits"], "mean KL")
    assert kl.threshold == pytest.approx(3 * kl.floor) and kl.threshold > 1e-3 and kl.passed


def test_kl_above_three_floors_fails(tmp_path, inputs):
    set_acc(tmp_path, inputs.floor, "fl3", kl=0.03)
    set_sage(tmp_path, inputs, kl=0.06)  # ~4x the floor's KL
    kl = crit(by_id(ck.evaluate(inputs, ["logits"], SPECS)[0])["logits"], "mean KL")
    assert kl.value > 3 * kl.floor > 1e-3 and kl.passed is False


def test_missing_floor_fails_never_passes(inputs):
    inputs.floor = None
    c = by_id(ck.evaluate(inputs, ["logits", "perplexity", "context"], SPECS)[0])
    assert c["logits"].status == "fail" and c["context"].status == "fail"
    top1 = crit(c["logits"], "top-1 agreement")
    assert top1.passed is False and "floor (flashinfer) not measured" in top1.note and top1.threshold is None
    assert c["perplexity"].status == "pass"  # |Δ ppl| is absolute; the floor is only shown beside it
    inputs.floor = {"engine_started": False, "errors": {"engine_start": "ValueError: no flashinfer"}}
    c = by_id(ck.evaluate(inputs, ["logits"], SPECS)[0])["logits"]
    assert "no flashinfer" in crit(c, "top-1 agreement").note and c.status == "fail"


def test_floor_on_other_positions_is_refused(tmp_path, inputs):
    del inputs.floor["phases"]["accuracy"]["long"]  # floor pooled over 2 buckets, sage over 3
    c = by_id(ck.evaluate(inputs, ["logits", "context"], SPECS)[0])
    assert "not the same positions" in crit(c["logits"], "top-1 agreement").note
    assert c["logits"].status == "fail"
    long_top1 = next(x for x in c["context"].criteria if x.name.startswith("long") and "top-1" in x.name)
    assert long_top1.passed is False
    bad = tmp_path / "floor_bad.npz"
    write_bucket(bad, 500, 2.0)
    inputs.floor["phases"]["accuracy"]["medium"]["npz"] = str(bad)  # other token ids than the baseline's
    checks, tables = ck.evaluate(inputs, ["context"], SPECS)
    assert "not aligned" in tables["floor"]["medium"]["error"]
    med = next(x for x in by_id(checks)["context"].criteria if x.name.startswith("medium") and "top-1" in x.name)
    assert med.passed is False and "not aligned" in med.note


def test_ppl_delta_shows_the_floor(tmp_path, inputs):
    for b in ("short", "medium", "long"):
        inputs.floor["phases"]["accuracy"][b]["npz"] = write_bucket(tmp_path / f"fppl_{b}.npz", 1000, 2.001)
    c = by_id(ck.evaluate(inputs, ["perplexity"], SPECS)[0])["perplexity"]
    d = crit(c, "|relative Δ perplexity|")
    assert d.floor == pytest.approx(math.exp(0.001) - 1) and d.value == 0.0 and d.passed


def test_compare_configuration_is_shown_not_judged(tmp_path, inputs):
    inputs.compare = {"fa3+fp8_e4m3": results(tmp_path, "c", 2.0, 0.0, "fa3", 0, 0.05, flip=0.05, kl=0.05),
                      "fa3": None}
    checks, tables = ck.evaluate(inputs, ["logits", "perplexity", "throughput"], SPECS)
    c = by_id(checks)
    assert c["logits"].status == "pass"  # a poor compared configuration does not fail sage
    row = crit(c["logits"], "fa3+fp8_e4m3 vs baseline: top-1")
    assert row.value == pytest.approx(0.95) and row.passed is None and row.floor == pytest.approx(0.98)
    assert crit(c["logits"], "fa3 vs baseline").passed is None
    assert tables["compare"]["fa3+fp8_e4m3"]["medium"]["positions"] == 1000 and tables["compare"]["fa3"] == {}
    assert tables["throughput"]["compare"]["fa3+fp8_e4m3"][0]["input_tok_s"] > 0
    assert crit(c["perplexity"], "fa3+fp8_e4m3: |relative").passed is None


def speed_res(tmp_path, tag, backend, walls, counters=0, skip_32k=False):
    r = results(tmp_path, tag, 2.0, 0.0, backend, counters, walls)
    rows = []
    for n in (4096, 32768):
        for b in (1, 32):
            row = {"shape": f"prefill {n // 1024}K", "kind": "prefill", "batch": b, "input_len": n, "output_len": 1,
                   "walls_s": [walls * b * n / 4096], "input_tokens": b * n, "output_tokens": b,
                   "mean_e2e_latency_s": walls}
            if skip_32k and n == 32768 and b == 32:
                row = {k: row[k] for k in ("shape", "kind", "batch", "input_len", "output_len")}
                row["skipped"] = "time budget (12s left, ~40s needed)"
            rows.append(row)
    r["phases"] = {"throughput": rows}
    return r


def test_speed_model_rows_are_judged(tmp_path, inputs):
    inputs.speed = {"baseline": speed_res(tmp_path, "sb", "triton", 0.1),
                    "sage": speed_res(tmp_path, "ss", "sage_attn", 0.09, counters=64),
                    "fa3+fp8_e4m3": speed_res(tmp_path, "sc", "fa3", 0.08)}
    inputs.speed_label, inputs.speed_left_out = "Llama-3.1-8B geometry", ["decode 32K batch 32: too big"]
    checks, tables = ck.evaluate(inputs, ["throughput"], SPECS)
    c = by_id(checks)["throughput"]
    assert c.status == "pass", [x.__dict__ for x in c.criteria if x.passed is False]
    r = crit(c, "Llama-3.1-8B geometry: prefill 32K (prompt 32768, 1 new), batch 32")
    assert r.value == pytest.approx(0.1 / 0.09)
    assert crit(c, "Llama-3.1-8B geometry: sage prefill_8bit").value == 64
    assert crit(c, "Llama-3.1-8B geometry: left out").value == "decode 32K batch 32: too big"
    assert len(tables["speed"]["compare"]["fa3+fp8_e4m3"]) == 4
    inputs.speed["sage"] = speed_res(tmp_path, "ss2", "sage_attn", 0.09, counters=0, skip_32k=True)
    c = by_id(ck.evaluate(inputs, ["throughput"], SPECS)[0])["throughput"]
    assert c.status == "fail"
    assert "time budget" in crit(c, "Llama-3.1-8B geometry: prefill 32K (prompt 32768, 1 new), batch 32").note
    assert crit(c, "Llama-3.1-8B geometry: sage prefill_8bit").passed is False
    inputs.speed["sage"] = None  # stage never ran: every planned row fails, the check does not pass
    c = by_id(ck.evaluate(inputs, ["throughput"], SPECS)[0])["throughput"]
    assert c.status == "fail" and any("sage row missing" in x.note for x in c.criteria)


def test_missing_smollm_rows_fail_even_when_the_speed_model_passes(tmp_path, inputs):
    inputs.speed = {"baseline": speed_res(tmp_path, "sb", "triton", 0.1),
                    "sage": speed_res(tmp_path, "ss", "sage_attn", 0.09, counters=64)}
    inputs.sage["phases"].pop("throughput")
    c = by_id(ck.evaluate(inputs, ["throughput"], SPECS)[0])["throughput"]
    assert c.status == "fail" and any("sage row missing" in x.note for x in c.criteria)


def test_report_has_floor_compare_and_speed_columns(tmp_path, inputs):
    inputs.compare = {"fa3+fp8_e4m3": results(tmp_path, "c", 2.0, 0.0, "fa3", 0, 0.05, flip=0.05, kl=0.05)}
    inputs.speed = {"baseline": speed_res(tmp_path, "sb", "triton", 0.1),
                    "sage": speed_res(tmp_path, "ss", "sage_attn", 0.09, counters=64),
                    "fa3+fp8_e4m3": speed_res(tmp_path, "sc", "fa3", 0.08)}
    inputs.speed_label = "Llama-3.1-8B geometry"
    checks, tables = ck.evaluate(inputs, list(ck.CHECK_IDS), SPECS)
    rep = {"verdict": "pass", "environment": {"gpu": {"name": "NVIDIA H200"}},
           "config": {"baseline_backend": "triton", "sage_backend": "sage_attn", "floor_backend": "flashinfer",
                      "compare_configs": ["fa3+fp8_e4m3"]},
           "speed_model": {"path": "/w/speed", "source": "Llama-3.1-8B geometry"},
           "checks": [c.as_dict() for c in checks], "tables": tables}
    md = report.render_md(rep)
    assert "| check | criterion | measured | floor (flashinfer) | threshold | result | note |" in md
    assert "| top-1 sage | top-1 floor | mean KL sage | mean KL floor | KL limit |" in md
    assert "| medium | 1,000 | 100.00 % | 98.00 % |" in md
    assert "### Compared configurations" in md and "| fa3+fp8_e4m3 | pooled | 3,000 | 95.00 % |" in md
    assert "### Llama-3.1-8B geometry (dummy weights)" in md and "| sage/fa3+fp8_e4m3 |" in md
    assert "- floor (another exact backend vs the baseline, same positions): `flashinfer`" in md
    assert "- compared configurations: `fa3+fp8_e4m3`" in md
    made = plots.make_all(tables, ck.default_thresholds(), tmp_path)
    for name in ("context_buckets.png", "throughput.png", "throughput_speed_model.png"):
        assert made[name] == name, made[name]
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_old_report_still_renders():
    """A schema-1 report (noise_floor table, no floor/compare/speed keys) renders: `apply.py pr` may cite one."""
    from pathlib import Path

    old = json.loads((Path(__file__).resolve().parents[2] / "reports/0.5.17/nvidia-h200/report.json").read_text())
    md = report.render_md(old)
    assert "## Accuracy per context bucket" in md and "## Throughput" in md


# ---- golden: every criterion's name, value, threshold, unit, note and verdict, in several scenarios ---------------
#
# The report shows these texts and numbers verbatim, so they are compared in full against tests/verify/golden/.
# After an intended change: SGLANG_SAGE_UPDATE_GOLDEN=1 python -m pytest tests/verify/test_checks_report.py -k golden
# (rewrites the file and fails once), then review the diff.

GOLDEN = Path(__file__).resolve().parent / "golden" / "checks.json"


def _degraded(tmp_path, inp: ck.Inputs) -> None:
    """A run where many things went partly wrong: each check takes its less common branches."""
    inp.base["flag_probe"] = {
        "field_default": "",
        "auto_selector_mentions_sage": False,
        "resolved_default_error": "RuntimeError: no GPU",
        "cli_flag_error": "invalid choice: 'sage_attn'",
        "choices_has_sage": False,
    }
    inp.overlay = {"checked": True, "identical": False, "differ": ["srt/x.py"], "missing": ["srt/y.py"]}
    stats = inp.sage["stats"]
    stats["after_throughput"] = stats.pop("final")
    inp.sage["radix_hit_counter_delta"] = {"extend_prefix_8bit_layer_calls": 30}
    inp.server = {"ok": False, "error": "connection refused", "cmd": ["python", "-m", "sglang.launch_server"],
                  "start_s": 12.5, "engine_text_same": False, "stats": {}}  # fmt: skip
    del inp.sage["phases"]["accuracy"]["medium"]["npz"]
    inp.sage["phases"]["accuracy"]["medium"]["error"] = "CUDA out of memory"
    inp.base["phases"]["passkey"] = [t for t in inp.base["phases"]["passkey"] if t["bucket"] != "short"]
    inp.sage["phases"]["throughput"][1] = {"shape": "decode", "batch": 32, "skipped": "time budget"}
    inp.base["phases"]["throughput"].append({"shape": "decode", "batch": 1, "walls_s": []})
    inp.sage["memory"] = {"before_start_nvml_mib": 1000.0, "after_start_nvml_mib": 6000.0, "peak_nvml_mib": 7000.0,
                          "before_start_torch": {"used_mib": 10.0}, "after_start_torch": {"used_mib": 4010.0},
                          "nvml_error": "partial"}  # fmt: skip
    inp.sage["server_info"]["max_total_num_tokens"] = 900
    inp.drift["errors"] = {"4096": "OutOfMemoryError: tried to allocate"}
    inp.drift["kernel_source"] = "overlay"
    inp.sage["phases"]["determinism"]["radix_hit"] = [{"output_ids": [1, 2, 3], "cached_tokens": 0}] * 2
    inp.sage["phases"]["determinism"]["after_flush"] = [{"output_ids": [9], "cached_tokens": 0}]


def _near_floor(tmp_path, inp: ck.Inputs) -> None:
    """sage a little off the baseline on every position: the criteria against the floor get real numbers."""
    for b in ("short", "medium", "long"):
        inp.sage["phases"]["accuracy"][b]["npz"] = write_bucket(tmp_path / f"s2_{b}.npz", 1000, 2.002, kl=0.005)


def _engine_down(tmp_path, inp: ck.Inputs) -> None:
    inp.sage = {"engine_started": False, "errors": {"engine_start": "ValueError: invalid choice"}}
    inp.base.pop("flag_probe")
    inp.server = None
    inp.drift = {"fatal": "CUDA error: no kernel image"}


def _dummy(tmp_path, inp: ck.Inputs) -> None:
    inp.accuracy_applicable = False
    inp.notes = {"accuracy": "dummy weights: accuracy is meaningless"}
    inp.sage["phases"]["throughput"] = []
    inp.sage["errors"] = {"throughput": "RuntimeError: engine died", "determinism": "not run"}
    del inp.sage["phases"]["determinism"]


def _no_data(tmp_path, inp: ck.Inputs) -> None:
    inp.base, inp.sage, inp.drift = None, None, None


def _stats_variants(tmp_path, inp: ck.Inputs) -> None:
    """Counters from the latest snapshot there is; the radix-hit delta is after − before."""
    c = {"prefill_8bit_layer_calls": 111, "extend_prefix_8bit_layer_calls": 400}
    inp.sage["stats"] = {
        "before_radix_hit": {"counters": {"prefill_8bit_layer_calls": 5, "extend_prefix_8bit_layer_calls": 7}},
        "after_passkey": {"counters": c, "processes": 2},
        "after_accuracy": {"counters": {"prefill_8bit_layer_calls": 222}, "processes": 3},
        "after_partial_prefix": {"counters": {"prefill_8bit_layer_calls": 333, "extend_prefix_8bit_layer_calls": 50}},
    }
    inp.base["stats"] = {}  # a baseline without counter snapshots: the "not fake" criterion is not added
    inp.base["flag_probe"] = {
        "field_default": "sage_attn",
        "auto_selector_mentions_sage": False,
        "cli_flag_backend": None,
    }
    inp.overlay = {"checked": True, "identical": True, "exact_expected": False}


def _stats_later(tmp_path, inp: ck.Inputs) -> None:
    inp.sage["stats"] = {
        "before_radix_hit": {"counters": {"prefill_8bit_layer_calls": 5}},  # no extend counter yet: counts as 0
        "after_accuracy": {"counters": {"prefill_8bit_layer_calls": 222}},
        "after_partial_prefix": {"counters": {"extend_prefix_8bit_layer_calls": 50}},
    }
    inp.base["flag_probe"] = {"field_default": None, "auto_selector_mentions_sage": True,
                              "resolved_default_error": "E" * 300}  # fmt: skip
    inp.overlay = {"checked": True, "identical": False, "differ": [], "missing": ["x"], "exact_expected": False}


def _stats_last(tmp_path, inp: ck.Inputs) -> None:
    inp.sage["stats"] = {"after_partial_prefix": {"counters": {"prefill_8bit_layer_calls": 333}}}
    inp.base["flag_probe"] = {}
    inp.overlay = {"checked": False}
    inp.sage["server_info"] = {"attention_backend": "triton"}


def _long_errors(tmp_path, inp: ck.Inputs) -> None:
    inp.sage = {"engine_started": False, "errors": {"engine_start": "S" * 1000},
                "server_info": {"attention_backend": "sage_attn"}}  # fmt: skip
    inp.drift = {"fatal": "F" * 1000, "lengths": inp.drift["lengths"]}  # fatal wins even with data


def _odd_tables(tmp_path, inp: ck.Inputs) -> None:
    """Buckets that failed in different ways, rows skipped on either side, odd memory and determinism data."""
    acc_b, acc_s = inp.base["phases"]["accuracy"], inp.sage["phases"]["accuracy"]
    acc_b["short"] = {"skipped": "time budget"}
    acc_s["medium"]["npz"] = str(tmp_path / "gone.npz")  # unreadable: an error row, the others still count
    acc_b["long"] = {"error": "OOM"}
    acc_s["long"] = {"skipped": "too long"}
    inp.base["phases"]["odd"] = Path("/x")  # not JSON: the table cache key must still work
    inp.base["phases"]["passkey"] = [{"bucket": "short", "answer": None, "key": "12345"}]
    inp.sage["phases"]["passkey"] = [{"bucket": "short"}]  # broken trial: the table records the error
    tp_b, tp_s = inp.base["phases"]["throughput"], inp.sage["phases"]["throughput"]
    tp_b[0] = {"shape": "prefill", "batch": 1, "skipped": "time budget"}
    tp_s.insert(0, {"shape": "decode", "batch": 8, "skipped": "oom"})
    tp_s.append({"shape": "decode", "batch": 4, "input_len": 8, "output_len": 2, "walls_s": [1.0],
                 "input_tokens": 8, "output_tokens": 8, "ttft_wall_s": 0.25})  # fmt: skip
    tp_s.append({"shape": "prefill", "batch": 2, "input_len": 8, "output_len": 1, "walls_s": [0.5, 0.7],
                 "input_tokens": 16, "output_tokens": 2})  # fmt: skip
    tp_b.append({"shape": "decode", "batch": 4, "input_len": 8, "output_len": 2, "walls_s": [1.0],
                 "input_tokens": 8, "output_tokens": 8})  # fmt: skip
    tp_b.append({"shape": "prefill", "batch": 2, "skipped": "no data"})
    inp.base["memory"] = {"after_start_nvml_mib": 5000.0, "peak_nvml_mib": 4000.0, "after_start_torch": {"used_mib": 1}}
    inp.base["server_info"] = {"attention_backend": "triton", "memory_usage": 12.5}
    inp.sage["memory"] = {"before_start_nvml_mib": 1000.0, "before_start_torch": {"used_mib": 1}}
    det = inp.sage["phases"]["determinism"]
    det["cold"] = [{"output_ids": [1]}, {"output_ids": [2]}]
    det["radix_hit"] = [{"output_ids": [1], "cached_tokens": None}]
    del det["after_flush"]
    inp.sage["errors"] = {"throughput": "T" * 600}
    lengths = inp.drift["lengths"]
    lengths["4096"] = {**lengths["256"], "propagated_rel_l2": [0.01, 0.03, 0.3], "propagated_cos": [1, 0.99, 0.9]}
    lengths["1024"] = lengths.pop("256")
    inp.drift["errors"] = {"16384": "X" * 400}


def _dummy_no_note(tmp_path, inp: ck.Inputs) -> None:
    inp.accuracy_applicable = False
    inp.drift = {"errors": {"256": "boom"}}


SCENARIOS = {
    "all_pass": None,
    "degraded": _degraded,
    "near_floor": _near_floor,
    "engine_down": _engine_down,
    "dummy_weights": _dummy,
    "no_data": _no_data,
    "stats_variants": _stats_variants,
    "stats_later": _stats_later,
    "stats_last": _stats_last,
    "long_errors": _long_errors,
    "odd_tables": _odd_tables,
    "dummy_no_note": _dummy_no_note,
}
SPECS_NO_LONG = {**SPECS, "long": None}


def _normal(obj, tmp: str):
    """JSON-able, tmp paths replaced, floats to 12 significant digits (the golden is about texts and verdicts)."""
    if isinstance(obj, dict):
        return {str(k): _normal(v, tmp) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_normal(v, tmp) for v in obj]
    if isinstance(obj, (bool, type(None))):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if not math.isfinite(x) or x == 0 else float(f"{x:.12g}")
    if isinstance(obj, str):
        return obj.replace(tmp, "<tmp>")
    return repr(obj)


def _evaluate_all(tmp_path, inputs_factory) -> dict:
    out = {}
    for name, change in SCENARIOS.items():
        inp = inputs_factory(tmp_path / name)
        if change is not None:
            change(tmp_path / name, inp)
        specs = {"degraded": SPECS_NO_LONG, "odd_tables": {**SPECS, "medium": None}}.get(name, SPECS)
        checks, tables = ck.evaluate(inp, list(ck.CHECK_IDS), specs)
        tables = {k: v for k, v in tables.items() if k != "drift"}  # the drift table is the input itself
        doc = {"checks": [c.as_dict() for c in checks], "tables": tables, "verdict": ck.verdict(checks)}
        out[name] = json.loads(json.dumps(_normal(doc, str(tmp_path)), allow_nan=True))
    return out


def _make_inputs(path):
    path.mkdir(parents=True)
    return inputs.__wrapped__(path)


def test_golden_checks_and_tables(tmp_path):
    got = _evaluate_all(tmp_path, _make_inputs)
    if os.environ.get("SGLANG_SAGE_UPDATE_GOLDEN") or not GOLDEN.is_file():
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
        pytest.fail(f"wrote {GOLDEN}: review it and run again")
    want = json.loads(GOLDEN.read_text())
    assert set(got) == set(want)
    for name in want:
        for a, b in zip(got[name]["checks"], want[name]["checks"]):
            assert a == b, (name, a["id"])
        assert got[name] == want[name], name


# ---- the small pieces, exactly ----------------------------------------------------------------------------------


def test_criterion_evaluate():
    c = ck.Criterion("x", None, ">", 1, note="why").evaluate()
    assert c.passed is False and c.note == "why; not measured"
    c = ck.Criterion("x", math.nan, ">", 1).evaluate()
    assert c.passed is False and c.note == "not measured"
    assert ck.Criterion("x", 2, ">", 1).evaluate().passed is True
    assert ck.Criterion("x", 2).evaluate().passed is None  # informational


@pytest.mark.parametrize("status", ["n/a", "skipped", "error"])
def test_finish_keeps_a_decided_status(status):
    c = ck.Check("x", "t", status=status)
    c.add("failing", 0, ">", 1)
    assert c.finish().status == status


def test_finish_without_judged_criteria_is_an_error():
    c = ck.Check("x", "t")
    c.add("info only", 1)
    assert (c.finish().status, c.error) == ("error", "no criterion could be evaluated")
    c = ck.Check("x", "t", error="the stage crashed")
    assert (c.finish().status, c.error) == ("error", "the stage crashed")


def test_threshold_override_messages():
    with pytest.raises(ValueError, match="^--threshold expects NAME=VALUE, got 'kl_floor_factor'$"):
        ck.parse_threshold_overrides(["kl_floor_factor"])
    known = ", ".join(ck.THRESHOLDS)
    with pytest.raises(ValueError, match=f"^unknown threshold 'kl_mx'; known: {re.escape(known)}$"):
        ck.parse_threshold_overrides(["kl_mx=1"])
    with pytest.raises(ValueError, match="could not convert string to float: '1=2'"):
        ck.parse_threshold_overrides(["kl_floor_factor=1=2"])  # only the first '=' separates
    assert ck.parse_threshold_overrides([" kl_floor_factor =0.5"])["kl_floor_factor"] == 0.5


def test_compare_bucket_refuses_misaligned_tokens(tmp_path):
    a = ck.load_npz(write_bucket(tmp_path / "a.npz", 10, 2.0))
    b = dict(a, tok=a["tok"][::-1].copy())  # same shape, other tokens
    msg = "^baseline and sage scored different tokens: inputs are not aligned$"
    with pytest.raises(ValueError, match=msg):
        ck.compare_bucket(a, b)
    with pytest.raises(ValueError, match=msg):
        ck.compare_bucket(a, dict(a, tok=a["tok"][:5]))


def test_a_crashing_check_is_an_error_row(inputs):
    del inputs.thresholds["drift_local_max_rel_l2"]
    (c,) = ck.evaluate(inputs, ["drift"], SPECS)[0]
    assert c.as_dict() == {
        "id": "drift",
        "title": ck.CHECK_TITLES["drift"],
        "status": "error",
        "error": "KeyError: 'drift_local_max_rel_l2'",
        "criteria": [],
        "info": {},
    }


def test_safe_tables():
    assert ck._safe(ck.passkey_table, {"phases": {"passkey": [{}]}}) == {"error": "KeyError: 'bucket'"}
    assert ck._safe(ck.throughput_rows, {"phases": {"throughput": [{"walls_s": [1]}]}}, []) == []
    assert ck._safe(ck.passkey_table, None) == {} and ck._safe(ck.throughput_rows, {}, []) == []
