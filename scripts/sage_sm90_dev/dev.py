#!/usr/bin/env python3
"""Kernel-development harness of the sm90 sage_attn kernels (GPU machine; no SGLang needed).

Builds ``capi.cu`` (the overlay's kernel headers behind a C ABI) with nvcc and runs, each part in
its own process with a timeout so a hung kernel cannot take the others down:

* ``gemm``  — every wgmma operand layout of the kernel in isolation (one warpgroup, exact int8 /
  fp32-accumulated 16-bit products vs torch), for both assignments of the descriptor's LBO/SBO;
* ``attn``  — pack + attention vs an fp64 reference on ragged batches with prefixes (d 128 / 64,
  GQA 4 / 3), NaN-poisoned outputs (every row must be written), beside the Triton reference kernel;
* ``cut``   — bitwise row equality between a one-shot prefill and the same sequence cut at several
  places (radix hit / chunked prefill);
* ``bench`` — whole-call time (pack + attention) vs cuDNN SDPA and the Triton kernel, same inputs.

Every part appends to ``$OUT/sm90_dev.json``; the last lines printed are a summary table.

    python3 scripts/sage_sm90_dev/dev.py all --out "$OUT"
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "overlay/sglang/kernels/jit/csrc/sage_attn_sm90"
sys.path.insert(0, str(ROOT))

BN = 128
BM = 128


# v3 = the overlay's kernel. A candidate is a patch against the overlay's kernel.cuh (kept as a diff, not a
# copy, so that it cannot silently drift from the kernel it modifies); ptx.cuh / wgmma.cuh come from the overlay.
# v5: v3 with the turn ending after the issue (the conversion and the 16-bit MMA outside it). A "v4" with
# both Q·Kᵀ halves issued in one turn into separate accumulators was tried and dropped: at head_dim 128 it
# needs si + sf + o + P (224 registers) live at once, ptxas spills and serializes the wgmma under 240.
# v6: v5 plus a power-of-two query-row scale, which leaves the per-score conversion (one FMA per score).
_DEV = Path(__file__).resolve().parent
PATCHES: dict[str, Path] = {"v5": _DEV / "v5.patch", "v6": _DEV / "v6.patch"}
VERSIONS = ("v3", *PATCHES)


def kernel_dirs(version: str, out_dir: Path) -> list[Path]:
    """Include directories of a version: the overlay's for v3; a patched copy of kernel.cuh first otherwise."""
    if version == "v3":
        return [CSRC]
    src = out_dir / f"src_{version}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "kernel.cuh").write_bytes((CSRC / "kernel.cuh").read_bytes())
    patch = PATCHES[version]
    for cmd in (["patch", "-p1", "-s", "-i", str(patch)], ["git", "apply", "-p1", str(patch)]):
        try:
            r = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
        except FileNotFoundError:
            continue
        if r.returncode == 0:
            return [src, CSRC]
        raise SystemExit(f"{patch.name} no longer applies to {CSRC / 'kernel.cuh'}: {(r.stdout + r.stderr)[-800:]}")
    raise SystemExit(f"{patch.name}: neither patch nor git is installed to apply it")


def build(out_dir: Path, version: str = "v3") -> Path:
    so = out_dir / f"libsage_sm90_{version}.so"
    cmd = [
        "nvcc",
        "-O3",
        "-std=c++17",
        "-gencode=arch=compute_90a,code=sm_90a",
        "-shared",
        "-Xcompiler",
        "-fPIC",
        "-Xptxas",
        "-v",
        *[arg for d in kernel_dirs(version, out_dir) for arg in ("-I", str(d))],
        "-o",
        str(so),
        str(Path(__file__).with_name("capi.cu")),
    ]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    log = r.stdout + r.stderr
    (out_dir / f"nvcc_{version}.log").write_text(log)
    regs = [ln.strip() for ln in log.splitlines() if "registers" in ln or "spill" in ln]
    print(f"nvcc rc={r.returncode} in {time.time() - t0:.1f}s")
    for ln in regs:
        print("  ", ln)
    if r.returncode != 0:
        print(log[-4000:])
        raise SystemExit("build failed")
    return so


