"""fp32 reference of extend attention over a paged KV pool (tests and accuracy reports only)."""

from __future__ import annotations

import math

import torch


def reference_extend_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Plain fp32 softmax attention per sequence; the causal mask is aligned to the sequence end."""
    hq, d = q.shape[1], q.shape[2]
    hkv = k_buffer.shape[1]
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(d)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    qo = qo_indptr.tolist()
    kv = kv_indptr.tolist()
    for b in range(len(qo) - 1):
        qs = q[qo[b] : qo[b + 1]].float().transpose(0, 1)  # [hq, lq, d]
        slots = kv_indices[kv[b] : kv[b + 1]].long()
        ks = k_buffer[slots].float().transpose(0, 1).repeat_interleave(hq // hkv, dim=0)
        vs = v_buffer[slots].float().transpose(0, 1).repeat_interleave(hq // hkv, dim=0)
        s = torch.matmul(qs, ks.transpose(1, 2)) * sm_scale
        lq, lk = qs.shape[1], ks.shape[1]
        if causal:
            rows = torch.arange(lq, device=q.device)[:, None] + (lk - lq)
            cols = torch.arange(lk, device=q.device)[None, :]
            s = s.masked_fill(cols > rows, float("-inf"))
        out[qo[b] : qo[b + 1]] = torch.matmul(torch.softmax(s, dim=-1), vs).transpose(
            0, 1
        )
    return out


def accuracy(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Cosine similarity, relative L1 and max abs error of ``out`` against ``ref`` (fp32)."""
    o = out.float().flatten()
    r = ref.float().flatten()
    cos = torch.nn.functional.cosine_similarity(o, r, dim=0).item()
    rel_l1 = ((o - r).abs().sum() / r.abs().sum().clamp_min(1e-12)).item()
    return {"cosine": cos, "rel_l1": rel_l1, "max_abs": (o - r).abs().max().item()}
