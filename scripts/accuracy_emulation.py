"""CPU emulation of sage_attn's quantization choices on SmolLM2's real activations (no GPU, no Triton).

Replaces every attention of the HF model by an fp32 emulation of a quantization scheme and compares the
logits with fp32 attention and with bf16 SDPA on 2 x 1,000 tokens of the verify corpus: top-1 agreement,
perplexity delta, mean KL. Used to choose the next kernel change (docs/accuracy-notes.md).

    python scripts/accuracy_emulation.py MODEL_DIR     # HF dir of SmolLM2-135M-Instruct (verify.py caches one)

Needs transformers (not a project dependency). Takes ~5 minutes on 2 cores.
"""

import math
import sys

import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

P = sys.argv[1]
m = AutoModelForCausalLM.from_pretrained(P, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(P)


def q8(x, groups=1):
    shp = x.shape
    xg = x.reshape(*shp[:-1], groups, shp[-1] // groups)
    s = xg.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 127
    return (torch.round(xg / s) * s).reshape(shp)


def f8(x):
    s = x.abs().amax(-1, keepdim=True).clamp_min(1e-8) / 448
    return (x / s).to(torch.float8_e4m3fn).float() * s


def emu(q, k, v, cfg):
    L = q.shape[0]
    g = q.shape[1] // k.shape[1]
    qf = q.float()
    kf = k.float()
    km = kf[: cfg.get("kanchor", L)].mean(0, keepdim=True) if cfg.get("ksmooth", True) else 0
    ks = kf - km
    qm = qf.mean(0, keepdim=True) if cfg.get("qsmooth") else torch.zeros_like(qf[:1])
    qs = qf - qm
    if cfg.get("fp8"):
        qh, kh = f8(qs), f8(ks)
    else:
        qh, kh = q8(qs, cfg.get("G", 1)), q8(ks, cfg.get("G", 1))
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
ids = torch.cat([tok(text[o : o + 12000], return_tensors="pt").input_ids[:, :1000] for o in (50000, 150000)], 1)
lp = lambda x: torch.log_softmax(x, -1)


def run(c):
    CFG["c"] = c
    with torch.no_grad():
        return m(ids[:, :1000]).logits[0].float(), m(ids[:, 1000:2000]).logits[0].float()


res = {"ref": run("ref"), "bf16": run("bf16")}
variants = {
    "H qs kfull G2": {"qsmooth": True, "G": 2},
    "I qs kanchor64": {"qsmooth": True, "kanchor": 64},
    "J qs kanchor64 G2": {"qsmooth": True, "kanchor": 64, "G": 2},
    "A cur (qs+kfull)": {"qsmooth": True},
    "B kanchor64": {"kanchor": 64},
    "C kanchor64 G2": {"kanchor": 64, "G": 2},
    "D kanchor64 G4": {"kanchor": 64, "G": 4},
    "E kfull": {},
    "F fp8 kanchor64": {"fp8": True, "kanchor": 64},
    "G fp8 kanchor64 qs": {"fp8": True, "kanchor": 64, "qsmooth": True},
}


def cmp(a, r, tgts):
    agree = []
    nll_a = []
    nll_r = []
    kl = []
    for x, y, t in zip(a, r, tgts):
        x = x[:-1]
        y = y[:-1]
        agree.append((x.argmax(-1) == y.argmax(-1)).float())
        nll_a.append(-lp(x).gather(1, t[:, None]))
        nll_r.append(-lp(y).gather(1, t[:, None]))
        kl.append((lp(y).exp() * (lp(y) - lp(x))).sum(-1))
    ag = torch.cat(agree).mean().item()
    pa = math.exp(torch.cat(nll_a).mean().item())
    pr = math.exp(torch.cat(nll_r).mean().item())
    return "top1 %.4f pplΔ %+.3f%% KL %.5f" % (ag, 100 * (pa / pr - 1), torch.cat(kl).mean().item())


tg = [ids[0, 1:1000], ids[0, 1001:2000]]
print("bf16 vs ref:", cmp(res["bf16"], res["ref"], tg))
for n, c in variants.items():
    out = run(c)
    print(n, "| vs fp32:", cmp(out, res["ref"], tg), "| vs bf16:", cmp(out, res["bf16"], tg), flush=True)
