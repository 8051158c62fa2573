#!/usr/bin/env python3
"""CPU emulation: what a power-of-two query-row scale (sm90 harness candidate v6) costs in accuracy.

The sm90 kernel's Q·Kᵀ splits each head's channels by rotary frequency: the fast half in INT8 (one scale per query
row, one per key, K smoothed by the mean of its first 64 keys), the slow half in bf16; P·V in fp16. v6 rounds the
row scale up to a power of two so that it leaves the per-score work (exact folding into the 16-bit half and the
exp2 constant), at the price of up to one bit of the INT8 Q range. Inputs are the issue-11 accuracy inputs (random
q/k/v, K with a 2-sigma per-channel offset, causal, L = 2048, d = 128, NeoX channel layout).

    python3 scripts/qscale_pow2_emulation.py   # -> reports/analysis/qscale_pow2_emulation.txt
"""

from __future__ import annotations

import torch
from attn_emulation import SCALE, causal_mask, inputs, reference

FAST = torch.cat(
    [torch.arange(0, 32), torch.arange(64, 96)]
)  # NeoX: j < D/4 of both rotary halves
SLOW = torch.cat([torch.arange(32, 64), torch.arange(96, 128)])


def scheme(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pow2: bool
) -> torch.Tensor:
    k = k - k[:, :64].mean(1, keepdim=True)
    qf, kf = q[..., FAST].bfloat16().float(), k[..., FAST].bfloat16().float()
    r = qf.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    qs = torch.exp2(torch.ceil(torch.log2(r))) if pow2 else r
    qi = (qf / qs).round().clamp(-127, 127)
    ks = kf.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    ki = (kf / ks).round().clamp(-127, 127)
    s = (qi @ ki.transpose(-1, -2)) * qs * ks.transpose(-1, -2)
    s = s + q[..., SLOW].bfloat16().float() @ k[..., SLOW].bfloat16().float().transpose(
        -1, -2
    )
    s = (s * SCALE).masked_fill(~causal_mask(), float("-inf"))
    p = torch.exp(s - s.amax(-1, keepdim=True)).half().float()
    return (p @ v.half().float()) / p.sum(-1, keepdim=True)


def main() -> None:
    q, k, v = inputs()
    ref = reference(q, k, v)
    for name, pow2 in (
        ("row scale amax/127 (v3)", False),
        ("power-of-two row scale (v6)", True),
    ):
        out = scheme(q, k, v, pow2).double()
        rel_l1 = ((out - ref).abs().sum() / ref.abs().sum()).item()
        cos = torch.nn.functional.cosine_similarity(
            out.flatten(), ref.flatten(), dim=0
        ).item()
        print(f"{name:28s} rel L1 {rel_l1:.4f}  cosine {cos:.6f}")


if __name__ == "__main__":
    main()
