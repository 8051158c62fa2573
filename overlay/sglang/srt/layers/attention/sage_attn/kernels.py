"""Triton kernels of the 8-bit (SageAttention-style) extend attention over SGLang's KV pool.

Per layer, five launches:

1. ``_key_block_sum``: per key block and kv head, the sum of K over the block's valid rows
   (read in place from the KV pool through the slot table);
2. ``_key_mean``: per sequence and kv head, the mean of K (the smoothing vector);
3. ``_pack_kv``: per key block and kv head, K - mean quantized to INT8 with one scale per block,
   (one scale per key row) and V converted to fp16, both written head-major into scratch buffers. Done once per layer and
   read by every query block of the sequence (quantization amortized over query blocks);
4. ``_sage_attn_fwd``: per query block and q head, Q quantized to INT8 in registers (one scale per
   block), S = Q_int8 · K_int8ᵀ in int32 on the tensor cores, dequantized by both scales, online
   softmax in fp32 (exp2), P·V in fp16 with fp32 accumulation. The causal mask is aligned to the
   end of each sequence: query row r of a request with prefix p sees keys 0 .. p + r.

Subtracting the per-sequence mean of K is exact under softmax (q·mean is one constant per query
row) and shrinks the range that 8 bits must cover. Subtracting the mean of Q is made exact by adding
back mean_q · k, computed in fp32: on SmolLM2's real activations it halves the per-layer error. The KV pool is only read: scratch buffers hold
the smoothed copy, so nothing here writes into SGLang's cache.

Imports only torch and triton (runs under ``TRITON_INTERPRET=1`` on CPU tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .plan import SagePlan, build_plan

_LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes of the attention kernel (BLOCK_N is also the key-block size of the plan)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Best of a 24-config sweep on an H200 (scripts/tune_sage_kernels.py; benchmarks/results/h200/).
_CONFIGS = {
    64: KernelConfig(block_m=64, block_n=64, num_warps=4, num_stages=4),
    128: KernelConfig(block_m=128, block_n=128, num_warps=8, num_stages=3),
}
_Q_ROWS_PER_PART = 1024  # rows of one sequence summed by one program of the query-mean pass
_INTERPRET_CONFIG = KernelConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (CPU tests): small tiles keep the interpreter fast."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_config(head_dim: int) -> KernelConfig:
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"sage_attn supports head_dim {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    return _INTERPRET_CONFIG if interpreting() else _CONFIGS[head_dim]


@triton.jit
def _round_to_int8(x):
    # Round half away from zero (libdevice-free so that the interpreter runs it too).
    return tl.where(x >= 0, x + 0.5, x - 0.5).to(tl.int8)


@triton.jit
def _key_block_sum(
    k_buffer,
    slot_table,
    slot_row_off,
    kv_lens,
    kblk_seq,
    kblk_start,
    block_sum,
    stride_kt,
    stride_kh,
    num_kv_heads,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    g = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.load(kblk_seq + g)
    pos = tl.load(kblk_start + g) + tl.arange(0, BLOCK_N)
    valid = pos < tl.load(kv_lens + b)
    slots = tl.load(slot_table + tl.load(slot_row_off + b) + pos, mask=valid, other=0).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    k = tl.load(
        k_buffer + slots[:, None] * stride_kt + h * stride_kh + d[None, :],
        mask=valid[:, None],
        other=0.0,
    ).to(tl.float32)
    tl.store(block_sum + (g * num_kv_heads + h) * HEAD_DIM + d, tl.sum(k, axis=0))


@triton.jit
def _key_mean(
    block_sum,
    kblk_indptr,
    kv_lens,
    k_mean,
    num_kv_heads,
    CHUNK: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    first = tl.load(kblk_indptr + b)
    last = tl.load(kblk_indptr + b + 1)
    d = tl.arange(0, HEAD_DIM)
    c = tl.arange(0, CHUNK)
    acc = tl.zeros([CHUNK, HEAD_DIM], dtype=tl.float32)
    for start in range(first, last, CHUNK):
        blk = start + c
        acc += tl.load(
            block_sum + (blk[:, None] * num_kv_heads + h) * HEAD_DIM + d[None, :],
            mask=(blk < last)[:, None],
            other=0.0,
        )
    mean = tl.sum(acc, axis=0) / tl.load(kv_lens + b).to(tl.float32)
    tl.store(k_mean + (b * num_kv_heads + h) * HEAD_DIM + d, mean)


@triton.jit
def _query_part_sum(
    q,
    qo_indptr,
    part_sum,
    stride_qt,
    stride_qh,
    num_parts,
    ROWS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    part = tl.program_id(2)
    first = tl.load(qo_indptr + b)
    q_len = tl.load(qo_indptr + b + 1) - first
    d = tl.arange(0, HEAD_DIM)
    r = tl.arange(0, 64)
    acc = tl.zeros([64, HEAD_DIM], dtype=tl.float32)
    for start in range(part * ROWS, tl.minimum(q_len, (part + 1) * ROWS), 64):
        rows = start + r
        ok = rows < tl.minimum(q_len, (part + 1) * ROWS)
        acc += tl.load(
            q + (first + rows).to(tl.int64)[:, None] * stride_qt + h * stride_qh + d[None, :],
            mask=ok[:, None],
            other=0.0,
        ).to(tl.float32)
    tl.store(part_sum + ((b * tl.num_programs(1) + h) * num_parts + part) * HEAD_DIM + d, tl.sum(acc, axis=0))


@triton.jit
def _pack_kv(
    k_buffer,
    v_buffer,
    slot_table,
    slot_row_off,
    kv_lens,
    kblk_seq,
    kblk_start,
    k_mean,
    q_mean,
    k_int8,
    k_scale,
    k_bias,
    v_half,
    sm_scale_log2,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    num_kv_heads,
    num_k_blocks,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    g = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.load(kblk_seq + g)
    pos = tl.load(kblk_start + g) + tl.arange(0, BLOCK_N)
    valid = pos < tl.load(kv_lens + b)
    slots = tl.load(slot_table + tl.load(slot_row_off + b) + pos, mask=valid, other=0).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    k = tl.load(
        k_buffer + slots[:, None] * stride_kt + h * stride_kh + d[None, :],
        mask=valid[:, None],
        other=0.0,
    ).to(tl.float32)
    mean = tl.load(k_mean + (b * num_kv_heads + h) * HEAD_DIM + d)
    k = tl.where(valid[:, None], k - mean[None, :], 0.0)
    # One scale per key row (per token): as cheap as one per block in the attention kernel, and
    # a large key no longer coarsens the grid of its 63 neighbours.
    scale = tl.maximum(tl.max(tl.abs(k), axis=1), 1e-8) / 127.0
    k_q = _round_to_int8(k / scale[:, None])
    # head-major scratch: [num_kv_heads, num_k_blocks * BLOCK_N, HEAD_DIM]
    row = (h * num_k_blocks + g) * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(k_int8 + row[:, None] * HEAD_DIM + d[None, :], k_q)
    tl.store(k_scale + row, scale)
    # Query smoothing: the attention kernel quantizes q - mean_q; the dropped term mean_q · k is
    # exact here, in fp32 from the unquantized (smoothed) keys, one value per key and q head.
    for j in range(GROUP):
        hq = h * GROUP + j
        qm = tl.load(q_mean + (b * num_kv_heads * GROUP + hq) * HEAD_DIM + d)
        bias = tl.sum(k * qm[None, :], axis=1) * sm_scale_log2
        tl.store(k_bias + (hq * num_k_blocks + g) * BLOCK_N + tl.arange(0, BLOCK_N), bias)
    v = tl.load(
        v_buffer + slots[:, None] * stride_vt + h * stride_vh + d[None, :],
        mask=valid[:, None],
        other=0.0,
    )
    tl.store(v_half + row[:, None] * HEAD_DIM + d[None, :], v.to(tl.float16))


@triton.jit
def _sage_attn_fwd(
    q,
    out,
    k_int8,
    k_scale,
    k_bias,
    q_mean,
    v_half,
    qo_indptr,
    kv_lens,
    kblk_indptr,
    qblk_seq,
    qblk_start,
    sm_scale_log2,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    num_k_blocks,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    g = tl.program_id(0)
    h = tl.program_id(1)
    kvh = h // GROUP
    b = tl.load(qblk_seq + g)
    m0 = tl.load(qblk_start + g)
    q_first = tl.load(qo_indptr + b)
    q_len = tl.load(qo_indptr + b + 1) - q_first
    kv_len = tl.load(kv_lens + b)
    prefix = kv_len - q_len
    kb0 = tl.load(kblk_indptr + b)

    rows = m0 + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len
    d = tl.arange(0, HEAD_DIM)
    tok = (q_first + rows).to(tl.int64)
    x = tl.load(q + tok[:, None] * stride_qt + h * stride_qh + d[None, :], mask=row_ok[:, None], other=0.0)
    x = x.to(tl.float32) - tl.load(q_mean + (b * tl.num_programs(1) + h) * HEAD_DIM + d)[None, :]
    q_scale = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-8) / 127.0
    q_q = _round_to_int8(x / q_scale[:, None])
    qk_scale = (q_scale * sm_scale_log2)[:, None]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        end = tl.minimum(kv_len, prefix + m0 + BLOCK_M)
        # Blocks below every row's diagonal and inside the sequence need no mask.
        n_full = tl.minimum(prefix + m0 + 1, kv_len) // BLOCK_N
    else:
        end = kv_len
        n_full = kv_len // BLOCK_N
    n_blocks = tl.cdiv(end, BLOCK_N)
    cols = tl.arange(0, BLOCK_N)
    head_base = kvh.to(tl.int64) * num_k_blocks
    bias_base = h.to(tl.int64) * num_k_blocks

    for j in range(n_full):
        blk = head_base + kb0 + j
        kk = tl.load(k_int8 + (blk * BLOCK_N + cols)[:, None] * HEAD_DIM + d[None, :])
        s = tl.dot(q_q, tl.trans(kk), out_dtype=tl.int32).to(tl.float32)
        s = s * (qk_scale * tl.load(k_scale + blk * BLOCK_N + cols)[None, :])
        s += tl.load(k_bias + (bias_base + kb0 + j) * BLOCK_N + cols)[None, :]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vv = tl.load(v_half + (blk * BLOCK_N + cols)[:, None] * HEAD_DIM + d[None, :])
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), vv)
        m_i = m_new

    for j in range(n_full, n_blocks):
        blk = head_base + kb0 + j
        kk = tl.load(k_int8 + (blk * BLOCK_N + cols)[:, None] * HEAD_DIM + d[None, :])
        s = tl.dot(q_q, tl.trans(kk), out_dtype=tl.int32).to(tl.float32)
        s = s * (qk_scale * tl.load(k_scale + blk * BLOCK_N + cols)[None, :])
        s += tl.load(k_bias + (bias_base + kb0 + j) * BLOCK_N + cols)[None, :]
        pos = j * BLOCK_N + cols
        keep = (pos < kv_len)[None, :]
        if CAUSAL:
            keep = keep & (pos[None, :] <= (prefix + rows)[:, None])
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        vv = tl.load(v_half + (blk * BLOCK_N + cols)[:, None] * HEAD_DIM + d[None, :])
        acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), vv)
        m_i = m_new

    o = acc / l_i[:, None]
    tl.store(
        out + tok[:, None] * stride_ot + h * stride_oh + d[None, :],
        o.to(out.dtype.element_ty),
        mask=row_ok[:, None],
    )


def check_inputs(q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor) -> None:
    """Refuse shapes and dtypes the kernels do not cover, naming the offending value."""
    if q.dim() != 3 or k_buffer.dim() != 3 or v_buffer.dim() != 3:
        raise ValueError("q, k_buffer and v_buffer must be [tokens, heads, head_dim]")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"sage_attn supports fp16/bf16 queries, got {q.dtype}")
    if k_buffer.dtype not in SUPPORTED_DTYPES or v_buffer.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"sage_attn needs an fp16/bf16 KV cache, got {k_buffer.dtype}/{v_buffer.dtype}")
    d = q.shape[-1]
    if k_buffer.shape[-1] != d or v_buffer.shape[-1] != d:
        raise ValueError("sage_attn needs equal q/k/v head_dim")
    kernel_config(d)
    hq, hkv = q.shape[1], k_buffer.shape[1]
    if hq % hkv != 0:
        raise ValueError(f"q heads ({hq}) must be a multiple of kv heads ({hkv})")
    for name, t in (("q", q), ("k_buffer", k_buffer), ("v_buffer", v_buffer)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in head_dim")


def sage_extend_attention_planned(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    plan: SagePlan,
    slot_table: torch.Tensor,
    slot_row_off: torch.Tensor,
    sm_scale: float,
    causal: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """8-bit extend attention with a prebuilt plan (the backend's per-layer entry point).

    ``slot_table[slot_row_off[b] + pos]`` is the KV-pool slot of key ``pos`` of sequence b: either
    SGLang's ``req_to_token`` (flattened, row offsets ``req_pool_indices * stride``) or a packed
    ``kv_indices`` array (row offsets ``kv_indptr[:-1]``).
    """
    check_inputs(q, k_buffer, v_buffer)
    cfg = kernel_config(q.shape[-1])
    if (cfg.block_m, cfg.block_n) != (plan.block_m, plan.block_n):
        raise ValueError("plan was built for other tile sizes than the kernel config")
    hq, d = q.shape[1], q.shape[2]
    hkv = k_buffer.shape[1]
    dev = q.device
    nkb = plan.num_k_blocks
    if out is None:
        out = torch.empty_like(q)
    block_sum = torch.empty((nkb, hkv, d), dtype=torch.float32, device=dev)
    k_mean = torch.empty((plan.batch_size, hkv, d), dtype=torch.float32, device=dev)
    k_int8 = torch.empty((hkv, nkb * plan.block_n, d), dtype=torch.int8, device=dev)
    k_scale = torch.empty((hkv, nkb * plan.block_n), dtype=torch.float32, device=dev)
    v_half = torch.empty((hkv, nkb * plan.block_n, d), dtype=torch.float16, device=dev)
    k_bias = torch.empty((hq, nkb * plan.block_n), dtype=torch.float32, device=dev)
    parts = triton.cdiv(plan.max_q_len, _Q_ROWS_PER_PART)
    q_part = torch.empty((plan.batch_size, hq, parts, d), dtype=torch.float32, device=dev)
    sm_scale_log2 = sm_scale * _LOG2E

    _query_part_sum[(plan.batch_size, hq, parts)](
        q, plan.qo_indptr, q_part, q.stride(0), q.stride(1), parts, ROWS=_Q_ROWS_PER_PART, HEAD_DIM=d,
    )
    # A fixed-order sum over the parts keeps the result deterministic.
    q_mean = q_part.sum(dim=2).div_(plan.q_lens_f32[:, None, None])

    _key_block_sum[(nkb, hkv)](
        k_buffer, slot_table, slot_row_off, plan.kv_lens, plan.kblk_seq, plan.kblk_start, block_sum,
        k_buffer.stride(0), k_buffer.stride(1), hkv,
        BLOCK_N=plan.block_n, HEAD_DIM=d,
    )
    _key_mean[(plan.batch_size, hkv)](
        block_sum, plan.kblk_indptr, plan.kv_lens, k_mean, hkv, CHUNK=16, HEAD_DIM=d,
    )
    _pack_kv[(nkb, hkv)](
        k_buffer, v_buffer, slot_table, slot_row_off, plan.kv_lens, plan.kblk_seq, plan.kblk_start,
        k_mean, q_mean, k_int8, k_scale, k_bias, v_half, sm_scale_log2,
        k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1), hkv, nkb,
        GROUP=hq // hkv, BLOCK_N=plan.block_n, HEAD_DIM=d,
    )
    _sage_attn_fwd[(plan.num_q_blocks, hq)](
        q, out, k_int8, k_scale, k_bias, q_mean, v_half,
        plan.qo_indptr, plan.kv_lens, plan.kblk_indptr, plan.qblk_seq, plan.qblk_start,
        sm_scale_log2,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1), nkb,
        GROUP=hq // hkv, BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, HEAD_DIM=d, CAUSAL=causal,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def sage_extend_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    qo_indptr: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    max_q_len: int | None = None,
    max_kv_len: int | None = None,
    sm_scale: float | None = None,
    causal: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stand-alone entry point (benchmarks, drift checks): builds the plan from the indptrs.

    Reads ``qo_indptr``/``kv_indptr`` on the host once; the SGLang backend instead builds the plan
    from lengths it already has on the host.
    """
    del max_q_len, max_kv_len  # derived from the indptrs; kept for API symmetry
    qo = qo_indptr.detach().to("cpu", torch.int64)
    kv = kv_indptr.detach().to("cpu", torch.int64)
    q_lens = (qo[1:] - qo[:-1]).numpy()
    kv_lens = (kv[1:] - kv[:-1]).numpy()
    cfg = kernel_config(q.shape[-1])
    plan = build_plan(q_lens, kv_lens, q.device, cfg.block_m, cfg.block_n, causal)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    row_off = kv_indptr[:-1].to(torch.int64)
    return sage_extend_attention_planned(
        q, k_buffer, v_buffer, plan, kv_indices, row_off, sm_scale, causal, out
    )
