"""The real Triton kernels under TRITON_INTERPRET=1 against the fp32 reference (small shapes)."""

import math

import pytest
import torch

MIN_COSINE = 0.9995
MAX_REL_L1 = 0.015

CASES = [
    # (q_lens, prefixes, hq, hkv, d)
    ([1], [0], 2, 2, 64),
    ([5, 40], [0, 30], 4, 2, 64),  # ragged, one with prefix
    ([1, 17, 33], [50, 0, 9], 8, 1, 128),  # MQA, decode-like row
    ([20], [45], 3, 1, 64),  # GQA 3, prefix not a block multiple
    ([16, 16], [16, 0], 8, 2, 128),  # exact block multiples
    ([37], [0], 4, 4, 128),  # MHA
]


def _inputs(q_lens, prefixes, hq, hkv, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    kv_lens = [a + b for a, b in zip(q_lens, prefixes)]
    pool = sum(kv_lens) + 11
    kb = (torch.randn(pool, hkv, d, generator=g) + 4 * torch.randn(1, hkv, d, generator=g)).to(dtype)
    vb = torch.randn(pool, hkv, d, generator=g).to(dtype)
    slots = torch.randperm(pool, generator=g)[: sum(kv_lens)].to(torch.int32)
    q = torch.randn(sum(q_lens), hq, d, generator=g).to(dtype)
    qo = torch.tensor([0] + list(q_lens)).cumsum(0).to(torch.int32)
    kvp = torch.tensor([0] + kv_lens).cumsum(0).to(torch.int32)
    return q, kb, vb, qo, kvp, slots


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"q{c[0]}-p{c[1]}-h{c[2]}x{c[3]}-d{c[4]}")
def test_matches_reference(sage_attn, case, dtype):
    q, kb, vb, qo, kvp, slots = _inputs(*case, dtype)
    kb0, vb0 = kb.clone(), vb.clone()
    out = torch.full_like(q, float("nan"))
    sage_attn["kernels"].sage_extend_attention(q, kb, vb, qo, kvp, slots, sm_scale=1 / math.sqrt(case[4]), out=out)
    assert not torch.isnan(out).any(), "unwritten output rows"
    assert torch.equal(kb, kb0) and torch.equal(vb, vb0), "the KV pool was written"
    ref = sage_attn["reference"].reference_extend_attention(q, kb, vb, qo, kvp, slots)
    acc = sage_attn["reference"].accuracy(out, ref)
    assert acc["cosine"] >= MIN_COSINE, acc
    assert acc["rel_l1"] <= MAX_REL_L1, acc


def test_prefix_is_attended_end_aligned(sage_attn):
    """With a cached prefix, query i must see keys 0..prefix+i (top-left alignment fails this)."""
    q, kb, vb, qo, kvp, slots = _inputs([8], [40], 2, 2, 64, torch.float16)
    out = sage_attn["kernels"].sage_extend_attention(q, kb, vb, qo, kvp, slots)
    ref = sage_attn["reference"]
    right = ref.reference_extend_attention(q, kb, vb, qo, kvp, slots)
    top_left = _top_left_reference(q, kb, vb, slots)
    assert ref.accuracy(out, right)["cosine"] >= MIN_COSINE
    assert ref.accuracy(out, top_left)["cosine"] < 0.95


def _top_left_reference(q, kb, vb, slots):
    """The mask sageattention 1.0.6 applies: query i sees keys 0..i of the whole sequence."""
    qs = q.float().transpose(0, 1)
    ks = kb[slots.long()].float().transpose(0, 1)
    vs = vb[slots.long()].float().transpose(0, 1)
    s = qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1])
    lq, lk = qs.shape[1], ks.shape[1]
    s = s.masked_fill(torch.arange(lk)[None, :] > torch.arange(lq)[:, None], float("-inf"))
    return (torch.softmax(s, -1) @ vs).transpose(0, 1)


def test_smoothing_makes_a_large_key_offset_harmless(sage_attn):
    """A channel offset 50x the key spread is removed before quantization (exact under softmax)."""
    q, kb, vb, qo, kvp, slots = _inputs([24], [24], 2, 2, 64, torch.float16)
    kb = (kb.float() + 50 * torch.randn(1, 2, 64)).to(torch.float16)
    out = sage_attn["kernels"].sage_extend_attention(q, kb, vb, qo, kvp, slots)
    ref = sage_attn["reference"].reference_extend_attention(q, kb, vb, qo, kvp, slots)
    assert sage_attn["reference"].accuracy(out, ref)["cosine"] >= MIN_COSINE


