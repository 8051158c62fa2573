"""What ``sage_attn`` supports, checked once at start-up (refuse early, never fall back silently)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .kernels import SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS


class SageAttnUnsupported(ValueError):
    """A model or server setting that the 8-bit kernels do not cover."""


@dataclass(frozen=True)
class ModelFacts:
    """The settings the decision depends on, gathered from SGLang objects (or built in tests)."""

    use_mla: bool
    is_encoder_decoder: bool
    sliding_window_size: Optional[int]
    attn_logit_softcapping: Optional[float]
    head_dim: int
    v_head_dim: int
    dtype: torch.dtype
    kv_cache_dtype: torch.dtype
    page_size: int
    speculative_algorithm: Optional[str]
    dcp_size: int
    is_causal_lm: bool


def has_sliding_window(size: Optional[int]) -> bool:
    """SGLang's convention: None or -1 mean no window; any other value (0 included) is one. Used
    for the start-up check and the per-layer check alike."""
    return size is not None and size > -1


def refusal_reasons(f: ModelFacts) -> list[str]:
    """Every unsupported setting, each naming the setting, its value and what is supported."""
    why: list[str] = []
    if f.use_mla:
        why.append(
            "MLA attention (model attention_arch=MLA) is not supported; sage_attn covers MHA/GQA/MQA"
        )
    if f.is_encoder_decoder:
        why.append(
            "cross-attention (encoder-decoder model) is not supported; sage_attn is decoder-only"
        )
    if not f.is_causal_lm:
        why.append(
            "encoder-only / bidirectional models are not supported; sage_attn is causal-only"
        )
    if has_sliding_window(f.sliding_window_size):
        why.append(
            f"sliding-window attention (sliding_window={f.sliding_window_size}) is not supported"
        )
    if f.attn_logit_softcapping:
        why.append(
            f"logit soft-capping (attn_logit_softcapping={f.attn_logit_softcapping}) is not supported"
        )
    if f.head_dim not in SUPPORTED_HEAD_DIMS:
        why.append(
            f"head_dim={f.head_dim} is not supported; supported: {list(SUPPORTED_HEAD_DIMS)}"
        )
    if f.v_head_dim != f.head_dim:
        why.append(
            f"v_head_dim={f.v_head_dim} differs from head_dim={f.head_dim}; sage_attn needs them equal"
        )
    if f.dtype not in SUPPORTED_DTYPES:
        why.append(
            f"model dtype {f.dtype} is not supported; supported: float16, bfloat16"
        )
    if f.kv_cache_dtype not in SUPPORTED_DTYPES:
        why.append(
            f"KV cache dtype {f.kv_cache_dtype} is not supported; use --kv-cache-dtype auto (fp16/bf16)"
        )
    if f.page_size != 1:
        why.append(f"--page-size {f.page_size} is not supported yet; use --page-size 1")
    if f.speculative_algorithm:
        why.append(f"speculative decoding ({f.speculative_algorithm}) is not supported")
    if f.dcp_size > 1:
        why.append(
            f"decode context parallelism (dcp_size={f.dcp_size}) is not supported"
        )
    return why


def facts_from_runner(model_runner: Any) -> ModelFacts:
    """Read the relevant settings off SGLang's ModelRunner."""
    mc = model_runner.model_config
    hf = getattr(mc, "hf_text_config", None) or mc.hf_config
    sa = model_runner.server_args
    return ModelFacts(
        use_mla=bool(model_runner.use_mla_backend),
        is_encoder_decoder=bool(mc.is_encoder_decoder),
        sliding_window_size=model_runner.sliding_window_size,
        attn_logit_softcapping=getattr(hf, "attn_logit_softcapping", None),
        head_dim=int(mc.head_dim),
        v_head_dim=int(mc.v_head_dim),
        dtype=model_runner.dtype,
        kv_cache_dtype=model_runner.kv_cache_dtype,
        page_size=int(model_runner.page_size or 1),
        speculative_algorithm=sa.speculative_algorithm,
        dcp_size=int(getattr(sa, "dcp_size", 1) or 1),
        is_causal_lm=getattr(hf, "is_causal", True) is not False,
    )


def check_supported(model_runner: Any) -> None:
    reasons = refusal_reasons(facts_from_runner(model_runner))
    if reasons:
        raise SageAttnUnsupported(
            "--attention-backend sage_attn cannot serve this model: "
            + "; ".join(reasons)
            + ". Choose another backend (e.g. flashinfer or triton)."
        )
