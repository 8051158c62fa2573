"""Checks, report rendering and plots from fabricated worker results (the GPU workers' JSON/npz format)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from sglang_sage.verify import checks as ck
from sglang_sage.verify import plots, report

SPECS = {"short": {"window": 256, "stride": 128, "min_context": 128, "windows": 2},
         "medium": {"window": 2048, "stride": 512, "min_context": 1536, "windows": 2},
         "long": {"window": 8128, "stride": 1024, "min_context": 7104, "windows": 1}}


def write_bucket(path, n: int, nll: float, perturb: float = 0.0, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    k = 4
    probs = np.array([0.5, 0.2, 0.1, 0.05]) + perturb * np.array([-1, 1, 0, 0])  # perturb .3 swaps the top-1
    np.savez(path, tok=np.arange(n, dtype=np.int32), lp=np.full(n, -nll), window=np.zeros(n, np.int32),
             topk_ids=np.tile(np.arange(k), (n, 1)) + rng.integers(0, 1, (n, 1)),
             topk_lp=np.tile(np.log(probs), (n, 1)))
    return str(path)


def results(tmp_path, tag: str, nll: float, perturb: float, backend: str, counters: int, walls: float) -> dict:
    acc = {b: {"npz": write_bucket(tmp_path / f"{tag}_{b}.npz", 100, nll), "positions": 100}
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
    tp = [{"shape": "prefill", "batch": 1, "input_len": 100, "output_len": 1, "walls_s": [walls, walls * 1.1],
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
    return ck.Inputs(base=base, sage=sage, drift=drift, server=server, thresholds=ck.default_thresholds())


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
        sage["phases"]["accuracy"][b]["npz"] = write_bucket(tmp_path / f"x_{b}.npz", 100, 2.01)
    checks, tables = ck.evaluate(inputs, ["perplexity", "context"], SPECS)
    c = by_id(checks)
    assert c["perplexity"].status == "fail"
    want = math.exp(2.01) / math.exp(2.0) - 1
    assert tables["buckets"]["medium"]["ppl_rel_delta"] == pytest.approx(want)
    assert c["context"].status == "fail"
    assert not ck.verdict(checks)


def test_kl_and_top1_fail(tmp_path, inputs):
    for b in ("short", "medium", "long"):
        inputs.sage["phases"]["accuracy"][b]["npz"] = write_bucket(tmp_path / f"y_{b}.npz", 100, 2.0, perturb=0.3)
    c = by_id(ck.evaluate(inputs, ["logits"], SPECS)[0])["logits"]
    assert c.status == "fail"
    kl = next(x for x in c.criteria if x.name.startswith("mean KL"))
    assert kl.value > 0.01 and kl.passed is False
    top1 = next(x for x in c.criteria if x.name == "top-1 agreement")
    assert top1.value == 0.0


def test_misaligned_tokens_are_an_error_not_a_pass(tmp_path, inputs):
    path = tmp_path / "bad.npz"
    write_bucket(path, 50, 2.0)
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
    t = ck.parse_threshold_overrides(["kl_max=0.02"])
    assert t["kl_max"] == 0.02 and t["top1_min"] == 0.99
    with pytest.raises(ValueError):
        ck.parse_threshold_overrides(["kl_mx=1"])
    with pytest.raises(ValueError):
        ck.parse_threshold_overrides(["kl_max"])


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
    pytest.importorskip("matplotlib")
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
