"""Hopper (sm_90a) kernels of the ``sage_attn`` backend, built by SGLang's JIT framework.

Sources: ``sglang/kernels/jit/csrc/sage_attn_sm90/`` (``kernel.cuh``: the pack and attention
kernels; ``entry.cuh``: their TVM-FFI entry points). One module per (head_dim, 16-bit type),
compiled by nvcc on first use and cached by ``load_jit``; ``precompile()`` builds them ahead of time
(``apply.py`` calls it after installing the overlay where a Hopper GPU and nvcc are present).

Per layer: ``pack`` writes one "stage image" per key block and kv head (slow half of K and V in
16-bit, fast half of K smoothed and INT8 with per-key scales), read by every query block;
``attention`` runs the warp-specialized wgmma kernel over them. The scheme and the block tables
(``SagePlan``, 128 x 128 tiles) are those of the Triton reference in
``sglang.srt.layers.attention.sage_attn.kernels``.
"""

from __future__ import annotations

import functools
import pathlib
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from tvm_ffi.module import Module

    from sglang.srt.layers.attention.sage_attn.plan import SagePlan

BLOCK_M = 128
BLOCK_N = 128
SUPPORTED_HEAD_DIMS = (64, 128)
_CPP_TYPES = {torch.bfloat16: "__nv_bfloat16", torch.float16: "__half"}
# Found from this file, so the same sources serve an installed overlay and the plugin route.
CSRC_DIR = (
    pathlib.Path(__file__).resolve().parents[2] / "jit" / "csrc" / "sage_attn_sm90"
)


def is_supported(
    device: torch.device | str, head_dim: int, dtype: torch.dtype
) -> tuple[bool, str]:
    """Whether this kernel can run the problem on ``device``, and if not, why (for the start-up log)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False, "no CUDA device"
    cap = torch.cuda.get_device_capability(dev)
    if cap != (9, 0):
        return False, f"compute capability {cap[0]}.{cap[1]} is not sm_90 (Hopper)"
    if head_dim not in SUPPORTED_HEAD_DIMS:
        return False, f"head_dim {head_dim} not in {SUPPORTED_HEAD_DIMS}"
    if dtype not in _CPP_TYPES:
        return False, f"dtype {dtype} is not bf16/fp16"
    if not (CSRC_DIR / "entry.cuh").is_file():
        return False, f"kernel sources missing under {CSRC_DIR}"
    return True, "sm_90"


def stage_bytes(head_dim: int) -> int:
    """Bytes of one stage image: K slow half + V (16-bit), K fast half (INT8), key scales (fp32)."""
    dh = head_dim // 2
    return BLOCK_N * dh * 2 + BLOCK_N * head_dim * 2 + BLOCK_N * dh + BLOCK_N * 4


@functools.lru_cache(maxsize=None)
def _module(head_dim: int, dtype: torch.dtype) -> Module:
    from sglang.kernels.jit.utils import load_jit

    cpp = _CPP_TYPES[dtype]
    args = f"{head_dim}, {cpp}"
    return load_jit(
        "sage_attn_sm90",
        str(head_dim),
        cpp.strip("_"),
        external_cuda_files=[str(CSRC_DIR / "entry.cuh")],
        cuda_wrappers=[
            ("pack", f"sage_sm90::ffi_pack<{args}>"),
            ("attn", f"sage_sm90::ffi_attn<{args}>"),
        ],
        extra_cuda_cflags=["-O3", "-DNDEBUG"],
    )


def precompile(
    head_dims=SUPPORTED_HEAD_DIMS, dtypes=(torch.bfloat16, torch.float16)
) -> list[str]:
    """Build (or load from the JIT cache) every module; returns the names built."""
    built = []
    for d in head_dims:
        for dt in dtypes:
            _module(d, dt)
            built.append(f"d{d}/{dt}")
    return built


def new_stage_buffer(
    plan: SagePlan, num_kv_heads: int, head_dim: int, device: torch.device | str
) -> torch.Tensor:
    return torch.empty(
        (num_kv_heads, plan.num_k_blocks, stage_bytes(head_dim)),
        dtype=torch.uint8,
        device=device,
    )


def _check(
    q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, plan: SagePlan
) -> None:
    if (plan.block_m, plan.block_n) != (BLOCK_M, BLOCK_N):
        raise ValueError(
            f"the sm90 kernel needs a {BLOCK_M}x{BLOCK_N} plan, got {plan.block_m}x{plan.block_n}"
        )
    if q.dtype not in _CPP_TYPES or k_pool.dtype != q.dtype or v_pool.dtype != q.dtype:
        raise ValueError(
            f"sm90 sage_attn needs q and the KV pool in one of bf16/fp16, got {q.dtype}/{k_pool.dtype}/{v_pool.dtype}"
        )
    d = q.shape[-1]
    if d not in SUPPORTED_HEAD_DIMS or k_pool.shape[-1] != d or v_pool.shape[-1] != d:
        raise ValueError(
            f"sm90 sage_attn supports head_dim {SUPPORTED_HEAD_DIMS} for q, k and v, got {d}"
        )
    for name, t in (("q", q), ("k_pool", k_pool), ("v_pool", v_pool)):
        if t.stride(-1) != 1 or t.stride(-2) % 8 != 0 or t.stride(0) % 8 != 0:
            raise ValueError(
                f"{name} must be contiguous in head_dim with 16-byte aligned rows"
            )


def forward(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    plan: SagePlan,
    slot_table: torch.Tensor,
    slot_row_off: torch.Tensor,
    sm_scale: float,
    causal: bool = True,
    out: Optional[torch.Tensor] = None,
    rope_neox: bool = True,
    stages: Optional[torch.Tensor] = None,
    pack: bool = True,
) -> torch.Tensor:
    """8-bit extend attention of the batch in ``plan`` (see the Triton reference for the contract).

    ``stages`` is the [kv_heads, num_k_blocks, stage_bytes] scratch of the stage images (allocated
    here when not given); ``pack=False`` reuses images already packed for these K/V.
    """
    _check(q, k_pool, v_pool, plan)
    d, hq, hkv = q.shape[-1], q.shape[1], k_pool.shape[1]
    if hq % hkv:
        raise ValueError(f"q heads ({hq}) must be a multiple of kv heads ({hkv})")
    if slot_table.dtype != torch.int32 or slot_row_off.dtype != torch.int64:
        raise ValueError("slot_table must be int32 and slot_row_off int64")
    if stages is None:
        stages = new_stage_buffer(plan, hkv, d, q.device)
    elif (
        stages.dtype != torch.uint8
        or stages.numel() < hkv * plan.num_k_blocks * stage_bytes(d)
    ):
        raise ValueError("stages is too small for this plan")
    if out is None:
        out = torch.empty_like(q)
    mod = _module(d, q.dtype)
    stream = torch.cuda.current_stream(q.device).cuda_stream
    if pack and plan.num_k_blocks:
        mod["pack"](
            k_pool, v_pool, slot_table, slot_row_off, plan.kv_lens, plan.kblk_seq, plan.kblk_start, stages,
            k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
            plan.num_k_blocks, hkv, int(rope_neox), stream,
        )  # fmt: skip
    if plan.num_q_blocks:
        mod["attn"](
            q, out, stages, plan.qo_indptr, plan.kv_lens, plan.kblk_indptr, plan.qblk_seq, plan.qblk_start,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            plan.num_q_blocks, hq, hq // hkv, plan.num_k_blocks, float(sm_scale), int(rope_neox), int(causal),
            stream,
        )  # fmt: skip
    return out
