"""sage_attn end to end through SGLang's Engine with a real model (Llama architecture).

(i)   a prompt's greedy output is identical cold, on a repeat (radix hit) and after another prompt
      that shares a long prefix with it; the counters show the 8-bit extend-with-prefix path ran;
(ii)  teacher-forced next-token agreement with the triton backend over >= 2,000 positions, judged against
      the floor: flashinfer (another exact bf16 kernel) is measured on the same positions, and sage_attn may
      agree with triton at most 1.0 point less often than flashinfer does (an absolute 99 % is out of reach
      for any kernel but triton itself on this model: flashinfer reaches ~98.5 %);
(iii) CUDA graph on and off give the same greedy output;
(iv)  chunked prefill (chunk 64) gives the same greedy output as one-shot prefill;
(v)   the backend is the prefill half of SGLang's hybrid mode (decode by flashinfer);
(vi)  unsupported settings are refused at start with a message naming them.

The model is ``$SGLANG_SAGE_TEST_MODEL`` (a local HF directory; SmolLM2-135M-Instruct in our runs):
a missing model fails the test, it is never skipped. GPU required.
"""

import glob
import inspect
import json
import os
import subprocess
import sys
import tempfile
import unittest

import sglang
from sglang.test.ci.ci_register import register_cuda_ci

try:
    from sglang.test.test_utils import CustomTestCase
except (
    ImportError
):  # test_utils pulls benchmark-only deps (e.g. `datasets`) a serving install lacks
    CustomTestCase = unittest.TestCase

register_cuda_ci(est_time=400, stage="base-b", runner_config="1-gpu-small")

MODEL = os.environ.get("SGLANG_SAGE_TEST_MODEL", "/tmp/smollm2")
STATS_DIR = tempfile.mkdtemp(prefix="sage_attn_stats_")
os.environ["SGLANG_SAGE_STATS_DIR"] = STATS_DIR  # inherited by the scheduler processes
# the floor of test (ii): another exact bf16 backend (fa3 or torch_native where flashinfer cannot run)
FLOOR_BACKEND = os.environ.get("SGLANG_SAGE_TEST_FLOOR_BACKEND", "flashinfer")
MAX_GAP_POINTS = 1.0  # sage's top-1 agreement may trail the floor's by at most this (percentage points)

PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea:",
    "def fibonacci(n):",
]
SHARED = (
    "You are a careful assistant. Answer briefly and precisely. The following notes describe the "
    "history of a small harbour town, its fishermen, its lighthouse and the storms of the last "
    "century, in the order in which the town archive recorded them. "
) * 6
RADIX_A = SHARED + "Question: who kept the lighthouse? Answer:"
RADIX_B = SHARED + "Question: which storm was the worst? Answer:"
GREEDY = {"temperature": 0.0, "max_new_tokens": 32}


def _real_text() -> str:
    """Real English prose that ships everywhere: the standard library's own documentation."""
    import argparse
    import collections
    import functools
    import json as json_mod
    import logging
    import pathlib
    import subprocess
    import threading
    import typing
    import unittest as unittest_mod

    mods = [
        argparse,
        collections,
        functools,
        json_mod,
        logging,
        pathlib,
        subprocess,
        threading,
        typing,
        unittest_mod,
    ]
    parts = []
    for m in mods:
        parts.append(inspect.getdoc(m) or "")
        for _, obj in sorted(vars(m).items()):
            if inspect.isclass(obj) or inspect.isfunction(obj):
                parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if p)


def teacher_top1(engine, ids: list) -> list:
    """Teacher-forced arg-max next token at every position of ``ids`` (None where none is given)."""
    out = engine.generate(
        input_ids=[ids],
        sampling_params={"temperature": 0.0, "max_new_tokens": 1},
        return_logprob=True,
        logprob_start_len=0,
        top_logprobs_num=1,
    )[0]
    return [
        None if r is None else r[0][1] for r in out["meta_info"]["input_top_logprobs"]
    ]


def _read_stats() -> dict:
    total: dict = {}
    for path in glob.glob(os.path.join(STATS_DIR, "sage_attn_stats_*.json")):
        with open(path) as f:
            for k, v in json.load(f)["counters"].items():
                total[k] = total.get(k, 0) + v
    return total


def _clear_stats() -> None:
    for path in glob.glob(os.path.join(STATS_DIR, "sage_attn_stats_*.json")):
        os.remove(path)


_RESULTS: dict = {}