_PTR = ctypes.c_void_p
_I64 = ctypes.c_int64
_I32 = ctypes.c_int32
_TAIL = [
    ("group", _I32),
    ("num_k_blocks", _I32),
    ("sm_scale_log2", ctypes.c_float),
    ("neox", _I32),
    ("causal", _I32),
    ("desc_mode", ctypes.c_uint32),
]


class AttnParams(ctypes.Structure):  # current kernel.cuh
    _fields_ = (
        [
            (n, _PTR)
            for n in (
                "q",
                "k_pool",
                "v_pool",
                "out",
                "stages",
                "qo_indptr",
                "kv_lens",
                "kblk_indptr",
                "qblk_seq",
                "qblk_start",
            )
        ]
        + [(n, _I64) for n in ("q_stride_tok", "q_stride_head", "o_stride_tok", "o_stride_head")]
        + _TAIL
    )


class PackParams(ctypes.Structure):
    _fields_ = (
        [
            (n, _PTR)
            for n in ("k_pool", "v_pool", "slot_table", "slot_row_off", "kv_lens", "kblk_seq", "kblk_start", "stages")
        ]
        + [(n, _I64) for n in ("k_stride_tok", "k_stride_head", "v_stride_tok", "v_stride_head")]
        + [("num_k_blocks", _I32), ("neox", _I32)]
    )


def stage_bytes(d: int) -> int:
    dh = d // 2
    return BN * dh * 2 + BN * d * 2 + BN * dh + BN * 4


