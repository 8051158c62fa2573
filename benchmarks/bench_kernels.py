#!/usr/bin/env python3
"""Prefill attention kernels side by side on one GPU: sage_attn vs cuDNN / flash SDPA, FA3 (bf16 and
FP8 e4m3, through sgl_kernel's ``flash_attn_with_kvcache``), SageAttention 1.0.6 and SGLang's Triton
extend kernel (causal, GQA).

Every backend computes the same problem from the same random inputs:

* a batch of B sequences of L total tokens each; with a prefix fraction f the first p = f·L tokens
  are already in the KV cache, the queries are the last Lq = L - p tokens, the keys/values all L
  tokens, and the causal mask is aligned to the end (query i sees keys 0..p+i);
* the KV cache is an SGLang-style pool ``[B·L + 1, Hkv, D]`` (slot 0 = the padding slot) addressed
  through ``kv_indptr``/``kv_indices`` (FA3: the same slots as a page-size-1 page table, the rows of
  SGLang's ``req_to_token``); the dense backends get the same K/V gathered into ``[B, H, L, D]``
  outside the timed region.

Backends are entries of ``BACKENDS`` (a loader run once, a factory per shape) plus one display
entry in ``_results.KERNEL_BACKEND_SPECS``; the issue #11 targets are computed for every backend
marked there as a candidate.

Timing: ``triton.testing.do_bench`` median (it clears the L2 cache between runs); the whole public
call is timed (for sage_attn that includes K smoothing and INT8 quantization; for SageAttention
1.0.6 its smoothing, quantization and V cast). Accuracy: cosine of each output vs an exact fp32
attention on sampled query rows (first/last/evenly spaced rows of every sequence, all heads), and
of sage_attn vs the first SDPA output on the full tensor. Results: JSON (written after every
shape), markdown and PNG under ``benchmarks/results/<gpu>/``.

Run (GPU machine): ``PYTHONPATH=/tmp/site python3 benchmarks/bench_kernels.py [--quick]``;
re-render a JSON: ``python3 benchmarks/bench_kernels.py --render benchmarks/results/h200/kernels.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _results as R

DEFAULT_SAGE_KERNEL = R.REPO_ROOT / "overlay/sglang/srt/layers/attention/sage_attn/kernels.py"
# name -> (q heads, kv heads, head dim)
GEOMETRIES: dict[str, tuple[int, int, int]] = {"llama3-8b": (32, 8, 128), "smollm2": (9, 3, 64)}
# rough throughput guesses (TFLOPS) for the printed time estimate only
_EST_TFLOPS = {
    "sage": 400.0,
    "sage_sm90": 520.0,
    "cudnn": 450.0,
    "fa3": 550.0,
    "fa3_fp8": 650.0,
    "flash": 300.0,
    "sageattn": 300.0,
    "triton_extend": 120.0,
}
FATAL_MARKERS = (
    "illegal memory access",
    "unspecified launch failure",
    "device-side assert",
    "CUDA error: an illegal",
    "misaligned address",
)


@dataclass(frozen=True)
class Shape:
    """One benchmarked problem."""

    geometry: str
    hq: int
    hkv: int
    d: int
    batch: int
    seq_len: int
    prefix_frac: float

    @property
    def prefix(self) -> int:
        """Cached prefix tokens per sequence."""
        return round(self.seq_len * self.prefix_frac)

    @property
    def lq(self) -> int:
        """New (query) tokens per sequence."""
        return self.seq_len - self.prefix

    @property
    def flops(self) -> float:
        """Causal FLOPs (see _results.causal_flops)."""
        return R.causal_flops(self.batch, self.hq, self.d, self.lq, self.seq_len)

    def label(self) -> str:
        """Short printable name."""
        return f"{self.geometry} B={self.batch} L={R.fmt_len(self.seq_len)} prefix={round(self.prefix_frac * 100)}%"


# ------------------------------------------------------------------------------------------------
# planning
# ------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="small sweep (L=4K,16K, B=1, both geometries and prefixes; shorter timing)"
    )
    ap.add_argument(
        "--lengths",
        default=None,
        help="total tokens per sequence, comma list (default 1024,4096,16384,32768,65536; quick 4096,16384)",
    )
    ap.add_argument("--batches", default=None, help="batch sizes (default 1,8; quick 1)")
    ap.add_argument("--prefix", default="0,0.5", help="prefix fractions of L (default 0,0.5)")
    ap.add_argument("--geometries", default=",".join(GEOMETRIES), help=f"subset of {list(GEOMETRIES)}")
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {list(BACKENDS)}")
    ap.add_argument(
        "--max-batch-tokens",
        type=int,
        default=131072,
        help="skip shapes with B*L above this (default 131072: B=8 up to 16K)",
    )
    ap.add_argument("--warmup", type=float, default=None, help="do_bench warmup ms (default 25; quick 10)")
    ap.add_argument("--rep", type=float, default=None, help="do_bench rep ms (default 100; quick 40)")
    ap.add_argument(
        "--budget-s", type=float, default=420.0, help="stop starting new shapes after this many seconds (default 420)"
    )
    ap.add_argument("--sage-kernel", default=str(DEFAULT_SAGE_KERNEL), help="path of sage_attn kernels.py")
    ap.add_argument(
        "--ref-rows", type=int, default=256, help="reference query rows per sequence at B=1 (divided by B, at least 32)"
    )
    ap.add_argument(
        "--k-bias",
        type=float,
        default=R.I11_K_BIAS,
        help="std of a per-(kv head, channel) offset added to K, in units of K's own std (LLM-like "
        f"outlier channels; default {R.I11_K_BIAS}: the inputs issue #11's accuracy target names)",
    )
    ap.add_argument(
        "--shuffle-slots",
        action="store_true",
        help="random KV pool slot order (default: "
        "each sequence in consecutive slots, as a fresh SGLang pool hands them out)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out-root",
        default=str(R.RESULTS_ROOT),
        help="results go to <out-root>/<gpu-slug>/ (default benchmarks/results; on the device "
        "machine use $OUT so that they come back)",
    )
    ap.add_argument("--out-dir", default=None, help="exact output directory (overrides --out-root)")
    ap.add_argument("--stem", default=None, help="output file stem (default kernels / kernels_quick)")
    ap.add_argument("--render", default=None, metavar="JSON", help="only re-render md/png from a result JSON")
    ap.add_argument(
        "--device",
        default="cuda",
        choices=("cuda", "cpu"),
        help="cpu: plumbing dry run under TRITON_INTERPRET=1 (tiny shapes, no timing value)",
    )
    args = ap.parse_args(argv)
    args.lengths = args.lengths or ("4096,16384" if args.quick else "1024,4096,16384,32768,65536")
    args.batches = args.batches or ("1" if args.quick else "1,8")
    args.warmup = args.warmup if args.warmup is not None else (10.0 if args.quick else 25.0)
    args.rep = args.rep if args.rep is not None else (40.0 if args.quick else 100.0)
    args.stem = args.stem or ("kernels_quick" if args.quick else "kernels")
    return args


def _ints(s: str) -> list[int]:
    return [int(float(x)) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def plan_shapes(args: argparse.Namespace) -> tuple[list[Shape], list[str]]:
    """The shapes to run (most important first) and the notes about shapes left out."""
    shapes: list[Shape] = []
    notes: list[str] = []
    for geo in [g.strip() for g in args.geometries.split(",") if g.strip()]:
        if geo not in GEOMETRIES:
            notes.append(f"unknown geometry {geo!r} ignored")
            continue
        hq, hkv, d = GEOMETRIES[geo]
        for pf in _floats(args.prefix):
            for b in _ints(args.batches):
                for L in _ints(args.lengths):
                    s = Shape(geo, hq, hkv, d, b, L, pf)
                    if b * L > args.max_batch_tokens:
                        notes.append(f"left out {s.label()}: B*L={b * L} > --max-batch-tokens {args.max_batch_tokens}")
                        continue
                    if s.lq <= 0:
                        notes.append(f"left out {s.label()}: no query tokens")
                        continue
                    shapes.append(s)
    # the shapes issue #11's targets read first, so that a run cut short by its budget still has them
    wanted = {(R.I11_KERNEL_GEOMETRY, 1, L, pf) for L, pf, _ in R.I11_KERNEL_SPEED}
    shapes.sort(key=lambda x: (x.geometry, x.batch, x.seq_len, x.prefix_frac) not in wanted)
    return shapes, notes


def estimate_seconds(shape: Shape, backends: list[str], warmup: float, rep: float) -> float:
    """Very rough wall-time guess for one shape (for the printed plan only)."""
    total = 1.0  # inputs + reference
    for b in backends:
        if b == "sageattn" and shape.prefix > 0:
            continue
        t = shape.flops / (_EST_TFLOPS.get(b, 200.0) * 1e12)
        total += (warmup + rep) / 1e3 + 8 * t + 0.3
    return total


# ------------------------------------------------------------------------------------------------
# inputs, reference, comparison
# ------------------------------------------------------------------------------------------------
def make_inputs(shape: Shape, seed: int, k_bias: float, shuffle: bool, device: str = "cuda") -> dict[str, Any]:
    """Random bf16 inputs in SGLang's paged layout plus dense copies for the other backends."""
    import torch

    dev = torch.device(device)
    dt = torch.bfloat16
    B, L, p, lq = shape.batch, shape.seq_len, shape.prefix, shape.lq
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    n_tok = B * L
    pool = n_tok + 1  # slot 0: SGLang's padding slot (random too: never zeros)
    k_pool = torch.randn(pool, shape.hkv, shape.d, generator=g, device=dev, dtype=torch.float32)
    k_pool += k_bias * torch.randn(1, shape.hkv, shape.d, generator=g, device=dev, dtype=torch.float32)
    k_pool = k_pool.to(dt)
    v_pool = torch.randn(pool, shape.hkv, shape.d, generator=g, device=dev, dtype=dt)
    q = torch.randn(B * lq, shape.hq, shape.d, generator=g, device=dev, dtype=dt)
    if shuffle:
        slots = torch.randperm(n_tok, generator=g, device=dev) + 1
    else:
        slots = torch.arange(1, pool, device=dev)
    slots = slots.view(B, L).to(torch.int64)
    ar = torch.arange(B + 1, device=dev, dtype=torch.int32)
    inp: dict[str, Any] = {
        "q": q,
        "k_pool": k_pool,
        "v_pool": v_pool,
        "slots": slots,
        "qo_indptr": ar * lq,
        "kv_indptr": ar * L,
        "kv_indices": slots.reshape(-1).contiguous(),
        "prefix_indptr": ar * p,
        "prefix_indices": slots[:, :p].reshape(-1).contiguous(),
    }
    ext = slots[:, p:].reshape(-1)
    inp["k_ext"] = k_pool[ext].contiguous()
    inp["v_ext"] = v_pool[ext].contiguous()
    k_seq = k_pool[slots]  # [B, L, Hkv, D]
    v_seq = v_pool[slots]
    inp["k_seq"], inp["v_seq"] = k_seq, v_seq
    inp["q_hnd"] = q.view(B, lq, shape.hq, shape.d).transpose(1, 2).contiguous()
    inp["k_hnd"] = k_seq.transpose(1, 2).contiguous()
    inp["v_hnd"] = v_seq.transpose(1, 2).contiguous()
    return inp