def run_workload(name: str, **engine_kw) -> dict:
    """Start one engine, run every workload the tests compare, shut it down (cached per name)."""
    if name in _RESULTS:
        return _RESULTS[name]
    if not os.path.isdir(MODEL):
        raise FileNotFoundError(
            f"SGLANG_SAGE_TEST_MODEL={MODEL!r} is not a model directory"
        )
    _clear_stats()
    kw = dict(
        model_path=MODEL,
        sampling_backend="pytorch",
        grammar_backend="none",
        mem_fraction_static=0.3,
        log_level="warning",
    )
    if name != "sage":
        # Only the default-settings engine keeps SGLang's breakable prefill CUDA graph (users' default);
        # the others skip its capture to keep the run short.
        kw["disable_prefill_cuda_graph"] = True
    kw.update(engine_kw)
    engine = sglang.Engine(**kw)
    try:
        res: dict = {}
        res["greedy"] = [o["text"] for o in engine.generate(PROMPTS, GREEDY)]
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(MODEL)
        ids = tok.encode(_real_text())[:2100]
        res["n_positions"] = len(ids) - 1
        res["teacher_top1"] = teacher_top1(engine, ids)
        engine.flush_cache()
        cold = engine.generate(RADIX_A, GREEDY)["text"]
        repeat = engine.generate(RADIX_A, GREEDY)["text"]
        engine.generate(RADIX_B, GREEDY)
        after_other = engine.generate(RADIX_A, GREEDY)["text"]
        res["radix"] = (cold, repeat, after_other)
        res["stats"] = _read_stats()
    finally:
        engine.shutdown()
    _RESULTS[name] = res
    return res


class TestSageAttnEngine(CustomTestCase):
    def test_radix_hits_give_identical_output(self):
        res = run_workload("sage", attention_backend="sage_attn")
        cold, repeat, after_other = res["radix"]
        self.assertEqual(cold, repeat)
        self.assertEqual(cold, after_other)
        st = res["stats"]
        print("sage counters:", st)
        self.assertGreater(st["prefill_8bit_layer_calls"], 0)
        self.assertGreater(
            st["extend_prefix_8bit_layer_calls"],
            0,
            "no radix hit reached the 8-bit path",
        )
        self.assertGreater(st["decode_batches"], 0)
        self.assertGreater(
            st["cuda_graph_decode_replays"], 0, "decode never replayed a CUDA graph"
        )

    def test_teacher_forced_agreement_within_the_floor(self):
        sage = run_workload("sage", attention_backend="sage_attn")["teacher_top1"]
        base = run_workload("triton", attention_backend="triton")["teacher_top1"]
        floor = run_workload("floor", attention_backend=FLOOR_BACKEND)["teacher_top1"]
        # exactly the same positions for both: those where all three engines gave a prediction
        idx = [i for i, xs in enumerate(zip(sage, base, floor)) if None not in xs]
        self.assertGreaterEqual(len(idx), 2000)
        agree_sage = sum(sage[i] == base[i] for i in idx) / len(idx)
        agree_floor = sum(floor[i] == base[i] for i in idx) / len(idx)
        gap = 100 * (agree_floor - agree_sage)
        print(
            f"teacher-forced top-1 agreement with triton over {len(idx)} positions: sage_attn {agree_sage:.4%}, "
            f"{FLOOR_BACKEND} (floor) {agree_floor:.4%}; sage is {gap:+.2f} points below the floor "
            f"(limit {MAX_GAP_POINTS} points)"
        )
        self.assertLessEqual(gap, MAX_GAP_POINTS)

    def test_cuda_graph_on_off_same_output(self):
        on = run_workload("sage", attention_backend="sage_attn")["greedy"]
        off = run_workload(
            "sage_nograph", attention_backend="sage_attn", disable_cuda_graph=True
        )["greedy"]
        self.assertEqual(on, off)

    def test_chunked_prefill_same_output(self):
        one_shot = run_workload(
            "sage_nograph", attention_backend="sage_attn", disable_cuda_graph=True
        )
        chunked = run_workload(
            "sage_chunked",
            attention_backend="sage_attn",
            disable_cuda_graph=True,
            chunked_prefill_size=64,
        )
        self.assertEqual(one_shot["greedy"], chunked["greedy"])
        self.assertEqual(one_shot["radix"], chunked["radix"])
        self.assertGreater(chunked["stats"]["extend_prefix_8bit_layer_calls"], 0)

    def test_hybrid_prefill_half(self):
        res = run_workload(
            "hybrid",
            prefill_attention_backend="sage_attn",
            decode_attention_backend="flashinfer",
        )
        st = res["stats"]
        self.assertGreater(st["prefill_8bit_layer_calls"], 0)
        self.assertEqual(
            st["decode_batches"], 0, "decode should belong to flashinfer in hybrid mode"
        )
        self.assertEqual(
            res["greedy"], run_workload("sage", attention_backend="sage_attn")["greedy"]
        )

    def test_refuses_unsupported_settings(self):
        """An fp8 KV cache is refused at start, naming the setting. In a child process: a failed
        engine start SIGQUITs its parent."""
        code = (
            "import sglang\n"
            "sglang.Engine(model_path=%r, attention_backend='sage_attn', sampling_backend='pytorch',"
            " grammar_backend='none', mem_fraction_static=0.3, kv_cache_dtype='fp8_e4m3',"
            " disable_cuda_graph=True, log_level='error')\n" % MODEL
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
        )
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("sage_attn cannot serve this model", proc.stdout + proc.stderr)
        self.assertIn("KV cache dtype", proc.stdout + proc.stderr)


if __name__ == "__main__":
    unittest.main()
