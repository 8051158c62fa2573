"""Parsing SGLang 0.5.17's teacher-forcing output (format fabricated exactly as the scheduler builds it:
entries for positions logprob_start_len..len-1, the first one None)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sglang_sage import counters
from sglang_sage.verify import engine_runner
from sglang_sage.verify.metrics import Window


def fake_meta(tokens: list[int], start: int, k: int) -> dict:
    """What SGLang returns: position p's log-prob is -(p/10); top-k ids are p*100+j."""
    itl = [(None, tokens[start], None)] + [(-(p / 10), tokens[p], None) for p in range(start + 1, len(tokens))]
    itop = [None] + [[(-(p / 10) - j, p * 100 + j, None) for j in range(k)] for p in range(start + 1, len(tokens))]
    return {"input_token_logprobs": itl, "input_top_logprobs": itop}


def test_extract_scored_window():
    toks = list(range(1000, 1012))  # a window of 12 tokens: begin 3, score the last 4
    w = Window(begin=3, end=15, score_from=11)
    lps = w.logprob_start_len  # 7
    ex = engine_runner.extract_scored(fake_meta(toks, lps, 3), toks, lps, w.score_from - w.begin, 3)
    assert ex["pos"].tolist() == [8, 9, 10, 11]
    assert ex["tok"].tolist() == toks[8:12]
    assert ex["lp"] == pytest.approx([-0.8, -0.9, -1.0, -1.1])
    assert ex["topk_ids"].shape == (4, 3)
    assert ex["topk_ids"][0].tolist() == [800, 801, 802]


def test_extract_first_window_scores_from_position_one():
    toks = list(range(50, 58))
    ex = engine_runner.extract_scored(fake_meta(toks, 0, 2), toks, 0, 1, 2)
    assert ex["pos"].tolist() == list(range(1, 8))


def test_short_topk_rows_are_padded():
    toks = list(range(10))
    meta = fake_meta(toks, 0, 1)
    ex = engine_runner.extract_scored(meta, toks, 0, 1, 3)
    assert ex["topk_ids"][0].tolist()[1:] == [-1, -1]
    assert ex["topk_lp"][0][1] == -1e30


def test_misalignment_is_detected():
    toks = list(range(10))
    meta = fake_meta(toks, 0, 2)
    with pytest.raises(ValueError, match="mismatch"):
        engine_runner.extract_scored(meta, [t + 1 for t in toks], 0, 1, 2)
    with pytest.raises(ValueError, match="expected"):
        engine_runner.extract_scored(meta, toks, 1, 2, 2)  # wrong start length
    with pytest.raises(KeyError):
        engine_runner.extract_scored({}, toks, 0, 1, 2)


def test_none_at_scored_position_is_an_error():
    toks = list(range(6))
    meta = fake_meta(toks, 0, 0)
    with pytest.raises(ValueError, match="no log-prob"):
        engine_runner.extract_scored(meta, toks, 0, 0, 0)


def test_pick_server_info():
    info = {"attention_backend": "sage_attn", "max_total_num_tokens": 5, "junk": 1,
            "internal_states": [{"memory_usage": {"kvcache": 1.5}}]}
    out = engine_runner.pick_server_info(info)
    assert out == {"attention_backend": "sage_attn", "max_total_num_tokens": 5, "memory_usage": {"kvcache": 1.5}}


def test_read_counters_sums_processes(tmp_path):
    for pid, n in ((11, 3), (12, 4)):
        (tmp_path / f"sage_attn_stats_{pid}.json").write_text(json.dumps(
            {"pid": pid, "tp_rank": 0, "decode_backend": "triton",
             "counters": {"prefill_8bit_layer_calls": n, "decode_batches": 1}}))
    (tmp_path / "sage_attn_stats_13.json").write_text("{trunc")
    (tmp_path / "other.json").write_text("{}")
    d = counters.read_counters_detail(tmp_path)
    assert d["counters"]["prefill_8bit_layer_calls"] == 7
    assert d["counters"]["decode_batches"] == 2
    assert d["counters"]["extend_prefix_8bit_layer_calls"] == 0
    assert d["processes"] == 2 and d["decode_backends"] == ["triton"]
    assert d["unreadable"] == ["sage_attn_stats_13.json"]
    assert counters.read_counters(tmp_path)["prefill_8bit_layer_calls"] == 7
    assert counters.read_counters(tmp_path / "missing") == dict.fromkeys(counters.COUNTER_NAMES, 0)
    assert counters.counter_delta({"a": 1}, {"a": 4, "b": 2}) == {"a": 3, "b": 2}


def test_completion_tokens_fallback():
    assert engine_runner._completion_tokens({"meta_info": {"completion_tokens": 5}}) == 5
    assert engine_runner._completion_tokens({"output_ids": [1, 2]}) == 2


def test_perplexity_from_extracted_matches_hand_value():
    toks = list(range(20))
    ex = engine_runner.extract_scored(fake_meta(toks, 0, 1), toks, 0, 1, 1)
    want = math.exp(np.mean([p / 10 for p in range(1, 20)]))
    assert math.exp(-ex["lp"].mean()) == pytest.approx(want)


def test_mem_sampler_tracks_peak_with_nvml(monkeypatch):
    import sys
    import time
    import types

    used = iter([1, 5, 3] + [2] * 10_000)
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: ("h", i),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=next(used) * 2**20),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    s = engine_runner.MemSampler(period_s=0.001)
    assert s.error is None and s._handle == ("h", 3)
    s.start()
    time.sleep(0.05)
    s.stop()
    assert s.peak_mib == 5 and s.samples >= 3


def test_mem_sampler_without_nvml(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    s = engine_runner.MemSampler()
    assert s.used_mib() is None and "NVML unavailable" in s.error
    s.start()
    s.stop()
    assert s.peak_mib is None