def pick_rows(lq: int, n: int) -> list[int]:
    """Query rows checked against the reference: the first and last quarter-budget, rest spread."""
    if lq <= n:
        return list(range(lq))
    edge = max(1, n // 4)
    mid = n - 2 * edge
    rows = set(range(edge)) | set(range(lq - edge, lq))
    rows |= {round(x) for x in (edge + i * (lq - 2 * edge - 1) / max(1, mid - 1) for i in range(mid))}
    return sorted(r for r in rows if 0 <= r < lq)


def exact_reference(q: Any, k_seq: Any, v_seq: Any, shape: Shape, rows: list[int], sm_scale: float) -> Any:
    """fp32 attention for the given query rows of every sequence: [B, R, Hq, D]."""
    import torch

    B, lq, p = shape.batch, shape.lq, shape.prefix
    grp = shape.hq // shape.hkv
    qv = q.view(B, lq, shape.hq, shape.d)
    ridx = torch.tensor(rows, device=q.device)
    pos = ridx + p  # absolute positions of the rows
    keys = torch.arange(shape.seq_len, device=q.device)
    masked = keys[None, :] > pos[:, None]  # [R, L]
    out = torch.empty(B, len(rows), shape.hq, shape.d, device=q.device, dtype=torch.float32)
    for b in range(B):
        qb = qv[b, ridx].float()  # [R, Hq, D]
        for h in range(shape.hkv):
            kb = k_seq[b, :, h].float()  # [L, D]
            vb = v_seq[b, :, h].float()
            qh = qb[:, h * grp : (h + 1) * grp].transpose(0, 1)  # [grp, R, D]
            s = torch.matmul(qh, kb.t()) * sm_scale  # [grp, R, L]
            s.masked_fill_(masked[None], float("-inf"))
            out[b, :, h * grp : (h + 1) * grp] = torch.matmul(torch.softmax(s, dim=-1), vb).transpose(0, 1)
            del s
    return out


def compare_rows(out_packed: Any, shape: Shape, rows: list[int], ref: Any) -> dict[str, Any]:
    """Cosine / min row-head cosine / relative L2 / max abs error of a packed output vs the reference."""
    import torch

    o = out_packed.reshape(shape.batch, shape.lq, shape.hq, shape.d)
    sel = o[:, torch.tensor(rows, device=o.device)].float()
    finite = bool(torch.isfinite(sel).all())
    if not finite:
        return {"cos": None, "min_cos": None, "rel_l2": None, "rel_l1": None, "max_abs": None, "finite": False}
    a, b = sel.flatten().double(), ref.flatten().double()
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-30))
    per = torch.nn.functional.cosine_similarity(sel.reshape(-1, shape.d), ref.reshape(-1, shape.d), dim=-1)
    return {
        "cos": cos,
        "min_cos": float(per.min()),
        "rel_l2": float((a - b).norm() / b.norm().clamp_min(1e-30)),
        "rel_l1": float((a - b).abs().sum() / b.abs().sum().clamp_min(1e-30)),
        "max_abs": float((sel - ref).abs().max()),
        "finite": True,
    }


