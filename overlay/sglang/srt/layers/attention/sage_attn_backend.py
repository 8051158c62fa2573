"""``sage_attn``: 8-bit SageAttention for SGLang's prefill and extend, over the paged KV cache.

* Prefill, extend with a cached prefix (radix hit), chunked prefill and mixed batches run 8-bit
  kernels: Q·Kᵀ over the fast-rotating half of each head in INT8 (K smoothed by the mean of its
  sequence's first keys), over the slow-rotating half in 16-bit; P·V in fp16; causal mask aligned
  to the end of each sequence. On Hopper (sm_90) the warp-specialized wgmma kernel built by SGLang's
  JIT framework runs (``sglang.kernels.ops.attention.sage_attn_sm90``); elsewhere the Triton
  kernels of ``sage_attn.kernels`` (the reference of the scheme). The choice is made at start,
  logged and published with the counters (``SGLANG_SAGE_KERNEL=triton|sm90`` forces one). A row's
  result does not depend on how the batch was cut (radix hits and chunked prefill give the same
  output as one shot). K and V are read from the KV pool through ``req_to_token``; only SGLang's
  ``set_kv_buffer`` writes the pool.
* Decode is memory-bound (one query per sequence), where 8-bit QK buys nothing: it is delegated to
  an existing decode backend, flashinfer by default (``SGLANG_SAGE_DECODE_BACKEND=triton`` to
  change), including its CUDA-graph capture and replay. When SGLang's hybrid mode already gives
  decode to another backend (``--decode-attention-backend``), none is built here.
* Unsupported settings are refused at start (``support.check_supported``); nothing falls back.
* Per-path counters (``sage_attn.stats``) prove which kernels ran.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch

from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.layers.attention.sage_attn.kernels import (
    kernel_config,
    sage_extend_attention_planned,
    select_kernel,
    sm90_op,
)
from sglang.srt.layers.attention.sage_attn.plan import SagePlan, build_plan
from sglang.srt.layers.attention.sage_attn.stats import SageStats
from sglang.srt.layers.attention.sage_attn.support import (
    SageAttnUnsupported,
    check_supported,
    has_sliding_window,
)
from sglang.srt.layers.radix_attention import AttentionType, RadixAttention
from sglang.srt.model_executor.forward_batch_info import ForwardBatch

if TYPE_CHECKING:
    from sglang.srt.model_executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)

DECODE_BACKEND_ENV = "SGLANG_SAGE_DECODE_BACKEND"
BACKEND_NAME = "sage_attn"


@dataclass
class SageForwardMetadata:
    """Built once per extend batch in ``init_forward_metadata``; read by every layer."""

    plan: SagePlan
    # int64 [B]: offset of each request's row in the flattened req_to_token table
    slot_row_off: torch.Tensor
    # sm90 kernel: the batch's stage-image scratch, packed once per layer and read by every query block
    stages: Optional[torch.Tensor]
    # counter names for this batch's path
    batch_counter: str
    layer_counter: str


def _default_decode_backend() -> str:
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return "triton"
    return "flashinfer"


def _resolved_decode_backend(model_runner: ModelRunner) -> str:
    """The decode backend SGLang resolved for this runner (SGLang 0.5.17's API; releases that
    resolve it elsewhere adapt this function in their overlay patch, see
    docs/sglang-api-differences.md)."""
    return model_runner.server_args.get_attention_backends()[1]


def _rope_layout(model_runner: ModelRunner) -> tuple[bool, str]:
    """The model's rotary layout (NeoX or GPT-J pairs): it decides which channels rotate slowly and
    stay 16-bit. Any layout gives exact attention up to rounding; a wrong guess only costs accuracy.
    """
    model = getattr(model_runner, "model", None)
    styles = set()
    partial = False
    if model is not None:
        for mod in model.modules():
            style = getattr(mod, "is_neox_style", None)
            if isinstance(style, bool):
                styles.add(style)
                partial |= getattr(mod, "rotary_dim", None) not in (
                    None,
                    getattr(mod, "head_size", None),
                )
    if len(styles) != 1:
        found = "no rotary embedding" if not styles else "mixed rotary layouts"
        return True, f"{found} found: NeoX channel split"
    neox = styles.pop()
    desc = "NeoX" if neox else "GPT-J (interleaved)"
    return neox, f"{desc} rotary layout" + (" (partial rotary)" if partial else "")


def _tp_rank() -> int:
    try:
        from sglang.srt.distributed.parallel_state import get_tensor_model_parallel_rank

        return int(get_tensor_model_parallel_rank())
    except Exception:  # noqa: BLE001 - no TP group (unit tests): rank 0
        return 0


class SageAttnBackend(AttentionBackend):
    """8-bit prefill/extend; decode delegated to an existing backend (see module docstring)."""

    def __init__(self, model_runner: ModelRunner):
        super().__init__()
        check_supported(model_runner)
        self.device = model_runner.device
        self.req_to_token = model_runner.req_to_token_pool.req_to_token
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.head_dim = model_runner.model_config.head_dim
        # kv heads of this rank, as the pool holds them (the stage images are per kv head)
        self.num_kv_heads = int(self.token_to_kv_pool.head_num)
        dtype = model_runner.model_config.dtype
        try:
            self.kernel, kernel_desc = select_kernel(self.device, self.head_dim, dtype)
        except ValueError as exc:
            raise SageAttnUnsupported(str(exc)) from exc
        self.tile = kernel_config(self.head_dim, self.kernel)
        self._stages: Optional[torch.Tensor] = None
        if self.kernel == "sm90":
            # build (or load from the JIT cache) now, not in the first request
            sm90_op().precompile(head_dims=(self.head_dim,), dtypes=(dtype,))
        self.rope_neox, rope_desc = _rope_layout(model_runner)
        self.forward_metadata: Optional[SageForwardMetadata] = None
        self._checked_layers: set[int] = set()

        decode_name = _resolved_decode_backend(model_runner)
        self.decode_backend: Optional[AttentionBackend] = None
        if decode_name == BACKEND_NAME:
            decode_name = (
                os.environ.get(DECODE_BACKEND_ENV) or _default_decode_backend()
            )
            if decode_name == BACKEND_NAME:
                raise SageAttnUnsupported(
                    f"{DECODE_BACKEND_ENV} must name another backend, not {BACKEND_NAME}"
                )
            from sglang.srt.layers.attention.attention_registry import (
                ATTENTION_BACKENDS,
            )

            if decode_name not in ATTENTION_BACKENDS:
                raise SageAttnUnsupported(
                    f"{DECODE_BACKEND_ENV}={decode_name!r} is not a registered attention backend"
                )
            self.decode_backend = ATTENTION_BACKENDS[decode_name](model_runner)
            decode_desc = f"{decode_name} (delegated, CUDA graphs by {decode_name})"
        else:
            decode_desc = f"{decode_name} (SGLang hybrid mode)"
        self.decode_backend_name = decode_name
        self.stats = SageStats(
            decode_name, tp_rank=_tp_rank(), prefill_kernel=self.kernel
        )
        self.stats.publish()
        logger.info(
            "sage_attn: prefill/extend = %s (Q·Kᵀ: INT8 on the fast-rotating half, 16-bit on the slow half, %s; "
            "fp16 P·V; tiles %sx%s); decode = %s",
            kernel_desc,
            rope_desc,
            self.tile.block_m,
            self.tile.block_n,
            decode_desc,
        )

    # ---- metadata -------------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch: ForwardBatch):
        mode = forward_batch.forward_mode
        if mode.is_decode_or_idle():
            self._decode().init_forward_metadata(forward_batch)
            if mode.is_decode():
                self.stats.batch_done("decode_batches")
            return
        if not mode.is_extend() or mode.is_target_verify():
            raise SageAttnUnsupported(
                f"sage_attn does not support forward mode {mode.name}"
            )
        self.forward_metadata = self._plan_extend(forward_batch)
        self.stats.batch_done(self.forward_metadata.batch_counter)

    def _plan_extend(self, forward_batch: ForwardBatch) -> SageForwardMetadata:
        q_lens = forward_batch.extend_seq_lens_cpu
        prefix_lens = forward_batch.extend_prefix_lens_cpu
        if q_lens is None:  # not filled on some internal paths: read once per batch
            q_lens = forward_batch.extend_seq_lens.tolist()
        if prefix_lens is None:
            prefix_lens = forward_batch.extend_prefix_lens.tolist()
        q_lens = [int(x) for x in q_lens]
        prefix_lens = [int(x) for x in prefix_lens]
        kv_lens = [a + b for a, b in zip(q_lens, prefix_lens)]
        plan = build_plan(
            q_lens, kv_lens, self.device, self.tile.block_m, self.tile.block_n
        )
        slot_row_off = forward_batch.req_pool_indices.to(
            torch.int64
        ) * self.req_to_token.stride(0)
        with_prefix = any(p > 0 for p in prefix_lens)
        kind = "extend_prefix_8bit" if with_prefix else "prefill_8bit"
        stages = self._stage_buffer(plan) if self.kernel == "sm90" else None
        return SageForwardMetadata(
            plan, slot_row_off, stages, f"{kind}_batches", f"{kind}_layer_calls"
        )

    def _stage_buffer(self, plan: SagePlan) -> torch.Tensor:
        """The sm90 kernel's scratch for this batch: one buffer owned by the backend, grown when a
        batch needs more (never per layer call), viewed at this batch's size."""
        need = (
            self.num_kv_heads * plan.num_k_blocks * sm90_op().stage_bytes(self.head_dim)
        )
        if self._stages is None or self._stages.numel() < need:
            self._stages = None  # free the old one first
            self._stages = torch.empty(need, dtype=torch.uint8, device=self.device)
        return self._stages[:need].view(self.num_kv_heads, plan.num_k_blocks, -1)

    # CUDA graphs are captured for decode only, so these belong to the decode backend.
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
        self._decode().init_cuda_graph_state(max_bs, max_num_tokens)

    def init_forward_metadata_out_graph(
        self, forward_batch: ForwardBatch, in_capture: bool = False
    ):
        self._decode().init_forward_metadata_out_graph(
            forward_batch, in_capture=in_capture
        )
        if not in_capture and forward_batch.forward_mode.is_decode():
            self.stats.add("cuda_graph_decode_replays")
            self.stats.batch_done("decode_batches")

    def init_forward_metadata_in_graph(self, forward_batch: ForwardBatch):
        self._decode().init_forward_metadata_in_graph(forward_batch)

    def get_cuda_graph_seq_len_fill_value(self):
        return self._decode().get_cuda_graph_seq_len_fill_value()

    def _decode(self) -> AttentionBackend:
        if self.decode_backend is None:
            raise SageAttnUnsupported(
                f"decode was given to {self.decode_backend_name} by SGLang's hybrid mode; "
                "sage_attn received a decode call it has no backend for"
            )
        return self.decode_backend

    # ---- forward --------------------------------------------------------------------------
    def _check_layer(self, layer: RadixAttention, kwargs: dict) -> None:
        if kwargs.get("sinks") is not None or kwargs.get("score_mod") is not None:
            raise SageAttnUnsupported(
                "attention sinks / score_mod are not supported by sage_attn"
            )
        if layer.layer_id in self._checked_layers:
            return
        problems = []
        if layer.is_cross_attention:
            problems.append("cross-attention")
        if layer.attn_type == AttentionType.ENCODER_ONLY:
            problems.append("encoder-only attention")
        if layer.logit_cap and layer.logit_cap > 0:
            problems.append(f"logit soft-cap {layer.logit_cap}")
        if has_sliding_window(layer.sliding_window_size):
            problems.append(f"sliding window {layer.sliding_window_size}")
        if layer.qk_head_dim != layer.v_head_dim:
            problems.append(
                f"qk_head_dim {layer.qk_head_dim} != v_head_dim {layer.v_head_dim}"
            )
        if problems:
            raise SageAttnUnsupported(
                f"layer {layer.layer_id}: {', '.join(problems)} not supported by sage_attn"
            )
        self._checked_layers.add(layer.layer_id)

    def forward_extend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: RadixAttention,
        forward_batch: ForwardBatch,
        save_kv_cache: bool = True,
        **kwargs,
    ):
        self._check_layer(layer, kwargs)
        if k is not None and save_kv_cache:
            # The kernels read every key (prefix and new) from the pool, so write the new ones first.
            self.token_to_kv_pool.set_kv_buffer(
                layer, forward_batch.out_cache_loc, k, v
            )
        md = self.forward_metadata
        hq, d = layer.tp_q_head_num, layer.qk_head_dim
        o = q.new_empty((q.shape[0], hq * layer.v_head_dim))
        sage_extend_attention_planned(
            q.view(-1, hq, d),
            self.token_to_kv_pool.get_key_buffer(layer.layer_id),
            self.token_to_kv_pool.get_value_buffer(layer.layer_id),
            md.plan,
            self.req_to_token.view(-1),
            md.slot_row_off,
            layer.scaling,
            causal=True,
            out=o.view(-1, hq, layer.v_head_dim),
            rope_neox=self.rope_neox,
            kernel=self.kernel,
            stages=md.stages,
        )
        self.stats.add(md.layer_counter)
        return o

    def forward_decode(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: RadixAttention,
        forward_batch: ForwardBatch,
        save_kv_cache: bool = True,
        **kwargs,
    ):
        # Eager decode only: a CUDA-graph capture pass is not a decode (replays are counted per batch
        # in cuda_graph_decode_replays).
        if not torch.cuda.is_current_stream_capturing():
            self.stats.add("decode_layer_calls")
        return self._decode().forward_decode(
            q, k, v, layer, forward_batch, save_kv_cache, **kwargs
        )
