"""CPU tests of the FA3 rows, the issue #11 targets and the --tp plumbing of the benchmarks (issues #11,
#16, #19): fake results in, statuses and values out; the FA3 call checked against a reference
implementation of its documented contract; the e2e script's plan, arguments and decode timing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _results as R  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_helpers import load_bench as _load  # noqa: E402
from bench_helpers import run_script as _run  # noqa: E402


# ------------------------------------------------------------------------------------------------
# kernel benchmark: backend registry, FA3 call, issue #11 targets
# ------------------------------------------------------------------------------------------------
def test_every_display_entry_has_a_runner_and_back() -> None:
    bk = _load("bench_kernels")
    assert list(bk.BACKENDS) == list(R.KERNEL_BACKENDS)
    assert {"fa3", "fa3_fp8"} <= set(R.KERNEL_BACKENDS) and R.KERNEL_CANDIDATES == ("sage", "sage_sm90")
    assert bk.parse_args([]).backends.split(",") == list(R.KERNEL_BACKENDS)


def fake_fa3(
    q, k_cache, v_cache, page_table, cache_seqlens, cu_seqlens_q, cu_seqlens_k_new, max_seqlen_q, causal, softmax_scale
):
    """FA3's documented contract for a paged extend, written independently of the benchmark: request
    b's queries are rows cu_seqlens_q[b]:cu_seqlens_q[b+1]; its keys are the pages
    page_table[b, :cache_seqlens[b]] (page size 1); causal is aligned bottom-right; fp8 inputs are
    read as their values (no descale given)."""
    import torch

    assert page_table.dtype == torch.int32 and cache_seqlens.dtype == torch.int32
    assert cu_seqlens_q.dtype == torch.int32 and causal is True
    assert k_cache.shape[1] == 1, "page size 1: [slots, 1, Hkv, D]"
    assert int(cu_seqlens_k_new[-1]) == int(cache_seqlens.sum())
    out = torch.empty(q.shape, dtype=torch.bfloat16)
    hq, hkv = q.shape[1], k_cache.shape[2]
    for b in range(page_table.shape[0]):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        assert q1 - q0 <= max_seqlen_q
        n = int(cache_seqlens[b])
        idx = page_table[b, :n].long()
        k = k_cache[idx, 0].float().repeat_interleave(hq // hkv, dim=1)  # [n, Hq, D]
        v = v_cache[idx, 0].float().repeat_interleave(hq // hkv, dim=1)
        qb = q[q0:q1].float()
        s = torch.einsum("qhd,khd->hqk", qb, k) * softmax_scale
        pos = torch.arange(q1 - q0)[:, None] + (n - (q1 - q0))
        s.masked_fill_(torch.arange(n)[None, :] > pos, float("-inf"))
        out[q0:q1] = torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v).to(torch.bfloat16)
    return out


@pytest.mark.parametrize("fp8", [False, True])
def test_fa3_rows_call_the_paged_kernel_like_sglang(fp8: bool) -> None:
    """The FA3 rows pass the pool, a req_to_token-like page table (shuffled slots, a prefix) and the
    lengths so that FA3's contract computes exactly the benchmark's problem."""
    bk = _load("bench_kernels")
    shape = bk.Shape("t", 8, 2, 32, 2, 40, 0.5)
    inp = bk.make_inputs(shape, 0, 2.0, True, "cpu")
    rows = bk.pick_rows(shape.lq, 20)
    scale = 1 / math.sqrt(shape.d)
    ref = bk.exact_reference(inp["q"], inp["k_seq"], inp["v_seq"], shape, rows, scale)
    fn, to_packed, info, cm = bk.make_backend("fa3_fp8" if fp8 else "fa3", shape, inp, scale, {"fa3": fake_fa3})
    with cm():
        out = to_packed(fn())
    acc = bk.compare_rows(out, shape, rows, ref)
    if fp8:  # e4m3 keeps ~3 significant bits: visibly worse, still the same attention
        assert 0.99 < acc["cos"] < 0.99999 and acc["rel_l1"] > 0.005, acc
        assert "e4m3" in info["note"]
    else:
        assert acc["cos"] > 0.99999 and acc["rel_l1"] < 0.005, acc
    # the wrong page table (slots in pool order instead of each request's own) is caught
    bad = dict(inp, slots=inp["slots"].sort(dim=1).values)
    fn, to_packed, _, _ = bk.make_backend("fa3", shape, bad, scale, {"fa3": fake_fa3})
    assert bk.compare_rows(to_packed(fn()), shape, rows, ref)["cos"] < 0.99


def test_fa3_missing_is_a_recorded_reason_not_a_crash() -> None:
    bk = _load("bench_kernels")
    ctx = bk.init_backends(bk.parse_args(["--device", "cpu"]), ["fa3", "fa3_fp8", "flash"])
    assert "WITH_FA3=1" in ctx["fa3_error"] and ctx["fa3_fp8_error"] == ctx["fa3_error"]
    shape = bk.Shape("t", 4, 2, 16, 1, 8, 0.0)
    with pytest.raises(bk.Unavailable, match="WITH_FA3=1"):
        bk.make_backend("fa3_fp8", shape, bk.make_inputs(shape, 0, 2.0, False, "cpu"), 0.25, ctx)


def test_target_shapes_run_first_and_inputs_match_issue_11() -> None:
    bk = _load("bench_kernels")
    args = bk.parse_args([])
    assert args.k_bias == R.I11_K_BIAS == 2.0
    shapes, _ = bk.plan_shapes(args)
    first = [(s.geometry, s.batch, s.seq_len, s.prefix_frac) for s in shapes[:4]]
    assert first == [
        ("llama3-8b", 1, 4096, 0.0),
        ("llama3-8b", 1, 16384, 0.0),
        ("llama3-8b", 1, 32768, 0.0),
        ("llama3-8b", 1, 32768, 0.5),
    ]
    assert len(shapes) == 32 and len(set(shapes)) == 32


def _e(ms: float | None, cos: float = 0.99995, rel_l1: float = 0.006, status: str = "ok", **kw: Any) -> dict:
    if status != "ok":
        return {"status": status, "reason": "why not"}
    return {"status": "ok", "ms": ms, "tflops": 100.0 / ms, "cos": cos, "min_cos": cos - 1e-4, "rel_l1": rel_l1, **kw}


def i11_doc() -> dict[str, Any]:
    """Llama B=1 shapes: sage 1.4x cuDNN and 1.2x FA3 at 16K/32K, 0.9x at 4K, prefix 32K 1.5x FA3 (cuDNN
    dense mask there); SmolLM2 4K with the worst accuracy."""
    recs = []
    table = {  # (L, prefix): (sage, cudnn, fa3, fa3_fp8)
        (4096, 0.0): (1.0, 0.9, 0.9, 0.8),
        (16384, 0.0): (1.0, 1.4, 1.2, 1.0),
        (32768, 0.0): (1.0, 1.4, 1.3, 1.1),
        (32768, 0.5): (1.0, 2.0, 1.5, 1.2),
    }
    for (L, pf), (s, c, f, f8) in table.items():
        b = {
            "sage": _e(s),
            "cudnn": _e(c, mask_method="dense_mask" if pf else "is_causal"),
            "fa3": _e(f),
            "fa3_fp8": _e(f8, cos=0.9990, rel_l1=0.04),
        }
        recs.append(
            {
                "geometry": "llama3-8b",
                "batch": 1,
                "seq_len": L,
                "prefix_frac": pf,
                "lq": L - int(L * pf),
                "lkv": L,
                "backends": b,
                "ratios": R.kernel_ratios(b),
            }
        )
    b = {"sage": _e(1.0, cos=0.99991, rel_l1=0.012), "cudnn": _e(1.0), "fa3": _e(1.0)}
    recs.append(
        {
            "geometry": "smollm2",
            "batch": 1,
            "seq_len": 4096,
            "prefix_frac": 0.0,
            "lq": 4096,
            "lkv": 4096,
            "backends": b,
            "ratios": R.kernel_ratios(b),
        }
    )
    return {"kind": "kernels", "env": {"gpu": "NVIDIA H200"}, "config": {"k_bias": 2.0}, "results": recs}


def test_issue_11_kernel_targets() -> None:
    doc = i11_doc()
    t = R.evaluate_kernel_targets_i11(doc["results"], 2.0)
    by = {(x["target"], x["config"]): x for x in t}

    def get(tgt: str, L: str, pf: int = 0) -> dict:
        return by[(tgt, f"llama3-8b B=1 L={L} prefix={pf}%")]

    assert get("kernel sage/cudnn >= 1.0x", "4K")["status"] == "FAIL"  # 0.9x
    assert get("kernel sage/cudnn >= 1.0x", "4K")["value"] == pytest.approx(0.9)
    assert get("kernel sage/cudnn >= 1.3x", "16K")["status"] == "PASS"  # 1.4x
    assert get("kernel sage/fa3 >= 1.3x", "16K")["status"] == "FAIL"  # 1.2x
    assert get("kernel sage/fa3 >= 1.3x", "32K")["status"] == "PASS"  # exactly 1.3x
    assert get("kernel sage/cudnn >= 1.3x", "32K", 50)["status"] == "N/A"  # cuDNN ran a dense mask
    assert get("kernel sage/fa3 >= 1.3x", "32K", 50)["status"] == "PASS"  # FA3 is the prefix reference
    l1 = by[("kernel sage accuracy rel L1 vs fp32 <= 0.02", "5 shapes, K offset std 2.0")]
    cos = by[("kernel sage accuracy cosine vs fp32 >= 0.9995", "5 shapes, K offset std 2.0")]
    assert l1["status"] == "PASS" and l1["value"] == pytest.approx(0.012) and "smollm2" in l1["detail"]
    assert cos["status"] == "PASS" and cos["value"] == pytest.approx(0.99991)
    assert all(x["status"] in ("PASS", "FAIL", "N/A") and "value" in x and x["issue"] == 11 for x in t)
    assert len(t) == 4 * 2 + 2


def test_issue_11_kernel_targets_fail_and_na_paths() -> None:
    doc = i11_doc()
    r32 = doc["results"][2]
    r32["backends"]["sage"]["cos"] = 0.95  # fast but wrong: never a PASS
    r32["backends"]["sage"]["rel_l1"] = 0.05
    t = R.evaluate_kernel_targets_i11(doc["results"], 2.0)
    by = {(x["target"], x["config"]): x for x in t}
    assert by[("kernel sage/cudnn >= 1.3x", "llama3-8b B=1 L=32K prefix=0%")]["status"] == "FAIL"
    l1 = by[("kernel sage accuracy rel L1 vs fp32 <= 0.02", "5 shapes, K offset std 2.0")]
    assert l1["status"] == "FAIL" and l1["value"] == pytest.approx(0.05) and "L=32K" in l1["detail"]
    # other inputs than the issue names: the accuracy targets cannot be judged
    t1 = R.evaluate_kernel_targets_i11(doc["results"], 1.0)
    assert {x["status"] for x in t1 if "accuracy" in x["target"]} == {"N/A"}
    # shape not run / FA3 not available
    del doc["results"][1]
    doc["results"][0]["backends"]["fa3"] = {"status": "skipped", "reason": "no FA3"}
    t2 = {(x["target"], x["config"]): x for x in R.evaluate_kernel_targets_i11(doc["results"], 2.0)}
    assert t2[("kernel sage/fa3 >= 1.3x", "llama3-8b B=1 L=16K prefix=0%")]["detail"] == "shape not run"
    assert t2[("kernel sage/fa3 >= 1.0x", "llama3-8b B=1 L=4K prefix=0%")]["status"] == "N/A"


def test_a_new_candidate_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lead's sm90 kernel: one spec entry gives it ratios, table columns and its own targets."""
    specs = (*R.KERNEL_BACKEND_SPECS, R.KernelBackendSpec("sage_sm90", "sage_attn sm90", "black", candidate=True))
    monkeypatch.setattr(R, "KERNEL_BACKEND_SPECS", specs)
    monkeypatch.setattr(R, "KERNEL_BACKENDS", tuple(b.name for b in specs))
    monkeypatch.setattr(R, "KERNEL_LABELS", {b.name: b.label for b in specs})
    monkeypatch.setattr(R, "KERNEL_CANDIDATES", ("sage", "sage_sm90"))
    doc = i11_doc()
    for r in doc["results"]:
        r["backends"]["sage_sm90"] = _e(r["backends"]["sage"]["ms"] / 2)
        r["ratios"] = R.kernel_ratios(r["backends"])
    r16 = doc["results"][1]["ratios"]
    assert r16["sage_sm90_vs_cudnn"] == pytest.approx(2.8) and r16["sage_vs_sage_sm90"] == pytest.approx(0.5)
    t = R.evaluate_kernel_targets_i11(doc["results"], 2.0)
    mine = [x for x in t if x["candidate"] == "sage_sm90"]
    assert len(mine) == 10
    assert {x["status"] for x in mine if "/" in x["target"] and "prefix=0%" in x["config"]} == {"PASS"}
    md = R.render_kernel_markdown(doc)
    assert "sage_attn sm90" in md and "sage_sm90/cuDNN" in md and "sage_sm90/fa3" in md