def full_cosine(a: Any, b: Any, chunk: int = 1 << 24) -> float:
    """Cosine of two same-shape tensors over all elements, in chunks (fp64 sums)."""
    import torch

    af, bf = a.reshape(-1), b.reshape(-1)
    dot = na = nb = 0.0
    for i in range(0, af.numel(), chunk):
        x, y = af[i : i + chunk].double(), bf[i : i + chunk].double()
        dot += float(torch.dot(x, y))
        na += float(torch.dot(x, x))
        nb += float(torch.dot(y, y))
    return dot / max(math.sqrt(na * nb), 1e-300)


# ------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------
class Unavailable(Exception):
    """A backend cannot run this shape; the message is the recorded reason."""


def load_sage_module(path: str) -> Any:
    """Import the sage_attn ``kernels.py`` by file path, without SGLang: its package directory is
    loaded the one way the repo loads the overlay's kernels (``sglang_sage.overlay_kernels``)."""
    p = Path(path).resolve()
    if not p.is_file():
        raise Unavailable(f"sage kernel file not found: {p}")
    sys.path.insert(0, str(R.REPO_ROOT))
    from sglang_sage.overlay_kernels import load_submodule

    try:
        mod = load_submodule(p.stem, p.parent, name="_bench_sage_attn_pkg")
    except (ImportError, ValueError) as exc:
        raise Unavailable(f"cannot import {p}: {exc}") from exc
    if not callable(getattr(mod, "sage_extend_attention", None)):
        raise Unavailable(f"{p} has no sage_extend_attention")
    return mod


def sync(device: str) -> None:
    """Wait for the device (no-op on CPU)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def bench_ms(fn: Callable[[], Any], device: str, warmup: float, rep: float) -> float:
    """Median ms of fn: triton's do_bench on CUDA; a plain timer for the CPU dry run."""
    if device == "cuda":
        import triton

        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def _sdpa_backend(name: str) -> Any:
    from torch.nn.attention import SDPBackend

    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[name]


def _dense_mask(lq: int, lkv: int, dtype: Any, device: Any) -> Any:
    """Additive bottom-right causal mask [1, 1, lq, lkv] (0 allowed, -inf masked)."""
    import torch

    q_pos = torch.arange(lq, device=device)[:, None] + (lkv - lq)
    k_pos = torch.arange(lkv, device=device)[None, :]
    m = torch.zeros(lq, lkv, dtype=dtype, device=device)
    m.masked_fill_(k_pos > q_pos, float("-inf"))
    return m.view(1, 1, lq, lkv)


