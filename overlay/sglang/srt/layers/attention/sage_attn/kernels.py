"""Triton kernels of the 8-bit (SageAttention-style) extend attention over SGLang's KV pool.

Channel split. With rotary embeddings a head's channels come in pairs that rotate at different
speeds. The fast-rotating half carries the token-to-token detail and has no constant offset after
RoPE; the slow-rotating half carries the large, nearly constant components (the positional and
bias-like parts that make per-row INT8 coarse). So Q·Kᵀ is computed in two parts:

* fast half: INT8 × INT8 → int32 on the tensor cores, one scale per query row and per key row,
  K first smoothed by the mean of the sequence's first ``ANCHOR`` keys (exact under softmax:
  q·mean is one constant per query row);
* slow half: in fp16 (exact for bf16 inputs of normal range; fp32 accumulation).

P·V runs in fp16 with fp32 accumulation. Every quantity a query row depends on is either its own
(row scale) or fixed by the sequence's first ``ANCHOR`` keys, so a row's result does not depend on
how the batch was cut: a radix-cache hit or a chunked prefill (chunks ≥ ``ANCHOR`` tokens) gives the
same bits as a one-shot prefill. (Earlier schemes smoothed Q by the chunk's mean and K by the mean of
the keys seen so far; both change with the cut, and greedy text changed with the cache state.)

Per layer, three launches:

1. ``_key_anchor_mean``: per sequence and kv head, the mean of the fast half of its first
   ``ANCHOR`` keys (read in place from the KV pool through the slot table);
2. ``_pack_kv``: per key block and kv head, the fast half of K - mean quantized to INT8 (one scale
   per key row), the slow half copied, V converted to fp16, all written head-major into scratch
   buffers: done once per layer and read by every query block of the sequence;
3. ``_sage_attn_fwd``: per query block and q head, Q's fast half quantized to INT8 in registers,
   S from the two dots, online softmax in fp32 (exp2), P·V in fp16. The causal mask is aligned to
   the end of each sequence: query row r of a request with prefix p sees keys 0 .. p + r.

The KV pool is only read: scratch buffers hold the packed copy, so nothing here writes into
SGLang's cache. Imports only torch and triton (runs under ``TRITON_INTERPRET=1`` on CPU tensors).

These Triton kernels are the executable reference of the scheme and the path on GPUs other than
Hopper. On sm_90 the same scheme runs as a warp-specialized wgmma kernel built by SGLang's JIT
framework (``sglang.kernels.ops.attention.sage_attn_sm90``): pass ``kernel="sm90"`` (the backend
picks it at start, see ``select_kernel``).
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
# Keys that fix a sequence's smoothing mean: the first ANCHOR keys, the same in every chunk of it.
ANCHOR = 64
_INTERPRET_CONFIG = KernelConfig(block_m=16, block_n=16, num_warps=1, num_stages=1)


def interpreting() -> bool:
    """True under TRITON_INTERPRET=1 (CPU tests): small tiles keep the interpreter fast."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


KERNELS = ("triton", "sm90")
# The sm90 op is an overlay file of its own; SGLang releases without the sglang.kernels JIT
# framework (0.5.8) do not get it, and then select_kernel picks Triton and says why.
SM90_OP_MODULE = "sglang.kernels.ops.attention.sage_attn_sm90"


def sm90_op():
    """The sm90 op module (``ImportError`` where this SGLang cannot have it)."""
    import importlib

    return importlib.import_module(SM90_OP_MODULE)


SM90_CONFIG = KernelConfig(
    block_m=128, block_n=128, num_warps=12, num_stages=3
)  # tiles of the sm90 kernel
KERNEL_ENV = "SGLANG_SAGE_KERNEL"


def kernel_config(head_dim: int, kernel: str = "triton") -> KernelConfig:
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(
            f"sage_attn supports head_dim {SUPPORTED_HEAD_DIMS}, got {head_dim}"
        )
    if kernel == "sm90":
        return SM90_CONFIG
    if kernel != "triton":
        raise ValueError(
            f"unknown sage_attn kernel {kernel!r}; choose one of {KERNELS}"
        )
    return _INTERPRET_CONFIG if interpreting() else _CONFIGS[head_dim]


