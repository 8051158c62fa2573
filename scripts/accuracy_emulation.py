"""CPU emulation of sage_attn's quantization choices on SmolLM2's real activations (no GPU, no Triton).

Replaces every attention of the HF model by an fp32 emulation of a quantization scheme and compares the
logits with fp32 attention and with bf16 SDPA on NSEG x 1,000 tokens of the verify corpus: top-1
agreement, perplexity delta, mean KL. Used to choose the kernel scheme (docs/accuracy-notes.md).

    python scripts/accuracy_emulation.py MODEL_DIR [NSEG [V1,V2,...]]   # HF dir of SmolLM2-135M-Instruct

Needs transformers (not a project dependency). ~40 s per variant on 2 cores with NSEG=4.
"""

import math
import sys
import time

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

torch.set_num_threads(2)
P = sys.argv[1]
NSEG = int(sys.argv[2]) if len(sys.argv) > 2 else 4
m = AutoModelForCausalLM.from_pretrained(P, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(P)


def perm_groups(D, G, kind):
    """Channel index lists of G groups: contiguous, or by RoPE frequency (neox pairs c, c+D/2)."""
    idx = torch.arange(D)
    if kind == "contig":
        return list(idx.reshape(G, D // G))
    # frequency rank j = c mod D/2 (high j = low frequency); groups of equal frequency bands, both halves
    j = idx % (D // 2)
    if kind == "freqrev":
        j = D // 2 - 1 - j
    band = j // (D // 2 // G)
    return [idx[band == g] for g in range(G)]


def q8_rows(x):
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    return torch.round(x / s) * s


def quant(x, cfg):
    G = cfg.get("G", 1)
    out = torch.empty_like(x)
    for gi, ix in enumerate(perm_groups(x.shape[-1], G, cfg.get("gkind", "contig"))):
        if cfg.get("fp16_low") and gi == G - 1:
            out[..., ix] = x[..., ix].half().float()
        else:
            out[..., ix] = q8_rows(x[..., ix])
    return out


def emu(q, k, v, cfg):
    L = q.shape[0]
    g = q.shape[1] // k.shape[1]
    qf = q.float()
    kf = k.float()
    a0 = cfg.get("a0", 0)
    km = kf[a0 : cfg.get("kanchor", L)].mean(0, keepdim=True) if cfg.get("ksmooth", True) else 0
    ks = kf - km
    qm = qf.mean(0, keepdim=True) if cfg.get("qsmooth") else torch.zeros_like(qf[:1])
    qs = qf - qm
    qh = quant(qs, cfg)
    if cfg.get("q2"):
        qh = qh + quant(qs - qh, cfg)
    kh = quant(ks, cfg)
    qh = qh.transpose(0, 1)
    khr = kh.repeat_interleave(g, 1).transpose(0, 1)
    ksr = ks.repeat_interleave(g, 1).transpose(0, 1)
    s = qh @ khr.transpose(1, 2) + qm.transpose(0, 1) @ ksr.transpose(1, 2)
    s = s / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.ones(L, L).triu(1).bool(), -float("inf"))
    p = torch.softmax(s, -1).half().float()
    vf = v.float().repeat_interleave(g, 1).transpose(0, 1).half().float()
    return (p @ vf).transpose(0, 1)


CFG = {"c": None}


def att(module, q, k, v, mask, scaling=None, **kw):
    c = CFG["c"]
    if c == "ref":
        return sdpa_attention_forward(module, q, k, v, mask, scaling=scaling, **kw)
    if c == "bf16":
        o, _ = sdpa_attention_forward(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, scaling=scaling, **kw)
        return o.float(), None
    qq = q[0].transpose(0, 1).bfloat16()
    kk = k[0].transpose(0, 1).bfloat16()
    vv = v[0].transpose(0, 1).bfloat16()
    return emu(qq, kk, vv, c).unsqueeze(0).to(q.dtype), None


AttentionInterface.register("emu", att)
for l in m.model.layers:
    l.self_attn.config._attn_implementation = "emu"
m.config._attn_implementation = "emu"
text = open(__file__.rsplit("/scripts/", 1)[0] + "/sglang_sage/verify/data/shakespeare.txt").read()
N = len(text)
offs = [int(N * (i + 0.5) / NSEG) - 6000 for i in range(NSEG)]
segs = [tok(text[o : o + 12000], return_tensors="pt").input_ids[:, :1000] for o in offs]
lp = lambda x: torch.log_softmax(x, -1)


def run(c):
    CFG["c"] = c
    with torch.no_grad():
        return [m(s).logits[0].float() for s in segs]


def cmp(a, r):
    agree, kl, nla, nlr = [], [], [], []
    for x, y, s in zip(a, r, segs):
        t = s[0, 1:]
        x = x[:-1]
        y = y[:-1]
        agree.append((x.argmax(-1) == y.argmax(-1)).float())
        nla.append(-lp(x).gather(1, t[:, None]))
        nlr.append(-lp(y).gather(1, t[:, None]))
        kl.append((lp(y).exp() * (lp(y) - lp(x))).sum(-1))
    pa = math.exp(torch.cat(nla).mean().item())
    pr = math.exp(torch.cat(nlr).mean().item())
    return "top1 %.4f pplΔ %+.3f%% KL %.5f" % (
        torch.cat(agree).mean().item(),
        100 * (pa / pr - 1),
        torch.cat(kl).mean().item(),
    )


t0 = time.time()
ref = run("ref")
bf = run("bf16")
print("positions", sum(s.shape[1] - 1 for s in segs), "| bf16 vs fp32:", cmp(bf, ref), flush=True)
variants = {
    "A shipped qs kfull": {"qsmooth": True},
    "H qs kfull G2": {"qsmooth": True, "G": 2},
    "Hf qs kfull G2f": {"qsmooth": True, "G": 2, "gkind": "freq"},
    "V0 ka64": {"kanchor": 64},
    "V1 ka64 G2f": {"kanchor": 64, "G": 2, "gkind": "freq"},
    "V1b ka1-64 G2f": {"kanchor": 64, "a0": 1, "G": 2, "gkind": "freq"},
    "V2 ka64 G2f lowfp16": {"kanchor": 64, "G": 2, "gkind": "freq", "fp16_low": True},
    "V3 ka64 q2": {"kanchor": 64, "q2": True},
    "V4 ka64 G2f q2": {"kanchor": 64, "G": 2, "gkind": "freq", "q2": True},
    "V5 ka64 G4f": {"kanchor": 64, "G": 4, "gkind": "freq"},
    "V2n nosmooth G2f lowfp16": {"ksmooth": False, "G": 2, "gkind": "freq", "fp16_low": True},
    "V6 ka64 G4f lowfp16": {"kanchor": 64, "G": 4, "gkind": "freq", "fp16_low": True},
    "V2h ka64 G2f highfp16": {"kanchor": 64, "G": 2, "gkind": "freqrev", "fp16_low": True},
    "V2c ka64 G2 contig lowfp16": {"kanchor": 64, "G": 2, "fp16_low": True},
}
only = sys.argv[3].split(",") if len(sys.argv) > 3 else None
for n, c in variants.items():
    if only and n.split()[0] not in only:
        continue
    out = run(c)
    print(n, "| vs fp32:", cmp(out, ref), "| vs bf16:", cmp(out, bf), "| %.0fs" % (time.time() - t0), flush=True)