def test_kernel_markdown_has_fa3_columns_accuracy_and_both_issues(tmp_path: Path) -> None:
    doc = i11_doc()
    doc["targets"] = R.evaluate_kernel_targets_i11(doc["results"], 2.0) + R.evaluate_kernel_targets(doc["results"])
    md = R.render_kernel_markdown(doc)
    head = next(line for line in md.splitlines() if line.startswith("| shape | Lq/Lkv"))
    assert "FA3 (sgl_kernel)" in head and "FA3 FP8 e4m3 (sgl_kernel)" in head and "sage/fa3_fp8" in head
    assert "torch flash" not in head  # not part of this run: no empty column
    assert "L1 4.00%" in md  # FA3 FP8's relative L1 in the accuracy table
    assert "## Targets (issue #11):" in md and "## Targets (issue #5):" in md
    assert md.index("issue #11") < md.index("issue #5")
    paths = R.write_reports(doc, tmp_path, "k")
    assert Path(paths["json"]).exists()


# ------------------------------------------------------------------------------------------------
# e2e: issue #11 targets, per-rank counters, --tp plumbing, decode timing
# ------------------------------------------------------------------------------------------------
def _rec(
    cfg: str,
    pre: dict[int, float],
    dec: dict[int, float],
    tp: int = 1,
    per_rank: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    counters: dict[str, int] = {}
    for c in (per_rank or {}).values():
        for k, v in c.items():
            counters[k] = counters.get(k, 0) + v
    return {
        "config": cfg,
        "status": "ok",
        "engine_args": {"tp_size": tp},
        "prefill": {str(k): {"ms": v} for k, v in pre.items()},
        "decode": {str(k): {"tok_s": v} for k, v in dec.items()},
        "sage_stats": {"counters": counters, "per_rank": per_rank or {}} if per_rank is not None else {},
    }


def i11_e2e_results(rank1_ran: bool = True, tp: int = 1) -> list[dict[str, Any]]:
    ranks = {"0": {"prefill_8bit_batches": 12}}
    if tp > 1:
        ranks["1"] = {"prefill_8bit_batches": 12 if rank1_ran else 0}
    return [
        _rec("sage_attn", {4096: 100, 32768: 1100, 131072: 8500}, {4096: 196, 32768: 160, 131072: 110}, tp, ranks),
        _rec("fa3", {4096: 103, 32768: 1227, 131072: 10340}, {4096: 201, 32768: 171, 131072: 117}, tp),
        _rec("fa3+fp8kv", {4096: 101, 32768: 1150, 131072: 9800}, {4096: 205, 32768: 180, 131072: 130}, tp),
        _rec("flashinfer", {4096: 104, 32768: 1396, 131072: 14390}, {4096: 200, 32768: 170, 131072: 115}, tp),
    ]


def test_issue_11_e2e_targets() -> None:
    t = R.evaluate_e2e_targets_i11(i11_e2e_results())
    by = {x["target"]: x for x in t}
    p32 = by["e2e prefill 32K sage_attn vs fa3 >= 1.1x"]
    p128 = by["e2e prefill 128K sage_attn vs fa3 >= 1.2x"]
    assert p32["status"] == "PASS" and p32["value"] == pytest.approx(1227 / 1100)
    assert p128["status"] == "PASS" and p128["value"] == pytest.approx(10340 / 8500)
    d4 = by["e2e decode @4K sage_attn vs fa3 >= 0.97x (unchanged)"]
    d32 = by["e2e decode @32K sage_attn vs fa3 >= 0.97x (unchanged)"]
    assert d4["status"] == "PASS" and d4["value"] == pytest.approx(196 / 201)  # 0.975
    assert d32["status"] == "FAIL" and d32["value"] == pytest.approx(160 / 171)  # 0.936
    assert {x["issue"] for x in t} == {11} and len(t) == 2 + 3
    # without fa3 in the run there is nothing to list (tp 1)
    assert R.evaluate_e2e_targets_i11([r for r in i11_e2e_results() if r["config"] != "fa3"]) == []


def test_e2e_counters_gate_every_rank() -> None:
    ok = {x["target"]: x for x in R.evaluate_e2e_targets_i11(i11_e2e_results(tp=2))}
    assert ok["e2e sage_attn tp=2: 8-bit prefill ran on every TP rank"]["status"] == "PASS"
    bad = {x["target"]: x for x in R.evaluate_e2e_targets_i11(i11_e2e_results(rank1_ran=False, tp=2))}
    rank = bad["e2e sage_attn tp=2: 8-bit prefill ran on every TP rank"]
    assert rank["status"] == "FAIL" and rank["value"] == 1 and "rank 1: 0" in rank["detail"]
    assert bad["e2e prefill 32K sage_attn vs fa3 >= 1.1x"]["status"] == "FAIL"  # fast, but not 8-bit everywhere
    # a rank that wrote no file at all
    res = i11_e2e_results(tp=2)
    del res[0]["sage_stats"]["per_rank"]["1"]
    gone = {x["target"]: x for x in R.evaluate_e2e_targets_i11(res)}
    assert gone["e2e sage_attn tp=2: 8-bit prefill ran on every TP rank"]["detail"].startswith("rank 0: 12, rank 1: no")
    md = R.render_e2e_markdown({"kind": "e2e", "env": {}, "results": i11_e2e_results(tp=2)})
    assert "r0: 12 / r1: 12" in md and "## Targets (issue #16)" in md


def test_e2e_issue_5_targets_leave_out_absent_baselines() -> None:
    t = R.evaluate_e2e_targets(i11_e2e_results())
    assert t and not any("triton" in x["target"] for x in t)


def test_e2e_defaults_cover_issue_19_and_16() -> None:
    be = _load("bench_e2e")
    a = be.parse_args([])
    assert a.backends == "sage_attn,fa3,fa3+fp8kv,flashinfer" and a.tp == 1
    assert [int(x) for x in a.lengths.split(",")] == [4096, 16384, 32768, 65536, 131072]
    assert a.context_length == 131072 + 128 + 64 and a.chunked_prefill_size == 131072
    assert a.max_prefill_tokens == 131072 and a.repeats is None
    assert [be.repeats_for(L, a) for L in (4096, 32768, 65536, 131072)] == [3, 3, 2, 2]
    t = be.parse_args(["--tp", "2"])
    assert t.backends == "sage_attn,flashinfer" and t.lengths == "4096,32768" and t.context_length == 131072
    kw = be.engine_kwargs("fa3+fp8kv", t, Path("/m"))
    assert kw["tp_size"] == 2 and kw["attention_backend"] == "fa3" and kw["kv_cache_dtype"] == "fp8_e4m3"
    assert be.engine_kwargs("fa3", a, Path("/m"))["context_length"] == 131264
    p = be.parse_args(["--prefill-only"])
    assert p.decode_tokens == 1 and p.no_cuda_graph and "disable_cuda_graph" in be.engine_kwargs("fa3", p, Path("/m"))
    for bad in (["--tp", "0"], ["--lengths", "4k"], ["--lengths", "8192", "--context-length", "8000"]):
        with pytest.raises(SystemExit) as e:
            be.parse_args(bad)
        assert e.value.code == 2


def test_e2e_phases_fit_one_device_call_each() -> None:
    """Each documented phase fits its budget by the script's own estimate; all four engines together
    do not (hence the phases)."""
    be = _load("bench_e2e")
    a = be.parse_args([])
    lengths = [int(x) for x in a.lengths.split(",")]
    for phase in (["sage_attn", "fa3"], ["fa3+fp8kv", "flashinfer"]):
        assert be.estimate(lengths, phase, a) < a.budget_s - 60, phase
    assert be.estimate(lengths, ["sage_attn", "fa3", "fa3+fp8kv", "flashinfer"], a) > a.budget_s
    t = be.parse_args(["--tp", "2"])
    assert be.estimate([4096, 32768], ["sage_attn", "flashinfer"], t) < t.budget_s - 120
    assert a.hard_limit_s + 30 < 600  # the device tool's per-call limit, with room for apply.py
    # calibration: fa3's measured 130K prefill on the H200 was 10.34 s
    assert be.est_prefill_s("fa3", 131072) == pytest.approx(10.34, rel=0.15)


def test_model_dir_context_and_rope_positions(tmp_path: Path) -> None:
    be = _load("bench_e2e")
    cfg = json.loads((be.write_model_dir(tmp_path / "m", 131264) / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 131264
    assert cfg["rope_scaling"]["original_max_position_embeddings"] == 8192  # llama3 frequencies unchanged
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]) == (32, 8, 32)
    cfg = json.loads((be.write_model_dir(tmp_path / "n", 4096) / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 131072


def test_stats_per_rank_and_resolved_check(tmp_path: Path) -> None:
    be = _load("bench_e2e")
    for pid, rank, n in ((11, 0, 5), (12, 1, 4)):
        (tmp_path / f"sage_attn_stats_{pid}.json").write_text(
            json.dumps(
                {
                    "pid": pid,
                    "tp_rank": rank,
                    "decode_backend": "flashinfer",
                    "prefill_kernel": "sm90",
                    "counters": {"prefill_8bit_batches": n},
                }
            )
        )
    (tmp_path / "sage_attn_stats_13.json").write_text("{trunc")
    st = be.read_sage_stats(tmp_path)
    assert st["per_rank"] == {"0": {"prefill_8bit_batches": 5}, "1": {"prefill_8bit_batches": 4}}
    assert st["counters"]["prefill_8bit_batches"] == 9 and st["unreadable"] == ["sage_attn_stats_13.json"]
    assert sorted(st["pids"]) == [11, 12]
    assert st["prefill_kernel"] == ["sm90"] and st["decode_backend"] == ["flashinfer"]
    assert (
        be.resolved_mismatch("fa3+fp8kv", {"attention_backend": "fa3", "kv_cache_dtype": "fp8_e4m3", "tp_size": 2}, 2)
        is None
    )
    why = be.resolved_mismatch("fa3+fp8kv", {"attention_backend": "triton", "kv_cache_dtype": "fp8_e4m3"}, 1)
    assert why and "attention_backend='triton'" in why and "requested 'fa3'" in why
    assert (
        be.resolved_mismatch(
            "sage_attn+flashinfer",
            {
                "attention_backend": "fa3",
                "prefill_attention_backend": "sage_attn",
                "decode_attention_backend": "flashinfer",
            },
            1,
        )
        is None
    )
    assert "tp_size=1" in be.resolved_mismatch("sage_attn", {"attention_backend": "sage_attn", "tp_size": 1}, 2)


def test_decode_rate_from_streamed_chunks() -> None:
    be = _load("bench_e2e")
    marks = [(1.0 + 0.005 * i, 1 + i) for i in range(128)]  # first token at t=1.0, then one every 5 ms
    d = be.decode_rate(0.5, marks, {"cached_tokens": 4095, "completion_tokens": 128}, 128)
    assert d["tok_s"] == pytest.approx(200.0) and d["steps_timed"] == 127 and d["ttft_ms"] == pytest.approx(500)
    # the first chunk arrived late with 3 tokens in it: the rate still counts only the timed steps
    d = be.decode_rate(0.5, [(1.01, 3), (1.635, 128)], {"completion_tokens": 128}, 128)
    assert d["tok_s"] == pytest.approx(125 / 0.625)
    d = be.decode_rate(0.5, [(1.0, 128)], {"completion_tokens": 128}, 128)
    assert "tok_s" not in d and "1 streamed chunk" in d["error"]


def test_e2e_tp_run_without_gpus_records_and_renders(tmp_path: Path) -> None:
    out = _run(
        [
            str(BENCH / "bench_e2e.py"),
            "--tp",
            "2",
            "--quick",
            "--backends",
            "sage_attn,fa3",
            "--out-dir",
            str(tmp_path),
            "--model-dir",
            str(tmp_path / "model"),
        ],
        {"NCCL_NVLS_ENABLE": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads((tmp_path / "e2e_quick.json").read_text())
    assert doc["config"]["tp"] == 2
    assert doc["env"]["env_vars"]["NCCL_NVLS_ENABLE"] == "0"  # forced off for the engines
    assert doc["env"]["env_vars"]["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    assert any("overridden" in n for n in doc["notes"])
    by = {r["config"]: r for r in doc["results"]}
    assert by["fa3"]["engine_args"]["tp_size"] == 2 and by["fa3"]["status"] in ("error", "skipped")
    assert by["sage_attn"]["status"] in ("error", "skipped")
    md = (tmp_path / "e2e_quick.md").read_text()
    assert "| config | status | tp |" in md
    # the phases are combined on a CPU machine
    second = tmp_path / "b.json"
    second.write_text(json.dumps({"kind": "e2e", "env": {}, "results": i11_e2e_results(tp=2)[2:], "notes": []}))
    rr = _run([str(BENCH / "bench_e2e.py"), "--render", str(tmp_path / "e2e_quick.json"), str(second), "--stem", "c"])
    assert rr.returncode == 0, rr.stdout + rr.stderr
    combined = json.loads((tmp_path / "c.json").read_text())
    assert {r["config"] for r in combined["results"]} == {"sage_attn", "fa3", "fa3+fp8kv", "flashinfer"}
    bad = _run([str(BENCH / "bench_e2e.py"), "--render", str(tmp_path / "nope.json")])
    assert bad.returncode == 2 and "nope.json" in bad.stdout


def test_fp8_row_runs_after_the_others_of_its_shape(tmp_path: Path) -> None:
    """A crash in the FP8 path must not cost the shape's other rows: it is measured last."""
    bk = _load("bench_kernels")
    calls: list[str] = []

    def tracker(name: str) -> Any:
        def make(shape: Any, inp: Any, scale: float, ctx: Any) -> Any:
            calls.append(name)
            raise bk.Unavailable("not here")

        return make

    for name in list(bk.BACKENDS):
        bk.BACKENDS[name] = bk.Backend(make=tracker(name), run_last=bk.BACKENDS[name].run_last)
    args = bk.parse_args(["--device", "cpu"])
    rec, fatal = bk.run_shape(bk.Shape("t", 4, 2, 16, 1, 8, 0.0), args, list(bk.BACKENDS), {}, 0)
    assert calls[-1] == "fa3_fp8" and calls[:2] == ["cudnn", "flash"] and not fatal
    assert list(rec["backends"]) == list(bk.BACKENDS)  # the record keeps the table order


def test_sm90_per_layer_call_prebuilds_plan_and_stage_scratch_once() -> None:
    """The sm90 row's "plan prebuilt" timing is the call SGLang makes per layer: the 128x128 plan and the
    stage-image scratch are built once outside the timed function, and the kernel is named sm90."""
    import types

    bk = _load("bench_kernels")
    shape = bk.Shape("llama3-8b", 4, 2, 64, 1, 256, 0.5)
    inp = bk.make_inputs(shape, 0, 2.0, False, "cpu")
    seen: dict[str, Any] = {"buffers": [], "calls": []}

    class _Op:
        def new_stage_buffer(self, plan, num_kv_heads, head_dim, device):  # noqa: ANN001, ANN201
            seen["buffers"].append((plan, num_kv_heads, head_dim, str(device)))
            return "stages"

    def planned(q, k, v, plan, slots, row_off, sm_scale, causal, out, kernel="triton", stages=None):  # noqa: ANN001
        seen["calls"].append((plan, kernel, stages, causal))
        return out

    mod = types.SimpleNamespace(
        kernel_config=lambda d, kernel="triton": types.SimpleNamespace(
            block_m=128 if kernel == "sm90" else 64, block_n=128 if kernel == "sm90" else 32
        ),
        build_plan=lambda q_lens, kv_lens, device, bm, bn, causal: ("plan", bm, bn, list(q_lens), list(kv_lens)),
        sage_extend_attention_planned=planned,
        sm90_op=lambda: _Op(),
    )
    fn = bk.sage_planned(mod, shape, inp, 0.125, "sm90")
    assert seen["buffers"] == [(("plan", 128, 128, [128], [256]), 2, 64, "cpu")] and seen["calls"] == []
    fn()
    fn()
    assert seen["calls"] == [(("plan", 128, 128, [128], [256]), "sm90", "stages", True)] * 2
    assert len(seen["buffers"]) == 1  # never per call
    bk.sage_planned(mod, shape, inp, 0.125)()  # the Triton row: its own tiles, no scratch
    assert seen["calls"][-1] == (("plan", 64, 32, [128], [256]), "triton", None, True) and len(seen["buffers"]) == 1
    assert bk.BACKENDS["sage_sm90"].extra is bk.sage_sm90_planned_extra