def select_kernel(
    device, head_dim: int, dtype: torch.dtype, requested: str | None = None
) -> tuple[str, str]:
    """The kernel to run and why: ``sm90`` on Hopper when it supports the problem, else ``triton``.

    ``requested`` (default: ``$SGLANG_SAGE_KERNEL``) forces one: ``sm90`` where it cannot run is an
    error naming the reason, never a silent switch to Triton.
    """
    import os

    if requested is None:
        requested = os.environ.get(KERNEL_ENV) or "auto"
    if requested not in ("auto", *KERNELS):
        raise ValueError(
            f"{KERNEL_ENV}={requested!r}: choose one of auto, {', '.join(KERNELS)}"
        )
    if requested == "triton":
        return "triton", f"Triton kernels ({KERNEL_ENV}=triton)"
    try:
        ok, why = sm90_op().is_supported(device, head_dim, dtype)
    except (
        ImportError
    ) as exc:  # no SGLang JIT framework (e.g. the CPU interpreter tests)
        ok, why = (
            False,
            f"sglang.kernels.ops.attention.sage_attn_sm90 not importable ({exc})",
        )
    if ok:
        return "sm90", "sm_90 wgmma kernel (SGLang JIT)"
    if requested == "sm90":
        raise ValueError(
            f"{KERNEL_ENV}=sm90 but the sm90 kernel cannot run here: {why}"
        )
    return "triton", f"Triton kernels ({why})"


@triton.jit
def _round_to_int8(x):
    # Round half away from zero (libdevice-free so that the interpreter runs it too).
    return tl.where(x >= 0, x + 0.5, x - 0.5).to(tl.int8)


@triton.jit
def _to_fp16(x):
    # fp16 keeps 3 more mantissa bits than bf16; clamping keeps a (never seen) |x| > 65504 finite.
    return tl.minimum(tl.maximum(x.to(tl.float32), -65504.0), 65504.0).to(tl.float16)