class Sm90:
    def __init__(self, so: Path, version: str = "v3"):
        self.lib = ctypes.CDLL(str(so))
        self.version = version
        assert self.lib.sage_sm90_sizeof_params(0) == ctypes.sizeof(AttnParams), "AttnParams ABI"
        assert self.lib.sage_sm90_sizeof_params(1) == ctypes.sizeof(PackParams), "PackParams ABI"
        self.desc_mode = 0

    def plan(self, q_lens, kv_lens, device, causal=True):
        from sglang_sage.overlay_kernels import load_submodule

        return load_submodule("plan").build_plan(q_lens, kv_lens, device, BM, BN, causal)

    def scratch(self, plan, hkv, d, device="cuda"):
        import torch

        return (torch.empty((hkv, plan.num_k_blocks, stage_bytes(d)), dtype=torch.uint8, device=device),)

    def forward(
        self, q, k_pool, v_pool, plan, slot_table, row_off, sm_scale, neox=True, causal=True, out=None, bufs=None
    ):
        import torch

        d = q.shape[-1]
        hq, hkv = q.shape[1], k_pool.shape[1]
        nkb = plan.num_k_blocks
        if bufs is None:
            bufs = self.scratch(plan, hkv, d, q.device)
        if out is None:
            out = torch.empty_like(q)
        dt = 0 if q.dtype == torch.bfloat16 else 1
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        sl2 = sm_scale * 1.4426950408889634
        common = (
            plan.qo_indptr.data_ptr(),
            plan.kv_lens.data_ptr(),
            plan.kblk_indptr.data_ptr(),
            plan.qblk_seq.data_ptr(),
            plan.qblk_start.data_ptr(),
        )
        tail = (hq // hkv, nkb, sl2, int(neox), int(causal), self.desc_mode)
        (img,) = bufs
        pp = PackParams(
            k_pool.data_ptr(),
            v_pool.data_ptr(),
            slot_table.data_ptr(),
            row_off.data_ptr(),
            plan.kv_lens.data_ptr(),
            plan.kblk_seq.data_ptr(),
            plan.kblk_start.data_ptr(),
            img.data_ptr(),
            k_pool.stride(0),
            k_pool.stride(1),
            v_pool.stride(0),
            v_pool.stride(1),
            nkb,
            int(neox),
        )
        ap = AttnParams(
            q.data_ptr(),
            k_pool.data_ptr(),
            v_pool.data_ptr(),
            out.data_ptr(),
            img.data_ptr(),
            *common,
            q.stride(0),
            q.stride(1),
            out.stride(0),
            out.stride(1),
            *tail,
        )
        rc = self.lib.sage_sm90_pack(ctypes.byref(pp), d, dt, nkb, hkv, stream)
        if rc != 0:
            raise RuntimeError(f"pack launch failed: {rc}")
        rc = self.lib.sage_sm90_attn(ctypes.byref(ap), d, dt, plan.num_q_blocks, hq, stream)
        if rc != 0:
            raise RuntimeError(f"attn launch failed: {rc}")
        return out


SUFFIX = ""


def record(out_dir: Path, key: str, value) -> None:
    key = key + SUFFIX
    path = out_dir / "sm90_dev.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=1, default=str))


# ---------------------------------------------------------------------------------------------------
def part_gemm(lib: Sm90, out_dir: Path) -> dict:
    import torch

    torch.manual_seed(0)
    res = {}
    dev = "cuda"
    cases = [  # which, kind, ks, n, swap bit
        (0, "s8", 2, 128, 1),
        (1, "s8", 1, 128, 1),
        (2, "qk16", 4, 128, 2),
        (3, "qk16", 2, 128, 2),
        (4, "pv", 8, 128, 4),
        (5, "pv", 8, 64, 4),
        (6, "s8", 2, 128, 1),
        (7, "qk16", 4, 128, 2),
    ]
    for which, kind, ks, n, bit in cases:
        for swap in (0, bit):
            name = f"{kind}_ks{ks}_n{n}{'_asmem' if which >= 6 else ''}_swap{int(bool(swap))}"
            if kind == "s8":
                a = torch.randint(-127, 128, (64, 32 * ks), dtype=torch.int8, device=dev)
                b = torch.randint(-127, 128, (128, 32 * ks), dtype=torch.int8, device=dev)
                d = torch.zeros(64, 128, dtype=torch.int32, device=dev)
                ref = a.to(torch.int64).cpu() @ b.to(torch.int64).cpu().t()
            elif kind == "qk16":
                a = torch.randn(64, 16 * ks, device=dev).bfloat16()
                b = torch.randn(128, 16 * ks, device=dev).bfloat16()
                d = torch.zeros(64, 128, dtype=torch.float32, device=dev)
                ref = a.double().cpu() @ b.double().cpu().t()
            else:
                a = torch.randn(64, 16 * ks, device=dev).bfloat16()
                b = torch.randn(16 * ks, n, device=dev).bfloat16()  # V: keys x channels
                d = torch.zeros(64, n, dtype=torch.float32, device=dev)
                ref = a.double().cpu() @ b.double().cpu()
            rc = lib.lib.sage_sm90_test_gemm(
                which,
                ctypes.c_void_p(a.data_ptr()),
                ctypes.c_void_p(b.data_ptr()),
                ctypes.c_void_p(d.data_ptr()),
                ctypes.c_uint32(swap),
            )
            if rc != 0:
                res[name] = {"rc": rc, "ok": False}
                continue
            got = d.cpu().to(torch.float64)
            err = (got - ref.to(torch.float64)).abs().max().item()
            scale = ref.abs().max().item()
            ok = err == 0 if kind == "s8" else err <= 1e-4 * max(scale, 1.0)
            res[name] = {"rc": 0, "max_abs_err": err, "ref_max": scale, "ok": bool(ok)}
            print(name, res[name])
    record(out_dir, "gemm", res)
    return res


def mode_from_gemm(res: dict) -> tuple[int, list[str]]:
    """desc_mode bits from the layout tests: 0 if the default LBO/SBO works, the swap bit if only that does."""
    mode, notes = 0, []
    for kind, bit in (("s8_ks2_n128", 1), ("qk16_ks4_n128", 2), ("pv_ks8_n128", 4)):
        ok0 = res.get(f"{kind}_swap0", {}).get("ok")
        ok1 = res.get(f"{kind}_swap1", {}).get("ok")
        if ok0:
            notes.append(f"{kind}: default ok")
        elif ok1:
            mode |= bit
            notes.append(f"{kind}: SWAPPED lbo/sbo ok")
        else:
            notes.append(f"{kind}: NEITHER layout ok")
    return mode, notes


# ---------------------------------------------------------------------------------------------------
def make_problem(hq, hkv, d, q_lens, prefixes, seed=0, k_bias=2.0, dtype=None):
    import torch

    dtype = dtype or torch.bfloat16
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    kv_lens = [q + p for q, p in zip(q_lens, prefixes)]
    n_tok = sum(kv_lens)
    pool = n_tok + 1
    k_pool = torch.randn(pool, hkv, d, generator=g, device="cuda")
    k_pool += k_bias * torch.randn(1, hkv, d, generator=g, device="cuda")
    k_pool = k_pool.to(dtype)
    v_pool = torch.randn(pool, hkv, d, generator=g, device="cuda").to(dtype)
    q = torch.randn(sum(q_lens), hq, d, generator=g, device="cuda").to(dtype)
    slots = (torch.randperm(n_tok, generator=g, device="cuda") + 1).to(torch.int32)
    kv_indptr = [0]
    for n in kv_lens:
        kv_indptr.append(kv_indptr[-1] + n)
    row_off = torch.tensor(kv_indptr[:-1], dtype=torch.int64, device="cuda")
    return {
        "q": q,
        "k_pool": k_pool,
        "v_pool": v_pool,
        "slots": slots,
        "row_off": row_off,
        "q_lens": q_lens,
        "kv_lens": kv_lens,
        "kv_indptr": kv_indptr,
    }


def reference(prob, sm_scale, rows_per_seq=None):
    """fp64 attention (end-aligned causal) -> dict seq -> (row indices, [R, Hq, D])."""
    import torch

    q, kp, vp, slots = prob["q"], prob["k_pool"], prob["v_pool"], prob["slots"]
    hq, hkv = q.shape[1], kp.shape[1]
    grp = hq // hkv
    out = {}
    q0 = 0
    for b, (ql, kl) in enumerate(zip(prob["q_lens"], prob["kv_lens"])):
        sl = slots[prob["kv_indptr"][b] : prob["kv_indptr"][b] + kl].long()
        kk = kp[sl].double()  # [L, Hkv, D]
        vv = vp[sl].double()
        rows = torch.arange(ql, device="cuda")
        if rows_per_seq and ql > rows_per_seq:
            rows = torch.unique(
                torch.cat(
                    [
                        rows[: rows_per_seq // 4],
                        rows[-rows_per_seq // 4 :],
                        torch.linspace(0, ql - 1, rows_per_seq // 2, device="cuda").long(),
                    ]
                )
            )
        qq = q[q0 + rows].double()  # [R, Hq, D]
        pos = rows + (kl - ql)
        mask = torch.arange(kl, device="cuda")[None, :] > pos[:, None]
        o = torch.empty(len(rows), hq, q.shape[2], dtype=torch.float64, device="cuda")
        for h in range(hkv):
            qh = qq[:, h * grp : (h + 1) * grp].transpose(0, 1)
            s = qh @ kk[:, h].t() * sm_scale
            s.masked_fill_(mask[None], float("-inf"))
            o[:, h * grp : (h + 1) * grp] = (s.softmax(-1) @ vv[:, h]).transpose(0, 1)
        out[b] = (rows, o, q0)
        q0 += ql
    return out


def metrics(out, ref):
    import torch

    got, want = [], []
    for rows, o, q0 in ref.values():
        got.append(out[q0 + rows].double())
        want.append(o)
    a, r = torch.cat(got).flatten(), torch.cat(want).flatten()
    finite = bool(torch.isfinite(a).all())
    if not finite:
        return {"finite": False, "nan": int(torch.isnan(a).sum()), "n": a.numel()}
    rel_l1 = ((a - r).abs().sum() / r.abs().sum()).item()
    cos = torch.nn.functional.cosine_similarity(a, r, dim=0).item()
    return {"finite": True, "rel_l1": rel_l1, "cos": cos, "max_abs": (a - r).abs().max().item()}


def triton_reference_kernel():
    try:
        from sglang_sage.overlay_kernels import load_submodule

        return load_submodule("kernels")
    except Exception as exc:  # noqa: BLE001
        print("triton kernel unavailable:", exc)
        return None


def run_triton(tk, prob, sm_scale):
    import torch

    qo = [0]
    for n in prob["q_lens"]:
        qo.append(qo[-1] + n)
    return tk.sage_extend_attention(
        prob["q"],
        prob["k_pool"],
        prob["v_pool"],
        torch.tensor(qo, dtype=torch.int32, device="cuda"),
        torch.tensor(prob["kv_indptr"], dtype=torch.int32, device="cuda"),
        prob["slots"],
        sm_scale=sm_scale,
    )


def part_attn(lib: Sm90, out_dir: Path, small: bool = False) -> dict:
    import torch

    tk = None if small else triton_reference_kernel()
    res = {}
    cases = (
        [("small", 8, 2, 128, [130, 3], [0, 200])]
        if small
        else [
            ("d128_single", 32, 8, 128, [1000], [0]),
            ("d128_ragged", 32, 8, 128, [300, 1, 129, 700, 64], [0, 500, 37, 2000, 63]),
            ("d64_ragged", 9, 3, 64, [300, 1, 129, 700, 64], [0, 500, 37, 2000, 63]),
            ("d128_4k", 32, 8, 128, [4096], [0]),
            ("d64_4k", 9, 3, 64, [4096], [0]),
            ("d128_mha", 8, 8, 128, [517], [1200]),
        ]
    )
    for name, hq, hkv, d, ql, pf in cases:
        for dtype in (torch.bfloat16, torch.float16):
            key = f"{name}_{'bf16' if dtype == torch.bfloat16 else 'fp16'}"
            try:
                prob = make_problem(hq, hkv, d, ql, pf, seed=zlib.crc32(name.encode()) % 1000, dtype=dtype)
                sm = 1.0 / math.sqrt(d)
                plan = lib.plan(prob["q_lens"], prob["kv_lens"], "cuda")
                out = torch.full_like(prob["q"], float("nan"))
                lib.forward(
                    prob["q"], prob["k_pool"], prob["v_pool"], plan, prob["slots"], prob["row_off"], sm, out=out
                )
                torch.cuda.synchronize()
                ref = reference(prob, sm, rows_per_seq=512)
                entry = {"sm90": metrics(out, ref), "unwritten_or_nan": int(torch.isnan(out).sum())}
                if tk is not None and dtype == torch.bfloat16:
                    entry["triton"] = metrics(run_triton(tk, prob, sm), ref)
                res[key] = entry
            except Exception as exc:  # noqa: BLE001
                res[key] = {"error": f"{type(exc).__name__}: {exc}"}
            print(key, json.dumps(res[key]))
            record(out_dir, "attn_small" if small else "attn", res)
    return res


def part_cut(lib: Sm90, out_dir: Path) -> dict:
    """One shot vs the same sequence cut into chunks: rows must be bitwise equal."""
    import torch

    res = {}
    L = 3001

    for hq, hkv, d, dt in ((32, 8, 128, torch.bfloat16), (9, 3, 64, torch.bfloat16), (32, 8, 128, torch.float16)):
        prob = make_problem(hq, hkv, d, [L], [0], seed=7, dtype=dt)
        sm = 1.0 / math.sqrt(d)
        full = lib.forward(
            prob["q"], prob["k_pool"], prob["v_pool"], lib.plan([L], [L], "cuda"), prob["slots"], prob["row_off"], sm
        )
        again = lib.forward(
            prob["q"], prob["k_pool"], prob["v_pool"], lib.plan([L], [L], "cuda"), prob["slots"], prob["row_off"], sm
        )
        res[f"d{d}_{str(dt)[6:]}_deterministic"] = bool(torch.equal(full, again))
        for cuts in ([777], [130, 2500], [1000, 2000], list(range(64, L, 64)), [1500, 1501]):
            bounds = [0] + cuts + [L]
            ok, mism, rows = True, 0, []
            for a, b in zip(bounds[:-1], bounds[1:]):
                q = prob["q"][a:b].contiguous()
                o = lib.forward(
                    q,
                    prob["k_pool"],
                    prob["v_pool"],
                    lib.plan([b - a], [b], "cuda"),
                    prob["slots"],
                    prob["row_off"],
                    sm,
                )
                eq = torch.equal(o, full[a:b])
                if not eq:
                    ok = False
                    bad = (o != full[a:b]).any(-1).any(-1).nonzero().flatten()
                    mism += int(bad.numel())
                    rows.extend((a + int(r), int(r), b - a - int(r)) for r in bad[:8])
            key = f"d{d}_{str(dt)[6:]}_cuts{len(cuts)}_{cuts[0]}"
            res[key] = {"bitwise_equal": ok, "rows_differing": mism, "first_rows(abs,from_start,to_end)": rows[:8]}
            print(key, res[key])
    record(out_dir, "cut", res)
    return res


def part_bench(lib: Sm90, out_dir: Path) -> dict:
    import torch
    import torch.nn.functional as F
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    tk = triton_reference_kernel()
    res = {}
    for L, pfrac, hq, hkv, d in (
        (4096, 0, 32, 8, 128),
        (16384, 0, 32, 8, 128),
        (32768, 0, 32, 8, 128),
        (32768, 0.5, 32, 8, 128),
        (16384, 0, 9, 3, 64),
    ):
        p = int(L * pfrac)
        lq = L - p
        key = f"L{L}_p{p}_h{hq}x{hkv}_d{d}"
        entry = {}
        try:
            prob = make_problem(hq, hkv, d, [lq], [p], seed=1)
            sm = 1.0 / math.sqrt(d)
            plan = lib.plan([lq], [L], "cuda")
            bufs = lib.scratch(plan, hkv, d)
            out = torch.empty_like(prob["q"])

            def sm90():
                return lib.forward(
                    prob["q"],
                    prob["k_pool"],
                    prob["v_pool"],
                    plan,
                    prob["slots"],
                    prob["row_off"],
                    sm,
                    out=out,
                    bufs=bufs,
                )

            flops = 4.0 * hq * d * (lq * p + lq * (lq + 1) / 2)
            entry["sm90_ms"] = triton.testing.do_bench(sm90, warmup=50, rep=200, return_mode="median")
            sl = prob["slots"][:L].long()
            kd = prob["k_pool"][sl].transpose(0, 1).unsqueeze(0).repeat_interleave(hq // hkv, 1).contiguous()
            vd = prob["v_pool"][sl].transpose(0, 1).unsqueeze(0).repeat_interleave(hq // hkv, 1).contiguous()
            qd = prob["q"].transpose(0, 1).unsqueeze(0).contiguous()
            if p == 0:
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    entry["cudnn_ms"] = triton.testing.do_bench(
                        lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=sm),
                        warmup=50,
                        rep=200,
                        return_mode="median",
                    )
            else:
                from torch.nn.attention.bias import causal_lower_right

                mask = causal_lower_right(lq, L)
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    entry["flash_lower_right_ms"] = triton.testing.do_bench(
                        lambda: F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=sm),
                        warmup=50,
                        rep=200,
                        return_mode="median",
                    )
            if tk is not None:
                entry["triton_sage_ms"] = triton.testing.do_bench(
                    lambda: run_triton(tk, prob, sm), warmup=50, rep=200, return_mode="median"
                )
            entry["tflops_sm90"] = flops / entry["sm90_ms"] / 1e9
            if "cudnn_ms" in entry:
                entry["speedup_vs_cudnn"] = entry["cudnn_ms"] / entry["sm90_ms"]
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {exc}"
        res[key] = entry
        print(key, json.dumps(entry))
        record(out_dir, "bench", res)
        torch.cuda.empty_cache()
    return res


def part_profile(lib: Sm90, out_dir: Path) -> None:
    """A few launches at L = 16K (32/8 heads, d 128) for Nsight Compute to pick one from."""
    import torch

    L = 16384
    prob = make_problem(32, 8, 128, [L], [0], seed=1)
    plan = lib.plan([L], [L], "cuda")
    bufs = lib.scratch(plan, 8, 128)
    out = torch.empty_like(prob["q"])
    for _ in range(5):
        lib.forward(
            prob["q"],
            prob["k_pool"],
            prob["v_pool"],
            plan,
            prob["slots"],
            prob["row_off"],
            1.0 / math.sqrt(128),
            out=out,
            bufs=bufs,
        )
    torch.cuda.synchronize()


def attn_ok(out_dir: Path) -> bool:
    path = out_dir / "sm90_dev.json"
    if not path.exists():
        return False
    attn = json.loads(path.read_text()).get("attn_v3", {})
    if not attn:
        return False
    for entry in attn.values():
        m = entry.get("sm90") or {}
        if not m.get("finite") or m.get("rel_l1", 1) > 0.05:
            return False
    return True


# ---------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["all", "gemm", "attn", "attn_small", "cut", "bench", "profile"])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/sm90_dev"))
    ap.add_argument("--so", default=None)
    ap.add_argument("--desc-mode", type=int, default=0)
    ap.add_argument("--version", default="v3", choices=VERSIONS)
    ap.add_argument("--versions", default="v3", help="for 'all': kernel versions to build and compare")
    ap.add_argument("--parts", default="gemm,attn,cut,bench", help="for 'all': which parts")
    ap.add_argument("--ncu", action="store_true", help="for 'all': Nsight Compute sections of the first version")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    global SUFFIX
    if args.part == "all":
        versions = args.versions.split(",")
        libs = {v: build(out_dir, v) for v in versions}
        summary = {}
        budgets = {"gemm": 30, "attn": 60, "cut": 40, "bench": 90}
        mode = 0
        for part in args.parts.split(","):
            for v in versions:
                if part == "gemm" and v != versions[0]:
                    continue
                cmd = [
                    sys.executable,
                    __file__,
                    part,
                    "--out",
                    str(out_dir),
                    "--so",
                    str(libs[v]),
                    "--version",
                    v,
                    "--desc-mode",
                    str(mode),
                ]
                t0 = time.time()
                try:
                    r = subprocess.run(cmd, timeout=budgets[part])
                    summary[f"{part}_{v}"] = f"rc={r.returncode} {time.time() - t0:.0f}s"
                except subprocess.TimeoutExpired:
                    summary[f"{part}_{v}"] = f"TIMEOUT after {budgets[part]}s"
                if part == "gemm":
                    path = out_dir / "sm90_dev.json"
                    data = json.loads(path.read_text()) if path.exists() else {}
                    mode, notes = mode_from_gemm(data.get(f"gemm_{v}", {}))
                    record(out_dir, "desc_mode", {"mode": mode, "notes": notes})
                    print("desc_mode", mode, notes)
                if part == "attn" and v == "v3" and not attn_ok(out_dir):
                    san = [
                        "compute-sanitizer",
                        "--tool",
                        "memcheck",
                        sys.executable,
                        __file__,
                        "attn_small",
                        "--out",
                        str(out_dir),
                        "--so",
                        str(libs[v]),
                        "--version",
                        v,
                        "--desc-mode",
                        str(mode),
                    ]
                    try:
                        r = subprocess.run(san, timeout=120, capture_output=True, text=True)
                        (out_dir / "sanitizer.log").write_text(r.stdout + r.stderr)
                        print("SANITIZER tail:\n" + "\n".join((r.stdout + r.stderr).splitlines()[-25:]))
                    except subprocess.TimeoutExpired:
                        print("SANITIZER: timeout")
        if args.ncu:
            v = versions[0]
            ncu = [
                "ncu",
                "--clock-control",
                "none",
                "--section",
                "SpeedOfLight",
                "--section",
                "WarpStateStats",
                "--section",
                "SchedulerStats",
                "--section",
                "ComputeWorkloadAnalysis",
                "--section",
                "LaunchStats",
                "-k",
                "regex:sage_attn_sm90",
                "--launch-skip",
                "2",
                "--launch-count",
                "1",
                sys.executable,
                __file__,
                "profile",
                "--out",
                str(out_dir),
                "--so",
                str(libs[v]),
                "--version",
                v,
            ]
            try:
                r = subprocess.run(ncu, timeout=150, capture_output=True, text=True)
                (out_dir / f"ncu_{v}.txt").write_text(r.stdout + r.stderr)
                keep = (
                    "Duration",
                    "Throughput",
                    "Issue",
                    "Eligible",
                    "Active Warps",
                    "Stall",
                    "Registers",
                    "Executed Ipc",
                    "Pipe",
                    "No Eligible",
                    "One or More",
                )
                print(
                    "NCU:\n" + "\n".join(ln for ln in (r.stdout + r.stderr).splitlines() if any(k in ln for k in keep))
                )
                summary["ncu"] = f"rc={r.returncode}"
            except subprocess.TimeoutExpired:
                summary["ncu"] = "TIMEOUT"
        print("SUMMARY", json.dumps(summary))
        return
    SUFFIX = f"_{args.version}"
    lib = Sm90(Path(args.so), args.version)
    lib.desc_mode = args.desc_mode
    if args.part == "profile":
        part_profile(lib, out_dir)
        return
    if args.part == "attn_small":
        part_attn(lib, out_dir, small=True)
        return
    {"gemm": part_gemm, "attn": part_attn, "cut": part_cut, "bench": part_bench}[args.part](lib, out_dir)


if __name__ == "__main__":
    main()
