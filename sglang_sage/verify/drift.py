"""Activation precision drift: per-layer attention outputs, 8-bit kernel vs a bf16 reference.

Outside SGLang, so that every layer's attention output can be captured: the HF model (transformers
5.x, bf16, GPU) runs the same tokens twice through a custom attention function registered with
transformers' ``AttentionInterface``:

* ``ref`` run: torch SDPA (causal, bf16) in every layer;
* ``sage`` run: the ``sage_attn`` Triton kernel (``sage_extend_attention``, imported from the
  overlay file by path) in every layer. Each run feeds its own activations forward, so the
  per-layer difference of the two runs is the *propagated* drift over depth.

Inside the ``sage`` run every layer also computes SDPA bf16 and SDPA fp32 on the *same* inputs:
``local`` = sage vs SDPA-bf16 on identical inputs (the kernel's own error, no propagation), and
``floor`` = SDPA-bf16 vs fp32 (what bf16 attention itself costs), so the 8-bit error can be read
against the error every bf16 backend already has. Final logits of both runs give a full-vocabulary
KL (no top-K approximation).

Run as ``python -m sglang_sage.verify.drift --job JOB.json`` (own process: CUDA state and the
transformers import stay out of the orchestrator).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

ATTN_NAME = "sage_verify_drift"
KERNEL_REL = Path("overlay/sglang/srt/layers/attention/sage_attn")
INSTALLED_KERNEL = "sglang.srt.layers.attention.sage_attn.kernels"


def log(msg: str) -> None:
    print(f"[verify] [drift] {msg}", flush=True)


def load_kernel(repo_root: Path) -> tuple[Any, str]:
    """``sage_extend_attention`` from the overlay dir (a synthetic package, so ``from .plan import``
    inside kernels.py resolves without executing sglang); falls back to an installed sglang."""
    pkg_dir = repo_root / KERNEL_REL
    if (pkg_dir / "kernels.py").is_file():
        name = "_sage_verify_overlay_kernels"
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(pkg_dir)]  # namespace-like: its __init__ is not run
            sys.modules[name] = pkg
        mod = importlib.import_module(f"{name}.kernels")
        return mod.sage_extend_attention, str(pkg_dir / "kernels.py")
    mod = importlib.import_module(INSTALLED_KERNEL)
    return mod.sage_extend_attention, f"{INSTALLED_KERNEL} (installed)"


class DriftState:
    """What the registered attention function does on this forward, and what it captured."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.mode = "ref"
        self.capture: dict[int, Any] = {}
        self.local: dict[int, dict[str, float]] = {}


def _rel(a, b) -> float:
    a64, b64 = a.double(), b.double()
    d = b64.norm().item()
    return (a64 - b64).norm().item() / d if d > 0 else 0.0


def _cos(a, b) -> float:
    import torch

    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def sdpa_ref(query, key, value, scaling):
    """Causal SDPA with GQA by repetition (kv head h serves q heads h*g .. h*g+g-1); out [B, L, Hq, D]."""
    import torch

    group = query.shape[1] // key.shape[1]
    if group > 1:
        key = key.repeat_interleave(group, dim=1)
        value = value.repeat_interleave(group, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous()


def sage_attn(kernel, query, key, value, scaling):
    """One sequence through the paged-KV kernel: the pool is the sequence itself (slots 0..L-1)."""
    import torch

    if query.shape[0] != 1:
        raise ValueError("drift runs one sequence at a time")
    L = query.shape[2]
    dev = query.device
    q = query[0].transpose(0, 1).contiguous()  # [L, Hq, D]
    k = key[0].transpose(0, 1).contiguous()  # [L, Hkv, D]
    v = value[0].transpose(0, 1).contiguous()
    indptr = torch.tensor([0, L], dtype=torch.int32, device=dev)
    indices = torch.arange(L, dtype=torch.int32, device=dev)
    out = kernel(q, k, v, indptr, indptr.clone(), indices, L, L, float(scaling), causal=True)
    return out.unsqueeze(0)


def make_attention_fn(state: DriftState):
    """The function registered with transformers' AttentionInterface (signature of its sdpa one)."""

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
        layer = int(getattr(module, "layer_idx", len(state.capture)))
        if state.mode == "ref":
            out = sdpa_ref(query, key, value, scaling)
        else:
            out = sage_attn(state.kernel, query, key, value, scaling)
            same_in_bf16 = sdpa_ref(query, key, value, scaling)
            same_in_fp32 = sdpa_ref(query.float(), key.float(), value.float(), scaling)
            state.local[layer] = {
                "rel_l2": _rel(out, same_in_bf16),
                "cos": _cos(out, same_in_bf16),
                "sage_vs_fp32_rel_l2": _rel(out, same_in_fp32),
                "bf16_vs_fp32_rel_l2": _rel(same_in_bf16, same_in_fp32),
            }
        state.capture[layer] = out.detach().float()
        return out.to(query.dtype), None

    return attention


def logits_compare(p_logits, q_logits, chunk: int = 1024) -> dict[str, float]:
    """Full-vocabulary KL(ref‖sage) per position (mean/max) and top-1 agreement, chunked on GPU."""
    import torch

    kls, agree, n = [], 0, p_logits.shape[0]
    for s in range(0, n, chunk):
        lp = torch.log_softmax(p_logits[s:s + chunk].float(), dim=-1)
        lq = torch.log_softmax(q_logits[s:s + chunk].float(), dim=-1)
        kls.append((lp.exp() * (lp - lq)).sum(-1).clamp_min(0))
        agree += (lp.argmax(-1) == lq.argmax(-1)).sum().item()
    kl = torch.cat(kls)
    return {"full_kl_mean": kl.mean().item(), "full_kl_max": kl.max().item(), "top1_agreement": agree / n}


def register(state: DriftState) -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, make_attention_fn(state))
    try:  # 5.x builds masks per implementation; SDPA's rules fit (we apply causal ourselves)
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    except ImportError:
        pass


