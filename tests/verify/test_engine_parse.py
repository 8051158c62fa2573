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


def test_warm_count_and_reps():
    assert engine_runner.warm_count(1, 32768) == 1
    assert engine_runner.warm_count(32, 32768) == 2  # not a second 1M-token batch
    assert engine_runner.warm_count(32, 4096) == 16
    assert engine_runner.warm_count(32, 64) == 32
    assert engine_runner._reps_of({"reps": {"1": 3, "32": 1}}, 32) == 1
    assert engine_runner._reps_of({"reps": 2}, 7) == 2
    assert engine_runner._reps_of({"reps": {"1": 3}}, 4) == 1


class _StubEngine:
    """Answers generate() instantly with max_new_tokens ids; records the batch sizes it was sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def generate(self, input_ids, sampling_params, **_kw):
        self.calls.append((len(input_ids), len(input_ids[0])))
        n = sampling_params["max_new_tokens"]
        return [{"output_ids": [7] * n, "meta_info": {"completion_tokens": n, "e2e_latency": 0.001}}
                for _ in input_ids]

    def flush_cache(self):
        return None


def _worker(tmp_path, shapes):
    wl = tmp_path / "w.json"
    wl.write_text(json.dumps({"tokens": list(range(100, 20100)), "throughput": shapes}))
    job = {"tag": "t", "work_dir": str(tmp_path), "result_path": str(tmp_path / "r.json"), "workload_path": str(wl),
           "engine_kwargs": {"attention_backend": "triton"}, "phases": ["throughput"], "signature": "abc"}
    w = engine_runner.Worker(job)
    w.engine = _StubEngine()
    return w


def test_throughput_rows_skip_what_does_not_fit_and_say_why(tmp_path):
    shapes = [{"name": "prefill 1K", "kind": "prefill", "input_len": 1024, "output_len": 1, "batches": [1, 8],
               "reps": {"1": 3, "8": 1}},
              {"name": "decode 1K", "kind": "decode", "input_len": 1024, "output_len": 8, "batches": [1, 8],
               "reps": {"1": 1, "8": 1}}]
    w = _worker(tmp_path, shapes)
    w.res.data["server_info"] = {"max_total_num_tokens": 4000}  # decode b=8 keeps 8 x 1032 tokens: too many
    w.run_throughput()
    rows = {(r["shape"], r["batch"]): r for r in w.res.data["phases"]["throughput"]}
    assert rows[("prefill 1K", 1)]["walls_s"] and len(rows[("prefill 1K", 1)]["walls_s"]) == 3
    assert rows[("prefill 1K", 8)]["input_tokens"] == 8 * 1024 and rows[("prefill 1K", 8)]["kind"] == "prefill"
    assert "KV pool holds 4,000 tokens" in rows[("decode 1K", 8)]["skipped"]
    assert rows[("decode 1K", 1)]["output_tokens"] == 8 and "ttft_wall_s" in rows[("decode 1K", 1)]
    assert json.loads((tmp_path / "r.json").read_text())["job_signature"] == "abc"
    w = _worker(tmp_path, shapes)
    w.deadline = __import__("time").time() + 5  # less than any row needs
    w.run_throughput()
    assert all("time budget" in r["skipped"] for r in w.res.data["phases"]["throughput"])
