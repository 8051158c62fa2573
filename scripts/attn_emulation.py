"""Shared pieces of the CPU emulations of the sm90 kernel's numerics (`pv_precision_emulation.py`,
`qscale_pow2_emulation.py`, `int8_pv_emulation.py`): issue 11's accuracy inputs, the causal mask, the exact
reference and INT8 rounding with one scale per row, defined once so that the three reports use the same problem."""

from __future__ import annotations

import math

import torch

L, D, H = 2048, 128, 4
SCALE = 1 / math.sqrt(D)


def inputs(
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q/k/v (seed 0), K with a per-channel offset of 2 sigma (LLM-like outlier channels)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(H, L, D, dtype=dtype) for _ in range(3))
    return q, k + 2.0 * torch.randn(1, 1, D, dtype=dtype), v


def causal_mask() -> torch.Tensor:
    return torch.ones(L, L, dtype=torch.bool).tril()


def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact causal attention in fp64 (``bias`` added to the scores, e.g. an attention sink)."""
    s = (q.double() @ k.double().transpose(-1, -2)) * SCALE
    if bias is not None:
        s = s + bias
    return s.masked_fill(~causal_mask(), float("-inf")).softmax(-1) @ v.double()


def int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 values and one scale per row (amax / 127)."""
    scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    return (x / scale).round().clamp(-127, 127), scale
