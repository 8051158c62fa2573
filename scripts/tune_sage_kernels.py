"""GPU: correctness of the sage_attn kernels at real sizes, and a tile-config sweep vs SDPA.

    python scripts/tune_sage_kernels.py --out DIR

Writes DIR/tune.json (every config's time per shape, accuracy) and prints a table. Used to pick
``_CONFIGS`` in kernels.py; the committed benchmark numbers come from benchmarks/.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sglang_sage.overlay_kernels import load_submodule

K = load_submodule("kernels")
build_plan = load_submodule("plan").build_plan
accuracy = load_submodule("reference").accuracy
reference_extend_attention = load_submodule("reference").reference_extend_attention


def make(q_lens, prefixes, hq, hkv, d, dtype=torch.bfloat16, dev="cuda"):
    kv_lens = [a + b for a, b in zip(q_lens, prefixes)]
    pool = sum(kv_lens) + 64
    kb = torch.randn(pool, hkv, d, device=dev, dtype=dtype) + 2 * torch.randn(1, hkv, d, device=dev, dtype=dtype)
    vb = torch.randn(pool, hkv, d, device=dev, dtype=dtype)
    idx = torch.randperm(pool, device=dev)[: sum(kv_lens)].to(torch.int32)
    q = torch.randn(sum(q_lens), hq, d, device=dev, dtype=dtype)
    qo = torch.tensor([0] + list(q_lens), device=dev).cumsum(0).to(torch.int32)
    kvp = torch.tensor([0] + kv_lens, device=dev).cumsum(0).to(torch.int32)
    return q, kb, vb, qo, kvp, idx, kv_lens


def causal_flops(q_lens, kv_lens, hq, d):
    tot = 0.0
    for lq, lk in zip(q_lens, kv_lens):
        p = lk - lq
        tot += 4 * hq * d * (lq * p + lq * (lq + 1) / 2)
    return tot


def run_planned(q, kb, vb, plan, idx, row_off, d):
    return K.sage_extend_attention_planned(q, kb, vb, plan, idx, row_off, 1 / math.sqrt(d))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/tune")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "accuracy": [],
        "sweep": [],
        "baselines": [],
    }
    torch.manual_seed(0)
    # 1. accuracy at real sizes (default configs)
    for q_lens, pre, hq, hkv, d in [
        ([1024], [0], 32, 8, 128),
        ([300, 1, 2000, 7], [0, 500, 3000, 9], 32, 8, 128),
        ([4096], [4096], 9, 3, 64),
        ([513, 1, 77], [0, 8000, 100], 9, 3, 64),
        ([2048], [0], 8, 8, 128),
        ([1000], [24], 16, 2, 64),
    ]:
        q, kb, vb, qo, kvp, idx, _ = make(q_lens, pre, hq, hkv, d)
        o = K.sage_extend_attention(q, kb, vb, qo, kvp, idx)
        r = reference_extend_attention(q, kb, vb, qo, kvp, idx)
        a = accuracy(o, r)
        res["accuracy"].append({"q_lens": q_lens, "prefix": pre, "hq": hq, "hkv": hkv, "d": d, **a})
        print("acc", q_lens, pre, hq, hkv, d, a, flush=True)
    # 2. sweep
    shapes = [
        ([16384], [0], 32, 8, 128),
        ([8192], [8192], 32, 8, 128),
        ([16384], [0], 9, 3, 64),
        ([4096], [0], 32, 8, 128),
    ]
    grid = list(itertools.product([64, 128], [64, 128], [4, 8], [2, 3, 4]))
    if args.quick:
        grid = grid[:6]
    for q_lens, pre, hq, hkv, d in shapes:
        q, kb, vb, qo, kvp, idx, kv_lens = make(q_lens, pre, hq, hkv, d)
        fl = causal_flops(q_lens, kv_lens, hq, d)
        row_off = kvp[:-1].long()
        best = None
        for bm, bn, w, s in grid:
            cfg = K.KernelConfig(bm, bn, w, s)
            K._CONFIGS[d] = cfg
            plan = build_plan(q_lens, kv_lens, "cuda", bm, bn)
            try:
                ms = triton.testing.do_bench(
                    lambda: run_planned(q, kb, vb, plan, idx, row_off, d), warmup=25, rep=100, return_mode="median"
                )
            except Exception as e:  # out of resources etc.
                res["sweep"].append({"shape": [q_lens, pre, hq, hkv, d], "cfg": [bm, bn, w, s], "error": repr(e)[:200]})
                continue
            tf = fl / ms / 1e9
            res["sweep"].append({"shape": [q_lens, pre, hq, hkv, d], "cfg": [bm, bn, w, s], "ms": ms, "tflops": tf})
            if best is None or ms < best[0]:
                best = (ms, (bm, bn, w, s), tf)
        print("best", q_lens, pre, hq, hkv, d, best, flush=True)
        # component split at the best config
        bm, bn, w, s = best[1]
        K._CONFIGS[d] = K.KernelConfig(bm, bn, w, s)
        # baselines: SDPA cuDNN / flash (prefix 0 only: top-left == bottom-right)
        if pre == [0]:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            L = q_lens[0]
            qq = torch.randn(1, hq, L, d, device="cuda", dtype=torch.bfloat16)
            kk = torch.randn(1, hkv, L, d, device="cuda", dtype=torch.bfloat16)
            vv = torch.randn(1, hkv, L, d, device="cuda", dtype=torch.bfloat16)
            for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
                try:
                    kx = kk.repeat_interleave(hq // hkv, 1)
                    vx = vv.repeat_interleave(hq // hkv, 1)
                    with sdpa_kernel(be):
                        f = lambda: torch.nn.functional.scaled_dot_product_attention(qq, kx, vx, is_causal=True)
                        f()
                        ms = triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median")
                    res["baselines"].append(
                        {"shape": [q_lens, pre, hq, hkv, d], "backend": name, "ms": ms, "tflops": fl / ms / 1e9}
                    )
                    print("base", name, q_lens, hq, hkv, d, ms, fl / ms / 1e9, flush=True)
                except Exception as e:
                    res["baselines"].append(
                        {"shape": [q_lens, pre, hq, hkv, d], "backend": name, "error": repr(e)[:200]}
                    )
        (out / "tune.json").write_text(json.dumps(res, indent=1))
    (out / "tune.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
