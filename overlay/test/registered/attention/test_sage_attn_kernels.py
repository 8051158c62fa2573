"""sage_attn 8-bit extend kernels against an fp32 reference over SGLang-style paged KV.

Ragged batches, prefix 0 / short / long (the causal mask must be aligned to the end of each
sequence), GQA ratios 1/3/4/8 (and MQA), head_dim 64/128, 1 to 8K new tokens, fp16 and bf16.
The KV pool must come back unchanged (nothing but set_kv_buffer writes it) and every output row
must be written. Every check runs for each kernel of this GPU: the Triton kernels always, the
sm90 wgmma kernel (SGLang JIT) on Hopper, where it must build and run (a Hopper GPU that cannot
build it fails the test instead of skipping it). GPU + Triton required.
"""

import math
import os
import unittest

import torch

from sglang.srt.layers.attention.sage_attn.kernels import sage_extend_attention
from sglang.srt.layers.attention.sage_attn.reference import (
    accuracy,
    reference_extend_attention,
)
from sglang.test.ci.ci_register import register_cuda_ci

try:
    from sglang.test.test_utils import CustomTestCase
except (
    ImportError
):  # test_utils pulls benchmark-only deps (e.g. `datasets`) a serving install lacks
    CustomTestCase = unittest.TestCase

register_cuda_ci(est_time=60, stage="base-b", runner_config="1-gpu-small")

MIN_COSINE = 0.9995
MAX_REL_L1 = 0.015
# Hopper runs both kernels; other GPUs the Triton reference only. SGLANG_SAGE_TEST_KERNELS=sm90
# narrows a run to one of them (never to a kernel this GPU lacks: that fails in the test).
_ON_HOPPER = torch.cuda.get_device_capability() == (9, 0)
KERNELS = os.environ.get(
    "SGLANG_SAGE_TEST_KERNELS", "triton,sm90" if _ON_HOPPER else "triton"
).split(",")

# (new tokens per request, cached prefix per request)
BATCHES = {
    "single_1": ([1], [0]),
    "prefill_8k": ([8192], [0]),
    "short_prefix": ([200, 37], [13, 5]),
    "long_prefix": ([512], [7000]),
    "decode_like_rows": ([1, 1, 1], [4000, 17, 900]),
    "ragged_mixed": ([300, 1, 2000, 7, 129], [0, 500, 3000, 9, 0]),
}
# (q heads, kv heads): GQA ratios 1, 3, 4, 8 and MQA
HEADS = [(8, 8), (9, 3), (16, 4), (32, 8), (8, 1)]