def _run_cuts(kernels, q, kb, vb, slots, cuts):
    """Run one sequence as consecutive extends (cut points in ``cuts``) over the same KV pool, as a
    chunked prefill or a radix-cache hit does, and return the rows stitched together."""
    outs = []
    bounds = [0, *cuts, q.shape[0]]
    for a, b in zip(bounds[:-1], bounds[1:]):
        qo = torch.tensor([0, b - a], dtype=torch.int32)
        kvp = torch.tensor([0, b], dtype=torch.int32)
        outs.append(kernels.sage_extend_attention(q[a:b], kb, vb, qo, kvp, slots[:b]))
    return torch.cat(outs)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize(
    "cuts",
    [[96], [64], [64, 80], [80], [16, 64]],
    ids=["radix-repeat", "chunk64", "chunk64-then-16", "prefix80", "chunk16-then-48"],
)
def test_rows_do_not_depend_on_the_batch_cut(sage_attn, cuts, d):
    """Bitwise: a row's output is the same whether the sequence is prefilled in one shot, extended
    after a cached prefix, or prefilled in chunks. (Cuts below ANCHOR keys are allowed only when the
    rows before the cut are not compared: they saw a shorter anchor.)

    The cuts are multiples of the interpreter's 16-row tile: NumPy's BLAS, which the interpreter
    uses for 16-bit dots, may round a row differently at another position inside a tile. The GPU
    test (test/registered/attention/test_sage_attn_kernels.py) cuts anywhere."""
    kernels = sage_attn["kernels"]
    q, kb, vb, _, _, slots = _inputs([97], [0], 4, 2, d, torch.bfloat16)
    one_shot = _run_cuts(kernels, q, kb, vb, slots, [])
    cut = _run_cuts(kernels, q, kb, vb, slots, cuts)
    first = cuts[1] if cuts[0] < kernels.ANCHOR else 0
    assert torch.equal(one_shot[first:], cut[first:]), (one_shot[first:] - cut[first:]).abs().max()


def test_short_anchor_changes_only_rows_before_it(sage_attn):
    """The documented limit: rows extended while a sequence had fewer than ANCHOR keys used a mean
    over fewer keys, so they may differ from a one-shot prefill; later rows do not."""
    kernels = sage_attn["kernels"]
    q, kb, vb, _, _, slots = _inputs([100], [0], 4, 2, 64, torch.bfloat16)
    one_shot = _run_cuts(kernels, q, kb, vb, slots, [])
    cut = _run_cuts(kernels, q, kb, vb, slots, [16])
    assert not torch.equal(one_shot[:16], cut[:16])
    assert torch.equal(one_shot[64:], cut[64:])


@pytest.mark.parametrize(
    "qo,kvp,msg",
    [([0, 9], [0, 9], "number of query rows"), ([0, 8], [0, 99], "exceeds kv_indices"), ([1, 8], [0, 8], "start at 0")],
)
def test_inconsistent_indptrs_are_refused(sage_attn, qo, kvp, msg):
    q, kb, vb, _, _, slots = _inputs([8], [0], 2, 2, 64, torch.float16)
    with pytest.raises(ValueError, match=msg):
        sage_attn["kernels"].sage_extend_attention(
            q, kb, vb, torch.tensor(qo, dtype=torch.int32), torch.tensor(kvp, dtype=torch.int32), slots
        )


@pytest.mark.parametrize("bad,msg", [
    ({"d": 96}, "head_dim"),
    ({"dtype": torch.float32}, "fp16/bf16"),
    ({"hq": 3, "hkv": 2}, "multiple of kv heads"),
])
def test_unsupported_inputs_are_refused(sage_attn, bad, msg):
    d = bad.get("d", 64)
    dtype = bad.get("dtype", torch.float16)
    q = torch.zeros(4, bad.get("hq", 2), d, dtype=dtype)
    kb = torch.zeros(8, bad.get("hkv", 2), d, dtype=dtype)
    with pytest.raises(ValueError, match=msg):
        sage_attn["kernels"].check_inputs(q, kb, kb)