@triton.jit
def _split_cols(HEAD_DIM: tl.constexpr, NEOX: tl.constexpr):
    """Column indices of the fast-rotating half (INT8) and the slow-rotating half (16-bit).

    Rotary pair frequencies fall with the pair index j = 0 .. D/2 - 1. NeoX layout pairs channel j
    with j + D/2, so the slow half is j >= D/4 of both halves; the interleaved (GPT-J) layout pairs
    2j with 2j + 1, so the slow half is the upper half of the channels.
    """
    i = tl.arange(0, HEAD_DIM // 2)
    if NEOX:
        fast = (i // (HEAD_DIM // 4)) * (HEAD_DIM // 2) + i % (HEAD_DIM // 4)
        slow = fast + HEAD_DIM // 4
    else:
        fast = i
        slow = i + HEAD_DIM // 2
    return fast, slow


@triton.jit
def _key_anchor_mean(
    k_buffer,
    slot_table,
    slot_row_off,
    kv_lens,
    k_mean,
    stride_kt,
    stride_kh,
    num_kv_heads,
    ANCHOR: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NEOX: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    n = tl.minimum(tl.load(kv_lens + b), ANCHOR)
    pos = tl.arange(0, ANCHOR)
    valid = pos < n
    slots = tl.load(
        slot_table + tl.load(slot_row_off + b) + pos, mask=valid, other=0
    ).to(tl.int64)
    fast, _ = _split_cols(HEAD_DIM, NEOX)
    k = tl.load(
        k_buffer + slots[:, None] * stride_kt + h * stride_kh + fast[None, :],
        mask=valid[:, None],
        other=0.0,
    ).to(tl.float32)
    mean = tl.sum(k, axis=0) / n.to(tl.float32)
    tl.store(
        k_mean + (b * num_kv_heads + h) * (HEAD_DIM // 2) + tl.arange(0, HEAD_DIM // 2),
        mean,
    )


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
    k_int8,
    k_scale,
    k_slow,
    v_half,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    num_kv_heads,
    num_k_blocks,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    NEOX: tl.constexpr,
):
    g = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.load(kblk_seq + g)
    pos = tl.load(kblk_start + g) + tl.arange(0, BLOCK_N)
    valid = pos < tl.load(kv_lens + b)
    slots = tl.load(
        slot_table + tl.load(slot_row_off + b) + pos, mask=valid, other=0
    ).to(tl.int64)
    fast, slow = _split_cols(HEAD_DIM, NEOX)
    half = tl.arange(0, HEAD_DIM // 2)
    k_row = k_buffer + slots[:, None] * stride_kt + h * stride_kh
    # head-major scratch: [num_kv_heads, num_k_blocks * BLOCK_N, ...]
    row = (h * num_k_blocks + g) * BLOCK_N + tl.arange(0, BLOCK_N)

    k = tl.load(k_row + fast[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
    mean = tl.load(k_mean + (b * num_kv_heads + h) * (HEAD_DIM // 2) + half)
    k = tl.where(valid[:, None], k - mean[None, :], 0.0)
    # One scale per key row: it depends on this key only, never on where a chunk was cut.
    scale = tl.maximum(tl.max(tl.abs(k), axis=1), 1e-8) / 127.0
    tl.store(
        k_int8 + row[:, None] * (HEAD_DIM // 2) + half[None, :],
        _round_to_int8(k / scale[:, None]),
    )
    tl.store(k_scale + row, scale)

    ks = tl.load(k_row + slow[None, :], mask=valid[:, None], other=0.0)
    tl.store(k_slow + row[:, None] * (HEAD_DIM // 2) + half[None, :], _to_fp16(ks))

    d = tl.arange(0, HEAD_DIM)
    v = tl.load(
        v_buffer + slots[:, None] * stride_vt + h * stride_vh + d[None, :],
        mask=valid[:, None],
        other=0.0,
    )
    tl.store(v_half + row[:, None] * HEAD_DIM + d[None, :], v.to(tl.float16))


@triton.jit
def _attend_block(
    m_i,
    l_i,
    acc,
    q_q,
    q_scale,
    q_slow,
    k_int8,
    k_scale,
    k_slow,
    v_half,
    blk_rows,
    j,
    rows,
    prefix,
    kv_len,
    sm_scale_log2,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """One key block of the online softmax. Scores stay unscaled; sm_scale·log2(e) is applied
    inside exp2 (one FMA per element)."""
    half = tl.arange(0, HEAD_DIM // 2)
    k8 = tl.load(k_int8 + blk_rows[:, None] * (HEAD_DIM // 2) + half[None, :])
    s = tl.dot(q_q, tl.trans(k8), out_dtype=tl.int32).to(tl.float32)
    s = s * (q_scale[:, None] * tl.load(k_scale + blk_rows)[None, :])
    k16 = tl.load(k_slow + blk_rows[:, None] * (HEAD_DIM // 2) + half[None, :])
    s = tl.dot(q_slow, tl.trans(k16), acc=s)
    if MASK:
        pos = j * BLOCK_N + tl.arange(0, BLOCK_N)
        keep = (pos < kv_len)[None, :]
        if CAUSAL:
            keep = keep & (pos[None, :] <= (prefix + rows)[:, None])
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.math.exp2((m_i - m_new) * sm_scale_log2)
    p = tl.math.exp2(s * sm_scale_log2 - (m_new * sm_scale_log2)[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    d = tl.arange(0, HEAD_DIM)
    vv = tl.load(v_half + blk_rows[:, None] * HEAD_DIM + d[None, :])
    acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), vv)
    return m_new, l_i, acc


@triton.jit
def _sage_attn_fwd(
    q,
    out,
    k_int8,
    k_scale,
    k_slow,
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
    NEOX: tl.constexpr,
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
    tok = (q_first + rows).to(tl.int64)
    fast, slow = _split_cols(HEAD_DIM, NEOX)
    q_row = q + tok[:, None] * stride_qt + h * stride_qh
    x = tl.load(q_row + fast[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
    q_scale = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-8) / 127.0
    q_q = _round_to_int8(x / q_scale[:, None])
    q_slow = _to_fp16(tl.load(q_row + slow[None, :], mask=row_ok[:, None], other=0.0))

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
    d = tl.arange(0, HEAD_DIM)
    head_base = kvh.to(tl.int64) * num_k_blocks

    for j in range(n_full):
        blk_rows = (head_base + kb0 + j) * BLOCK_N + cols
        m_i, l_i, acc = _attend_block(
            m_i,
            l_i,
            acc,
            q_q,
            q_scale,
            q_slow,
            k_int8,
            k_scale,
            k_slow,
            v_half,
            blk_rows,
            j,
            rows,
            prefix,
            kv_len,
            sm_scale_log2,
            BLOCK_N,
            HEAD_DIM,
            False,
            CAUSAL,
        )
    for j in range(n_full, n_blocks):
        blk_rows = (head_base + kb0 + j) * BLOCK_N + cols
        m_i, l_i, acc = _attend_block(
            m_i,
            l_i,
            acc,
            q_q,
            q_scale,
            q_slow,
            k_int8,
            k_scale,
            k_slow,
            v_half,
            blk_rows,
            j,
            rows,
            prefix,
            kv_len,
            sm_scale_log2,
            BLOCK_N,
            HEAD_DIM,
            True,
            CAUSAL,
        )

    o = acc / l_i[:, None]
    tl.store(
        out + tok[:, None] * stride_ot + h * stride_oh + d[None, :],
        o.to(out.dtype.element_ty),
        mask=row_ok[:, None],
    )


def check_inputs(
    q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor
) -> None:
    """Refuse shapes and dtypes the kernels do not cover, naming the offending value."""
    if q.dim() != 3 or k_buffer.dim() != 3 or v_buffer.dim() != 3:
        raise ValueError("q, k_buffer and v_buffer must be [tokens, heads, head_dim]")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"sage_attn supports fp16/bf16 queries, got {q.dtype}")
    if k_buffer.dtype not in SUPPORTED_DTYPES or v_buffer.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"sage_attn needs an fp16/bf16 KV cache, got {k_buffer.dtype}/{v_buffer.dtype}"
        )
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
    rope_neox: bool = True,
    kernel: str = "triton",
    stages: torch.Tensor | None = None,
) -> torch.Tensor:
    """8-bit extend attention with a prebuilt plan (the backend's per-layer entry point).

    ``slot_table[slot_row_off[b] + pos]`` is the KV-pool slot of key ``pos`` of sequence b: either
    SGLang's ``req_to_token`` (flattened, row offsets ``req_pool_indices * stride``) or a packed
    ``kv_indices`` array (row offsets ``kv_indptr[:-1]``). ``rope_neox`` names the rotary layout
    (NeoX pairs j, j + D/2; else GPT-J pairs 2j, 2j + 1): it picks which channels go to INT8. The
    result is exact attention up to rounding either way; the layout only moves the error.
    ``kernel="sm90"`` runs the Hopper kernel (``stages``: its per-batch scratch, or None).
    """
    check_inputs(q, k_buffer, v_buffer)
    if kernel == "sm90":
        if slot_table.dtype != torch.int32:
            slot_table = slot_table.to(torch.int32)
        return sm90_op().forward(
            q,
            k_buffer,
            v_buffer,
            plan,
            slot_table,
            slot_row_off.to(torch.int64),
            sm_scale,
            causal,
            out,
            rope_neox,
            stages,
        )
    cfg = kernel_config(q.shape[-1], kernel)
    if (cfg.block_m, cfg.block_n) != (plan.block_m, plan.block_n):
        raise ValueError("plan was built for other tile sizes than the kernel config")
    hq, d = q.shape[1], q.shape[2]
    hkv = k_buffer.shape[1]
    dev = q.device
    nkb = plan.num_k_blocks
    rows = nkb * plan.block_n
    if out is None:
        out = torch.empty_like(q)
    k_mean = torch.empty(
        (plan.batch_size, hkv, d // 2), dtype=torch.float32, device=dev
    )
    k_int8 = torch.empty((hkv, rows, d // 2), dtype=torch.int8, device=dev)
    k_scale = torch.empty((hkv, rows), dtype=torch.float32, device=dev)
    k_slow = torch.empty((hkv, rows, d // 2), dtype=torch.float16, device=dev)
    v_half = torch.empty((hkv, rows, d), dtype=torch.float16, device=dev)

    _key_anchor_mean[(plan.batch_size, hkv)](
        k_buffer,
        slot_table,
        slot_row_off,
        plan.kv_lens,
        k_mean,
        k_buffer.stride(0),
        k_buffer.stride(1),
        hkv,
        ANCHOR=ANCHOR,
        HEAD_DIM=d,
        NEOX=rope_neox,
    )
    _pack_kv[(nkb, hkv)](
        k_buffer,
        v_buffer,
        slot_table,
        slot_row_off,
        plan.kv_lens,
        plan.kblk_seq,
        plan.kblk_start,
        k_mean,
        k_int8,
        k_scale,
        k_slow,
        v_half,
        k_buffer.stride(0),
        k_buffer.stride(1),
        v_buffer.stride(0),
        v_buffer.stride(1),
        hkv,
        nkb,
        BLOCK_N=plan.block_n,
        HEAD_DIM=d,
        NEOX=rope_neox,
    )
    _sage_attn_fwd[(plan.num_q_blocks, hq)](
        q,
        out,
        k_int8,
        k_scale,
        k_slow,
        v_half,
        plan.qo_indptr,
        plan.kv_lens,
        plan.kblk_indptr,
        plan.qblk_seq,
        plan.qblk_start,
        sm_scale * _LOG2E,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        nkb,
        GROUP=hq // hkv,
        BLOCK_M=plan.block_m,
        BLOCK_N=plan.block_n,
        HEAD_DIM=d,
        CAUSAL=causal,
        NEOX=rope_neox,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
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
    rope_neox: bool = True,
    kernel: str = "triton",
) -> torch.Tensor:
    """Stand-alone entry point (benchmarks, drift checks): builds the plan from the indptrs.

    Reads ``qo_indptr``/``kv_indptr`` on the host once; the SGLang backend instead builds the plan
    from lengths it already has on the host.
    """
    del max_q_len, max_kv_len  # derived from the indptrs; kept for API symmetry
    qo = qo_indptr.detach().to("cpu", torch.int64)
    kv = kv_indptr.detach().to("cpu", torch.int64)
    if qo.numel() != kv.numel() or qo[0] != 0 or kv[0] != 0:
        raise ValueError(
            f"qo_indptr and kv_indptr must start at 0 and have equal length, got {qo.tolist()} / {kv.tolist()}"
        )
    if int(qo[-1]) != q.shape[0]:
        raise ValueError(
            f"qo_indptr[-1]={int(qo[-1])} must equal the number of query rows {q.shape[0]}"
        )
    if int(kv[-1]) > kv_indices.numel():
        raise ValueError(
            f"kv_indptr[-1]={int(kv[-1])} exceeds kv_indices ({kv_indices.numel()} entries)"
        )
    q_lens = (qo[1:] - qo[:-1]).numpy()
    kv_lens = (kv[1:] - kv[:-1]).numpy()
    cfg = kernel_config(q.shape[-1], kernel)
    plan = build_plan(q_lens, kv_lens, q.device, cfg.block_m, cfg.block_n, causal)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(q.shape[-1])
    row_off = kv_indptr[:-1].to(torch.int64)
    return sage_extend_attention_planned(
        q,
        k_buffer,
        v_buffer,
        plan,
        kv_indices,
        row_off,
        sm_scale,
        causal,
        out,
        rope_neox,
        kernel,
    )