def _case(q_lens, prefixes, hq, hkv, d, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    kv_lens = [a + b for a, b in zip(q_lens, prefixes)]
    pool = sum(kv_lens) + 97
    # a per-channel offset on K, as real keys have: exactly what smoothing must cancel
    kb = torch.randn(pool, hkv, d, device="cuda", generator=g) + 4 * torch.randn(
        1, hkv, d, device="cuda", generator=g
    )
    vb = torch.randn(pool, hkv, d, device="cuda", generator=g)
    kb, vb = kb.to(dtype), vb.to(dtype)
    slots = torch.randperm(pool, device="cuda", generator=g)[: sum(kv_lens)].to(
        torch.int64
    )
    q = torch.randn(sum(q_lens), hq, d, device="cuda", generator=g).to(dtype)
    qo = torch.tensor([0] + list(q_lens), device="cuda").cumsum(0).to(torch.int32)
    kvp = torch.tensor([0] + kv_lens, device="cuda").cumsum(0).to(torch.int32)
    return q, kb, vb, qo, kvp, slots


class TestSageAttnKernels(CustomTestCase):
    def _check(self, name, hq, hkv, d, dtype=torch.bfloat16, kernel="triton"):
        q_lens, prefixes = BATCHES[name]
        q, kb, vb, qo, kvp, slots = _case(q_lens, prefixes, hq, hkv, d, dtype)
        kb0, vb0 = kb.clone(), vb.clone()
        out = torch.full_like(q, float("nan"))  # poison: every row must be written
        sage_extend_attention(
            q, kb, vb, qo, kvp, slots, sm_scale=1 / math.sqrt(d), out=out, kernel=kernel
        )
        torch.cuda.synchronize()
        self.assertFalse(torch.isnan(out).any().item(), "unwritten or NaN output rows")
        self.assertTrue(
            torch.equal(kb, kb0) and torch.equal(vb, vb0), "the KV pool was modified"
        )
        ref = reference_extend_attention(
            q, kb, vb, qo, kvp, slots, sm_scale=1 / math.sqrt(d)
        )
        acc = accuracy(out, ref)
        msg = f"{kernel} {name} hq={hq} hkv={hkv} d={d} {dtype}: {acc}"
        print(msg)
        self.assertGreaterEqual(acc["cosine"], MIN_COSINE, msg)
        self.assertLessEqual(acc["rel_l1"], MAX_REL_L1, msg)

    def test_batches_heads_dims(self):
        for kernel in KERNELS:
            for name in BATCHES:
                for hq, hkv in HEADS:
                    for d in (64, 128):
                        with self.subTest(
                            kernel=kernel, batch=name, hq=hq, hkv=hkv, d=d
                        ):
                            self._check(name, hq, hkv, d, kernel=kernel)

    def test_fp16(self):
        for kernel in KERNELS:
            for name in ("short_prefix", "ragged_mixed"):
                with self.subTest(kernel=kernel, batch=name):
                    self._check(name, 32, 8, 128, torch.float16, kernel=kernel)

    def test_sm90_accuracy_target(self):
        """Issue-11 kernel accuracy: random inputs with a per-channel K offset of 2 sigma, L = 4096:
        relative L1 <= 2 % and cosine >= 0.9995 vs fp32 (SageAttention2's sm90 kernel: 3.8 %).
        """
        for kernel in KERNELS:
            g = torch.Generator(device="cuda").manual_seed(11)
            L, hq, hkv, d = 4096, 32, 8, 128
            kb = torch.randn(L, hkv, d, device="cuda", generator=g)
            kb = (
                kb + 2 * torch.randn(1, hkv, d, device="cuda", generator=g)
            ).bfloat16()
            vb = torch.randn(L, hkv, d, device="cuda", generator=g).bfloat16()
            q = torch.randn(L, hq, d, device="cuda", generator=g).bfloat16()
            qo = torch.tensor([0, L], device="cuda", dtype=torch.int32)
            slots = torch.arange(L, device="cuda", dtype=torch.int32)
            out = sage_extend_attention(q, kb, vb, qo, qo, slots, kernel=kernel)
            acc = accuracy(out, reference_extend_attention(q, kb, vb, qo, qo, slots))
            print(f"{kernel} accuracy target case: {acc}")
            with self.subTest(kernel=kernel):
                self.assertLessEqual(acc["rel_l1"], 0.02)
                self.assertGreaterEqual(acc["cosine"], 0.9995)

    def test_prefix_mask_is_end_aligned(self):
        """Query i of an extend after a 448-token prefix sees keys 0..448+i, not just the new ones."""
        q, kb, vb, qo, kvp, slots = _case([64], [448], 8, 8, 64, torch.bfloat16)
        ref = reference_extend_attention(q, kb, vb, qo, kvp, slots)
        new_kvp = torch.tensor([0, 64], device="cuda", dtype=torch.int32)
        new_only = reference_extend_attention(q, kb, vb, qo, new_kvp, slots[448:])
        for kernel in KERNELS:
            with self.subTest(kernel=kernel):
                out = sage_extend_attention(q, kb, vb, qo, kvp, slots, kernel=kernel)
                self.assertGreaterEqual(accuracy(out, ref)["cosine"], MIN_COSINE)
                self.assertLess(accuracy(out, new_only)["cosine"], 0.99)

    def test_rows_do_not_depend_on_the_batch_cut(self):
        """Bitwise: one-shot prefill == radix repeat (last token extended) == chunked prefill == extend
        after an arbitrary cached prefix, for every row computed with >= ANCHOR keys visible.
        """
        L = 3001
        cases = {
            "radix_repeat": [L - 1],
            "chunk_64": list(range(64, L, 64)),
            "chunk_1000": [1000, 2000, 3000],
            "prefix_777": [777],
            "prefix_130_then_2500": [130, 2500],
        }
        for kernel in KERNELS:
            for d, dtype in (
                (64, torch.bfloat16),
                (128, torch.bfloat16),
                (128, torch.float16),
            ):
                q, kb, vb, _, _, slots = _case([L], [0], 9, 3, d, dtype)
                one_shot = self._run_cuts(q, kb, vb, slots, [], kernel)
                again = self._run_cuts(q, kb, vb, slots, [], kernel)
                self.assertTrue(
                    torch.equal(one_shot, again), f"{kernel} d={d}: not deterministic"
                )
                for name, cuts in cases.items():
                    with self.subTest(kernel=kernel, d=d, dtype=dtype, cuts=name):
                        cut = self._run_cuts(q, kb, vb, slots, cuts, kernel)
                        diff = (one_shot.float() - cut.float()).abs().max().item()
                        self.assertTrue(
                            torch.equal(one_shot, cut),
                            f"{kernel} {name} d={d} {dtype}: max |diff| {diff}",
                        )

    @staticmethod
    def _run_cuts(q, kb, vb, slots, cuts, kernel):
        outs = []
        bounds = [0, *cuts, q.shape[0]]
        for a, b in zip(bounds[:-1], bounds[1:]):
            qo = torch.tensor([0, b - a], device="cuda", dtype=torch.int32)
            kvp = torch.tensor([0, b], device="cuda", dtype=torch.int32)
            outs.append(
                sage_extend_attention(q[a:b], kb, vb, qo, kvp, slots[:b], kernel=kernel)
            )
        return torch.cat(outs)


if __name__ == "__main__":
    unittest.main()