def run(job: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    repo_root = Path(job["repo_root"])
    out: dict[str, Any] = {"lengths": {}, "errors": {}}
    kernel, source = load_kernel(repo_root)
    out["kernel_source"] = source
    state = DriftState(kernel)
    register(state)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.bfloat16,
                                                 attn_implementation=ATTN_NAME)
    device = job.get("device", "cuda")
    model = model.to(device).eval()
    out["model_load_s"] = round(time.time() - t0, 2)
    out["num_layers"] = int(model.config.num_hidden_layers)
    out["device"] = torch.cuda.get_device_name(0) if device == "cuda" else device
    tokens: list[int] = json.loads(Path(job["workload_path"]).read_text())["tokens"]
    for L in job["lengths"]:
        key = str(L)
        try:
            if L > len(tokens):
                raise ValueError(f"corpus has only {len(tokens)} tokens")
            ids = torch.tensor([tokens[:L]], device=device)
            t1 = time.time()
            with torch.no_grad():
                state.mode, state.capture, state.local = "ref", {}, {}
                ref_logits = model(input_ids=ids).logits[0]
                ref_cap = state.capture
                state.mode, state.capture = "sage", {}
                sage_logits = model(input_ids=ids).logits[0]
                sage_cap, local = state.capture, state.local
            layers = sorted(ref_cap)
            res = {
                "layers": layers,
                "propagated_rel_l2": [_rel(sage_cap[i], ref_cap[i]) for i in layers],
                "propagated_cos": [_cos(sage_cap[i], ref_cap[i]) for i in layers],
                "local_rel_l2": [local[i]["rel_l2"] for i in layers],
                "local_cos": [local[i]["cos"] for i in layers],
                "sage_vs_fp32_rel_l2": [local[i]["sage_vs_fp32_rel_l2"] for i in layers],
                "bf16_vs_fp32_rel_l2": [local[i]["bf16_vs_fp32_rel_l2"] for i in layers],
                "logits": logits_compare(ref_logits, sage_logits),
                "seconds": round(time.time() - t1, 2),
            }
            bad = [v for v in res["propagated_rel_l2"] + res["local_rel_l2"] if not math.isfinite(v)]
            if bad:
                res["non_finite"] = len(bad)
            out["lengths"][key] = res
            log(f"L={L}: local rel-L2 max {max(res['local_rel_l2']):.4f}, propagated last layer "
                f"{res['propagated_rel_l2'][-1]:.4f}, logits KL {res['logits']['full_kl_mean']:.2e} "
                f"({res['seconds']}s)")
        except Exception as e:  # noqa: BLE001 - recorded per length
            out["errors"][key] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"
            log(f"L={L} FAILED: {type(e).__name__}: {str(e)[:300]}")
        finally:
            state.capture, state.local = {}, {}
            if device == "cuda":
                torch.cuda.empty_cache()
        Path(job["result_path"]).write_text(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="verify.py drift worker")
    ap.add_argument("--job", required=True)
    args = ap.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    for k, v in (job.get("env") or {}).items():
        os.environ[k] = str(v)
    try:
        out = run(job)
    except BaseException as e:  # noqa: BLE001 - never die without writing why
        Path(job["result_path"]).write_text(json.dumps(
            {"fatal": f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"}, indent=1))
        log(f"FAILED: {type(e).__name__}: {str(e)[:500]}")
        return 1
    return 0 if out["lengths"] and not out["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