def build_sdpa_fn(
    name: str, method: str, gqa_native: bool, q: Any, k: Any, v: Any, sm_scale: float
) -> Callable[[], Any]:
    """A zero-arg call of F.scaled_dot_product_attention (run it inside ``sdpa_kernel``)."""
    import torch.nn.functional as F

    lq, lkv = q.shape[2], k.shape[2]
    grp = q.shape[1] // k.shape[1]
    if not gqa_native and grp > 1:
        k = k.repeat_interleave(grp, dim=1)
        v = v.repeat_interleave(grp, dim=1)
    kw: dict[str, Any] = {"scale": sm_scale}
    if gqa_native and grp > 1:
        kw["enable_gqa"] = True
    if method == "is_causal":
        kw["is_causal"] = True
    elif method == "lower_right":
        from torch.nn.attention.bias import causal_lower_right

        kw["attn_mask"] = causal_lower_right(lq, lkv)
    elif method == "dense_mask":
        kw["attn_mask"] = _dense_mask(lq, lkv, q.dtype, q.device)
    else:
        raise ValueError(method)

    def fn() -> Any:
        return F.scaled_dot_product_attention(q, k, v, **kw)

    return fn


_PROBES: dict[tuple[Any, ...], tuple[tuple[str, bool] | None, list[str]]] = {}


def probe_sdpa(
    name: str, shape: Shape, sm_scale: float, device: str = "cuda"
) -> tuple[tuple[str, bool] | None, list[str]]:
    """Find a (mask method, native GQA) combination for which this SDPA backend gives the right
    bottom-right causal result, checked on a small problem of the same geometry (cached).

    torch's ``is_causal`` is documented as top-left; ``causal_lower_right`` dispatches straight to
    the flash/efficient kernels (bypassing cuDNN), so cuDNN with a prefix falls back to a dense
    additive mask, which is correct but no fair speed baseline (flagged ``mask_method``).
    """
    from torch.nn.attention import sdpa_kernel

    key = (name, shape.hq, shape.hkv, shape.d, shape.prefix > 0)
    if key in _PROBES:
        return _PROBES[key]
    if shape.prefix > 0:
        methods = ["is_causal", "lower_right"] if name == "flash" else ["is_causal", "dense_mask"]
    else:
        methods = ["is_causal"]
    small = Shape(shape.geometry, shape.hq, shape.hkv, shape.d, 1, 512, 0.5 if shape.prefix > 0 else 0.0)
    inp = make_inputs(small, 1234, 1.0, False, device)
    rows = list(range(small.lq))
    ref = exact_reference(inp["q"], inp["k_seq"], inp["v_seq"], small, rows, sm_scale)
    notes: list[str] = []
    choice = None
    for method in methods:
        for native in (True, False):
            try:
                fn = build_sdpa_fn(name, method, native, inp["q_hnd"], inp["k_hnd"], inp["v_hnd"], sm_scale)
                with sdpa_kernel([_sdpa_backend(name)]):
                    o = fn()
                sync(device)
                packed = o.transpose(1, 2).reshape(-1, small.hq, small.d)
                c = compare_rows(packed, small, rows, ref)["cos"]
                if c is not None and c >= 0.999:
                    choice = (method, native)
                    notes.append(f"{method}/{'native' if native else 'expanded'} GQA: ok (cos {c:.5f})")
                    break
                notes.append(
                    f"{method}/{'native' if native else 'expanded'} GQA: wrong result "
                    f"(cos {R.fmt(c, '.4f')}: not bottom-right causal)"
                )
            except Exception as exc:  # noqa: BLE001
                notes.append(
                    f"{method}/{'native' if native else 'expanded'} GQA: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
                )
        if choice:
            break
    _PROBES[key] = (choice, notes)
    return choice, notes


BackendCall = tuple[Callable[[], Any], Callable[[Any], Any], dict[str, Any], Callable[[], Any]]


def _null_cm() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _loaded(name: str, ctx: dict[str, Any]) -> Any:
    """The object ``BACKENDS[name].load`` returned, or Unavailable with the recorded load error."""
    if ctx.get(name) is None:
        raise Unavailable(ctx.get(f"{name}_error", f"{name} not loaded"))
    return ctx[name]


def _make_sage_sm90(shape: Shape, inp: dict[str, Any], sm_scale: float, ctx: dict[str, Any]) -> BackendCall:
    """The same contract call with the Hopper kernel (SGLang's JIT op: needs the overlay installed)."""
    mod = _loaded("sage", ctx)
    try:
        ok, why = mod.sm90_op().is_supported(inp["q"].device, shape.d, inp["q"].dtype)
    except ImportError as exc:
        raise Unavailable(f"sm90 op not importable ({exc}): apply the overlay to this SGLang first") from exc
    if not ok:
        raise Unavailable(f"sm90 kernel cannot run here: {why}")
    return _make_sage(shape, inp, sm_scale, ctx, kernel="sm90")


def _make_sage(
    shape: Shape, inp: dict[str, Any], sm_scale: float, ctx: dict[str, Any], kernel: str = "triton"
) -> BackendCall:
    import torch

    sage = _loaded("sage", ctx).sage_extend_attention
    out = torch.empty_like(inp["q"])
    args = (
        inp["q"],
        inp["k_pool"],
        inp["v_pool"],
        inp["qo_indptr"],
        inp["kv_indptr"],
        inp["kv_indices"],
        shape.lq,
        shape.seq_len,
        sm_scale,
    )
    info = {"note": "contract call sage_extend_attention (plan + smoothing + quantization + attention)"}

    info["kernel"] = kernel

    def fn() -> Any:
        return sage(*args, causal=True, out=out, kernel=kernel)

    return fn, (lambda o: out if o is None else o), info, _null_cm


