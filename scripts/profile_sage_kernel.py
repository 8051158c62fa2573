"""One causal 32K prefill (32 q / 8 kv heads, d=128, bf16) through sage_attn (Triton kernel, or the
sm90 JIT kernel: ``sage_sm90``, needs the overlay applied) or cuDNN SDPA, for Nsight Compute
(`scripts/gpu_session.sh profile` / `i11`). Each is launched 3 times; profile the last.

    python scripts/profile_sage_kernel.py sage|sage_sm90|cudnn [L]
"""

import math
import sys

import torch
import torch.nn.functional as F
from sglang.srt.layers.attention.sage_attn.kernels import sage_extend_attention
from torch.nn.attention import SDPBackend, sdpa_kernel

which = sys.argv[1]
if which not in ("sage", "sage_sm90", "cudnn"):
    sys.exit(f"profile_sage_kernel.py: unknown kernel {which!r} (sage, sage_sm90 or cudnn)")
L = int(sys.argv[2]) if len(sys.argv) > 2 else 32768
HQ, HKV, D = 32, 8, 128
torch.manual_seed(0)
q = torch.randn(L, HQ, D, device="cuda", dtype=torch.bfloat16)
k = torch.randn(L, HKV, D, device="cuda", dtype=torch.bfloat16)
v = torch.randn(L, HKV, D, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    if which in ("sage", "sage_sm90"):
        qo = torch.tensor([0, L], device="cuda", dtype=torch.int32)
        idx = torch.arange(L, device="cuda", dtype=torch.int32)
        kernel = "sm90" if which == "sage_sm90" else "triton"
        sage_extend_attention(q, k, v, qo, qo, idx, sm_scale=1 / math.sqrt(D), kernel=kernel)
    else:
        qt = q.transpose(0, 1)[None]
        kt = k.transpose(0, 1)[None].repeat_interleave(HQ // HKV, 1)
        vt = v.transpose(0, 1)[None].repeat_interleave(HQ // HKV, 1)
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
torch.cuda.synchronize()
print("done", which, L)