def _make_sdpa(name: str) -> Callable[[Shape, dict[str, Any], float, dict[str, Any]], BackendCall]:
    def make(shape: Shape, inp: dict[str, Any], sm_scale: float, ctx: dict[str, Any]) -> BackendCall:
        from torch.nn.attention import sdpa_kernel

        B, lq = shape.batch, shape.lq
        info: dict[str, Any] = {}
        choice, notes = probe_sdpa(name, shape, sm_scale, inp["q"].device.type)
        info["probe"] = notes
        if choice is None:
            raise Unavailable(f"no correct bottom-right causal call found: {'; '.join(notes)}")
        method, native = choice
        info["mask_method"] = method
        info["gqa"] = "native" if native else "expanded outside timing"
        fn = build_sdpa_fn(name, method, native, inp["q_hnd"], inp["k_hnd"], inp["v_hnd"], sm_scale)
        be = _sdpa_backend(name)
        return fn, (lambda o: o.transpose(1, 2).reshape(B * lq, shape.hq, shape.d)), info, (lambda: sdpa_kernel([be]))

    return make


def fa3_args(shape: Shape, inp: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``flash_attn_with_kvcache`` as SGLang 0.5.17's fa3 backend passes them
    for an extend batch (``forward_extend``, no cascade, no local attention): packed ``q`` with
    ``cu_seqlens_q``, the pool viewed as pages of one token ``[slots, 1, Hkv, D]``, the page table =
    each request's slots (its ``req_to_token`` row, int32), ``cache_seqlens`` = total KV length per
    request, ``cu_seqlens_k_new`` = the KV indptr, ``causal=True`` (FA3 aligns it bottom-right: query i
    sees keys ``0..p+i``)."""
    import torch

    B, L = shape.batch, shape.seq_len
    dev = inp["q"].device
    return {
        "page_table": inp["slots"].to(torch.int32).contiguous(),
        "cache_seqlens": torch.full((B,), L, dtype=torch.int32, device=dev),
        "cu_seqlens_q": inp["qo_indptr"].to(torch.int32),
        "cu_seqlens_k_new": inp["kv_indptr"].to(torch.int32),
        "max_seqlen_q": shape.lq,
        "causal": True,
    }


def _make_fa3(fp8: bool) -> Callable[[Shape, dict[str, Any], float, dict[str, Any]], BackendCall]:
    def make(shape: Shape, inp: dict[str, Any], sm_scale: float, ctx: dict[str, Any]) -> BackendCall:
        import torch

        fa = _loaded("fa3", ctx)
        kw = fa3_args(shape, inp)
        kw["softmax_scale"] = sm_scale
        hkv, d = shape.hkv, shape.d
        info: dict[str, Any] = {
            "note": "sgl_kernel.flash_attn_with_kvcache over the paged pool (page size 1, "
            "req_to_token-like page table), arguments as SGLang's fa3 backend"
        }
        if fp8:
            # SGLang with --kv-cache-dtype fp8_e4m3 stores K/V cast to e4m3 when they are written (no
            # scale without checkpoint scales: k_scale is None, so no descale) and casts q in the layer
            # call: the pool cast is outside the timed call, the q cast inside.
            e4m3 = torch.float8_e4m3fn
            k_cache = inp["k_pool"].to(e4m3).view(-1, 1, hkv, d)
            v_cache = inp["v_pool"].to(e4m3).view(-1, 1, hkv, d)
            q = inp["q"]
            info["note"] += "; K/V pool stored as e4m3 (plain cast, no descale), q cast to e4m3 inside the call"

            def fn() -> Any:
                return fa(q=q.to(e4m3), k_cache=k_cache, v_cache=v_cache, **kw)
        else:
            k_cache = inp["k_pool"].view(-1, 1, hkv, d)
            v_cache = inp["v_pool"].view(-1, 1, hkv, d)
            q = inp["q"]

            def fn() -> Any:
                return fa(q=q, k_cache=k_cache, v_cache=v_cache, **kw)

        return fn, (lambda o: o.reshape(shape.batch * shape.lq, shape.hq, d)), info, _null_cm

    return make


def _make_sageattn(shape: Shape, inp: dict[str, Any], sm_scale: float, ctx: dict[str, Any]) -> BackendCall:
    sa = _loaded("sageattn", ctx)
    B, lq = shape.batch, shape.lq
    if shape.prefix > 0:
        raise Unavailable(
            "sageattention 1.0.6 causal mask is top-left aligned (requires Lq == Lkv); prefix > 0 unsupported"
        )
    q4 = inp["q"].view(B, lq, shape.hq, shape.d)
    k4 = inp["k_seq"].clone()  # smooth_k subtracts the mean from k IN PLACE: own copy
    v4 = inp["v_seq"]
    info = {"note": "NHD layout; smooth_k=True on a private K copy (re-smoothing is idempotent)"}

    def fn() -> Any:
        return sa(q4, k4, v4, tensor_layout="NHD", is_causal=True, sm_scale=sm_scale, smooth_k=True)

    return fn, (lambda o: o.reshape(B * lq, shape.hq, shape.d)), info, _null_cm


def _make_triton_extend(shape: Shape, inp: dict[str, Any], sm_scale: float, ctx: dict[str, Any]) -> BackendCall:
    import torch

    ext = _loaded("triton_extend", ctx)
    out = torch.empty_like(inp["q"])
    qo = inp["qo_indptr"].to(torch.int64)  # as SGLang's triton backend passes them
    args = (
        inp["q"],
        inp["k_ext"],
        inp["v_ext"],
        out,
        inp["k_pool"],
        inp["v_pool"],
        qo,
        inp["prefix_indptr"],
        inp["prefix_indices"],
        None,
        True,
        None,
        shape.lq,
        1.0,
        1.0,
    )
    info = {"note": "new tokens' K/V passed separately, prefix via kv_indptr/kv_indices (as SGLang)"}

    def fn() -> Any:
        return ext(*args, sm_scale=sm_scale)

    return fn, (lambda o: out), info, _null_cm


def _load_fa3(args: argparse.Namespace) -> Any:
    try:
        from sgl_kernel.flash_attn import flash_attn_with_kvcache
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(
            f"import sgl_kernel.flash_attn failed ({type(exc).__name__}: {exc}); FA3 ships in the "
            "offline bundle only when it is built with WITH_FA3=1 (shared/device/README.md), "
            "and runs on sm90 only"
        ) from exc
    return flash_attn_with_kvcache


def _load_sageattn(args: argparse.Namespace) -> Any:
    try:
        from sageattention import sageattn
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(
            f"import sageattention failed ({type(exc).__name__}: {exc}); set PYTHONPATH=/tmp/site"
        ) from exc
    return sageattn


def _load_triton_extend(args: argparse.Namespace) -> Any:
    try:
        from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd
    except Exception as exc:  # noqa: BLE001
        raise Unavailable(
            f"import sglang extend_attention_fwd failed ({type(exc).__name__}: {exc}); set PYTHONPATH=/tmp/site"
        ) from exc
    return extend_attention_fwd


@dataclass(frozen=True)
class Backend:
    """How to run one row: ``load`` once per process (its exception is the recorded reason for every
    shape), ``make`` per shape (raise Unavailable for a shape it cannot run), optional ``extra``:
    more measurements of the same backend on the same shape (returns fields for its entry)."""

    make: Callable[[Shape, dict[str, Any], float, dict[str, Any]], BackendCall]
    load: Callable[[argparse.Namespace], Any] | None = None
    extra: Callable[[Any, Shape, dict[str, Any], float, argparse.Namespace, list[int], Any], dict[str, Any]] | None = (
        None
    )
    shares: str | None = None  # use another backend's loaded object (fa3_fp8 loads nothing of its own)
    # run after the shape's other rows: a path that may crash the process (a fatal CUDA error ends
    # all GPU work) must not cost the rows measured beside it
    run_last: bool = False


def sage_planned_extra(
    mod: Any,
    shape: Shape,
    inp: dict[str, Any],
    sm_scale: float,
    args: argparse.Namespace,
    rows: list[int],
    ref: Any,
    kernel: str = "triton",
) -> dict[str, Any]:
    """The per-layer call inside SGLang (plan prebuilt once per batch), timed on the same shape."""
    pfn = sage_planned(mod, shape, inp, sm_scale, kernel)
    c = compare_rows(pfn(), shape, rows, ref)
    pms = bench_ms(pfn, args.device, args.warmup, args.rep)
    return {"ms_planned": pms, "tflops_planned": shape.flops / (pms * 1e-3) / 1e12, "cos_planned": c["cos"]}


def sage_sm90_planned_extra(
    mod: Any, shape: Shape, inp: dict[str, Any], sm_scale: float, args: argparse.Namespace, rows: list[int], ref: Any
) -> dict[str, Any]:
    """The sm90 kernel's per-layer call inside SGLang: plan and stage-image scratch prebuilt once per batch."""
    return sage_planned_extra(mod, shape, inp, sm_scale, args, rows, ref, kernel="sm90")


# Every runnable row. A new backend: one entry here and one in _results.KERNEL_BACKEND_SPECS.
BACKENDS: dict[str, Backend] = {
    "sage": Backend(make=_make_sage, load=lambda a: load_sage_module(a.sage_kernel), extra=sage_planned_extra),
    "sage_sm90": Backend(make=_make_sage_sm90, shares="sage", extra=sage_sm90_planned_extra),
    "cudnn": Backend(make=_make_sdpa("cudnn")),
    "fa3": Backend(make=_make_fa3(fp8=False), load=_load_fa3),
    "fa3_fp8": Backend(make=_make_fa3(fp8=True), shares="fa3", run_last=True),
    "flash": Backend(make=_make_sdpa("flash")),
    "sageattn": Backend(make=_make_sageattn, load=_load_sageattn),
    "triton_extend": Backend(make=_make_triton_extend, load=_load_triton_extend),
}


def make_backend(name: str, shape: Shape, inp: dict[str, Any], sm_scale: float, ctx: dict[str, Any]) -> BackendCall:
    """(fn, to_packed, info, context manager factory) for one backend; raises Unavailable."""
    spec = BACKENDS.get(name)
    if spec is None:
        raise Unavailable(f"unknown backend {name}")
    return spec.make(shape, inp, sm_scale, ctx)


def init_backends(args: argparse.Namespace, wanted: list[str]) -> dict[str, Any]:
    """Import the optional backends once; record why one is missing (``ctx[f"{name}_error"]``)."""
    ctx: dict[str, Any] = {}
    for name in wanted:
        spec = BACKENDS.get(name)
        key = (spec.shares if spec else None) or name
        src = BACKENDS.get(key)
        if src is None or src.load is None or key in ctx or f"{key}_error" in ctx:
            continue
        try:
            ctx[key] = src.load(args)
        except Exception as exc:  # noqa: BLE001
            ctx[f"{key}_error"] = str(exc) if isinstance(exc, Unavailable) else f"{type(exc).__name__}: {exc}"
    for name in wanted:
        spec = BACKENDS.get(name)
        if spec is not None and spec.shares:
            ctx[name] = ctx.get(spec.shares)
            if f"{spec.shares}_error" in ctx:
                ctx[f"{name}_error"] = ctx[f"{spec.shares}_error"]
    return ctx


# ------------------------------------------------------------------------------------------------
# main loop
# ------------------------------------------------------------------------------------------------
def _short_exc(exc: BaseException) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return (f"{type(exc).__name__}: {str(exc)[:600]} | " + "".join(tb[-3:])[-900:]).strip()


def sage_planned(
    mod: Any, shape: Shape, inp: dict[str, Any], sm_scale: float, kernel: str = "triton"
) -> Callable[[], Any]:
    """The backend's per-layer call: plan built once outside (as SGLang builds it once per batch
    for all layers), and for the sm90 kernel its stage-image scratch too (the backend owns one buffer);
    smoothing + quantization + attention inside. Uses kernels.py internals (``kernel_config``,
    ``build_plan``, ``sage_extend_attention_planned``, ``sm90_op``)."""
    import numpy as np
    import torch

    cfg = mod.kernel_config(shape.d, kernel)
    q_lens = np.full(shape.batch, shape.lq, dtype=np.int64)
    kv_lens = np.full(shape.batch, shape.seq_len, dtype=np.int64)
    plan = mod.build_plan(q_lens, kv_lens, inp["q"].device, cfg.block_m, cfg.block_n, True)
    row_off = inp["kv_indptr"][:-1].to(torch.int64)
    out = torch.empty_like(inp["q"])
    stages = None
    if kernel == "sm90":
        stages = mod.sm90_op().new_stage_buffer(plan, shape.hkv, shape.d, inp["q"].device)

    def fn() -> Any:
        return mod.sage_extend_attention_planned(
            inp["q"],
            inp["k_pool"],
            inp["v_pool"],
            plan,
            inp["kv_indices"],
            row_off,
            sm_scale,
            True,
            out,
            kernel=kernel,
            stages=stages,
        )

    return fn


def run_shape(
    shape: Shape, args: argparse.Namespace, backends: list[str], ctx: dict[str, Any], seed: int
) -> tuple[dict[str, Any], bool]:
    """Benchmark every backend on one shape. Returns (record, fatal_cuda_error)."""
    import torch

    dev = args.device
    sm_scale = 1.0 / math.sqrt(shape.d)
    rec: dict[str, Any] = {
        **asdict(shape),
        "prefix": shape.prefix,
        "lq": shape.lq,
        "lkv": shape.seq_len,
        "flops": shape.flops,
        "seed": seed,
        "backends": {},
    }
    fatal = False
    t0 = time.time()
    inp = make_inputs(shape, seed, args.k_bias, args.shuffle_slots, dev)
    rows = pick_rows(shape.lq, max(32, args.ref_rows // shape.batch))
    ref = exact_reference(inp["q"], inp["k_seq"], inp["v_seq"], shape, rows, sm_scale)
    rec["ref_rows_per_seq"] = len(rows)
    sdpa_out = None
    sdpa_from = None
    # SDPA first, so that the others can be compared with its full output
    order = [b for b in ("cudnn", "flash") if b in backends] + [b for b in backends if b not in ("cudnn", "flash")]
    order.sort(key=lambda b: BACKENDS[b].run_last)  # stable: otherwise unchanged
    for name in order:
        entry: dict[str, Any] = {"status": "error"}
        rec["backends"][name] = entry
        if fatal:
            entry.update(status="skipped", reason="earlier fatal CUDA error in this process")
            continue
        t_b = time.time()
        try:
            fn, to_packed, info, cm = make_backend(name, shape, inp, sm_scale, ctx)
            entry.update(info)
            with cm():
                o = fn()
                sync(dev)
                packed = to_packed(o)
                entry.update(compare_rows(packed, shape, rows, ref))
                if name in ("cudnn", "flash") and sdpa_out is None:
                    sdpa_out, sdpa_from = packed, name
                elif sdpa_out is not None:
                    entry["cos_vs_sdpa"] = full_cosine(packed, sdpa_out)
                    entry["sdpa_ref"] = sdpa_from
                del o, packed
                ms = bench_ms(fn, dev, args.warmup, args.rep)
            entry.update(status="ok", ms=ms, tflops=shape.flops / (ms * 1e-3) / 1e12)
            extra = BACKENDS[name].extra
            if extra is not None:
                try:  # e.g. sage: the per-layer cost inside SGLang (plan prebuilt once per batch)
                    entry.update(extra(ctx[name], shape, inp, sm_scale, args, rows, ref))
                except Exception as exc:  # noqa: BLE001
                    entry["extra_error"] = _short_exc(exc)
                    if any(m in entry["extra_error"] for m in FATAL_MARKERS):
                        fatal = True
        except Unavailable as exc:
            entry.update(status="skipped", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - record and go on
            msg = _short_exc(exc)
            entry.update(status="error", error=("CUDA OOM: " if isinstance(exc, torch.OutOfMemoryError) else "") + msg)
            if any(m in msg for m in FATAL_MARKERS):
                fatal = True
        finally:
            entry["wall_s"] = round(time.time() - t_b, 2)
            if not fatal:
                try:
                    sync(dev)
                except Exception as exc:  # noqa: BLE001
                    fatal = True
                    entry.setdefault("error", _short_exc(exc))
    rec["backends"] = {b: rec["backends"][b] for b in backends}
    rec["ratios"] = R.kernel_ratios(rec["backends"])
    rec["wall_s"] = round(time.time() - t0, 2)
    del inp, ref, sdpa_out
    if not fatal and dev == "cuda":
        torch.cuda.empty_cache()
    return rec, fatal


def _line(rec: dict[str, Any], backends: list[str]) -> str:
    cells = []
    for n in backends:
        e = rec["backends"].get(n, {})
        if e.get("status") == "ok":
            cells.append(f"{n}={e['ms']:.3f}ms/{e['tflops']:.0f}TF/cos{R.fmt(e.get('cos'), '.4f')}")
        else:
            cells.append(f"{n}={e.get('status', '?').upper()}")
    for c in R.KERNEL_CANDIDATES:
        e = rec["backends"].get(c, {})
        if e.get("ms_planned") is not None:
            cells.append(f"{c}(plan prebuilt)={e['ms_planned']:.3f}ms")
    ra = rec["ratios"]
    speedups = [
        f"{c}/{o}={R.fmt(ra.get(f'{c}_vs_{o}'))}x"
        for c in R.KERNEL_CANDIDATES
        if c in backends
        for o in ("cudnn", "fa3", "fa3_fp8", "triton_extend")
        if o in backends
    ]
    return " | ".join(cells) + " || " + " ".join(speedups) + f" ({rec['wall_s']:.1f}s)"


def kernel_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #11 targets (every candidate backend) then issue #5's (sage) for a result document."""
    res = doc.get("results", [])
    return R.evaluate_kernel_targets_i11(res, (doc.get("config") or {}).get("k_bias")) + R.evaluate_kernel_targets(res)


def render_only(path: str) -> int:
    """Re-render markdown/PNG from an existing kernel JSON."""
    doc = R.load_json(path)
    if doc is None:
        R.log(f"cannot read {path}")
        return 2
    doc["targets"] = kernel_targets(doc)
    p = Path(path)
    paths = R.write_reports(doc, p.parent, p.stem)
    R.log("\n".join(R.target_lines(doc["targets"])))
    R.log(f"wrote {paths}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.render:
        return render_only(args.render)
    t_start = time.time()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        R.log(f"unknown backends {bad}; choose from {list(BACKENDS)}")
        return 2
    shapes, notes = plan_shapes(args)
    est = sum(estimate_seconds(s, backends, args.warmup, args.rep) for s in shapes)
    R.log(
        f"[plan] {len(shapes)} shapes x backends {backends}; do_bench warmup={args.warmup}ms "
        f"rep={args.rep}ms; budget {args.budget_s:.0f}s; rough estimate ~{est:.0f}s + compile "
        f"(~10-60s)"
    )
    for s in shapes:
        R.log(
            f"[plan]   {s.label():<36} Lq={s.lq:<6} Lkv={s.seq_len:<6} "
            f"{s.flops / 1e12:8.2f} TFLOP/call  ~{estimate_seconds(s, backends, args.warmup, args.rep):.1f}s"
        )
    for n in notes:
        R.log(f"[plan]   {n}")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        R.log("no CUDA device: nothing to benchmark (--device cpu with TRITON_INTERPRET=1 is a dry run)")
        return 2
    env = R.capture_env(
        extra_files={"sage_kernels.py": args.sage_kernel, "bench_kernels.py": __file__, "_results.py": R.__file__}
    )
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.out_root) / env["gpu_slug"]
    cfg = {k: v for k, v in vars(args).items() if k not in ("render",)}
    doc = {"kind": "kernels", "env": env, "config": cfg, "notes": list(notes), "results": []}
    rf = R.ResultsFile(out_dir / f"{args.stem}.json", doc)
    R.log(
        f"[env] {env.get('gpu')} driver {env.get('driver')} torch {env.get('torch')} "
        f"triton {env.get('triton')} sglang {env['versions'].get('sglang')} -> {rf.path}"
    )
    ctx = init_backends(args, backends)
    for k in sorted({k for k in ctx if k.endswith("_error")}):
        if k[: -len("_error")] in backends and ctx[k] not in rf.doc["notes"]:
            R.log(f"[warn] {k[: -len('_error')]}: {ctx[k]}")
            rf.doc["notes"].append(ctx[k])
    fatal = False
    for i, s in enumerate(shapes):
        elapsed = time.time() - t_start
        if fatal or elapsed > args.budget_s:
            why = "earlier fatal CUDA error" if fatal else f"time budget {args.budget_s:.0f}s used up"
            rf.add(
                {
                    **asdict(s),
                    "prefix": s.prefix,
                    "lq": s.lq,
                    "lkv": s.seq_len,
                    "flops": s.flops,
                    "backends": {b: {"status": "skipped", "reason": why} for b in backends},
                    "ratios": {},
                    "skipped": why,
                }
            )
            R.log(f"[{i + 1}/{len(shapes)}] {s.label()}: SKIPPED ({why})")
            continue
        R.log(f"[{i + 1}/{len(shapes)}] {s.label()} (t={elapsed:.0f}s) ...")
        try:
            rec, fatal = run_shape(s, args, backends, ctx, args.seed + i)
        except Exception as exc:  # noqa: BLE001 - e.g. OOM while making inputs
            msg = _short_exc(exc)
            fatal = any(m in msg for m in FATAL_MARKERS)
            rec = {
                **asdict(s),
                "prefix": s.prefix,
                "lq": s.lq,
                "lkv": s.seq_len,
                "flops": s.flops,
                "backends": {b: {"status": "error", "error": f"shape setup failed: {msg}"} for b in backends},
                "ratios": {},
            }
            try:
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001
                fatal = True
        rf.add(rec)
        R.log(f"    {_line(rec, backends)}")
        rf.doc["targets"] = kernel_targets(rf.doc)
        rf.save()
    rf.doc["targets"] = kernel_targets(rf.doc)
    rf.doc["total_wall_s"] = round(time.time() - t_start, 1)
    paths = R.write_reports(rf.doc, out_dir, args.stem)
    R.log(
        "[targets] issue #11: >= 1.3x cuDNN and FA3 at 16K/32K, >= 1.0x at 4K, >= 1.3x FA3 at 32K with 50 % "
        f"prefix; rel L1 <= {R.I11_MAX_REL_L1} and cosine >= {R.I11_MIN_COS} vs fp32 (K offset std "
        f"{R.I11_K_BIAS}). issue #5: sage >= 1.3x cuDNN and >= 4x SGLang triton extend at 16K-32K"
    )
    for line in R.target_lines(rf.doc["targets"]) or ["N/A  no target shape was run"]:
        R.log("  " + line)
    R.log(f"[done] {rf.doc['total_wall_s']}s; wrote {paths}")
    return 3 if fatal else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
