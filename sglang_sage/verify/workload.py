"""Everything both engines are asked, decided once, so baseline and sage get identical token ids.

The orchestrator tokenizes here (one tokenizer, one process) and writes the result into each
worker's job file; the workers only send token ids. Sizes are per ``--quick`` / full mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import passkey
from .corpus import random_tokens
from .metrics import plan_windows

BUCKETS = ("short", "medium", "long")
LONG_MIN_CONTEXT = 7000  # "long" means at least this many tokens of context per scored token


@dataclass
class BucketSpec:
    """A context-length bucket: window W, stride S (each scored token sees ≥ W-S tokens)."""

    name: str
    window: int
    stride: int
    max_windows: int

    @property
    def min_context(self) -> int:
        return self.window - self.stride


@dataclass
class Sizes:
    """Work sizes; ``quick`` shrinks every count but keeps every code path."""

    short: BucketSpec
    medium: BucketSpec
    long: BucketSpec | None
    topk: int = 20
    passkey_targets: dict[str, int] = field(default_factory=dict)
    passkey_depths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    passkey_keys_per_depth: int = 2
    passkey_new_tokens: int = 12
    det_prompt_tokens: int = 512
    det_shared_prefix: int = 256
    det_new_tokens: int = 32
    det_repeats: int = 5
    tp_prefill_len: int = 4096
    tp_decode_prompt_len: int = 64
    tp_decode_new_tokens: int = 256
    tp_batches: tuple[int, ...] = (1, 32)
    tp_reps_prefill: int = 3
    tp_reps_decode: int = 2

    def buckets(self) -> list[BucketSpec]:
        return [b for b in (self.short, self.medium, self.long) if b is not None]


def make_sizes(context_length: int, quick: bool, topk: int = 20) -> Sizes:
    """Bucket windows from the model's context: long = context - 64 (room for SGLang's limits)."""
    long_w = min(context_length, 8192) - 64
    long = BucketSpec("long", long_w, 1024, 3 if quick else 16) if long_w - 1024 >= LONG_MIN_CONTEXT else None
    sizes = Sizes(
        short=BucketSpec("short", 256, 128, 64 if quick else 256),
        medium=BucketSpec("medium", 2048, 512, 8 if quick else 48),
        long=long,
        topk=topk,
        passkey_targets={"short": 200, "medium": 1536, **({"long": min(context_length, 8192) - 128} if long else {})},
    )
    sizes.tp_prefill_len = max(256, min(4096, context_length // 2))
    if quick:
        sizes.passkey_depths = (0.2, 0.5, 0.8)
        sizes.passkey_keys_per_depth = 1
        sizes.det_repeats = 3
        sizes.tp_decode_new_tokens = 128
        sizes.tp_reps_prefill = 1
        sizes.tp_reps_decode = 1
    return sizes


def accuracy_plan(n_tokens: int, sizes: Sizes) -> list[dict]:
    """Sliding windows per bucket (JSON-ready: name, window, stride, windows=[[begin,end,score_from]])."""
    out = []
    for b in sizes.buckets():
        wins = plan_windows(n_tokens, b.window, b.stride, b.max_windows)
        out.append({"name": b.name, "window": b.window, "stride": b.stride, "min_context": b.min_context,
                    "windows": [[w.begin, w.end, w.score_from] for w in wins]})
    return out


def passkey_plan(encode, sizes: Sizes) -> list[dict]:
    """Tokenized passkey trials for every bucket (needs a real tokenizer)."""
    trials = passkey.make_trials(lambda s: len(encode(s)), sizes.passkey_targets,
                                 sizes.passkey_depths, sizes.passkey_keys_per_depth)
    return [{"bucket": t.bucket, "depth": t.depth, "key": t.key, "target_tokens": t.target_tokens,
             "ids": list(encode(t.text))} for t in trials]


def determinism_plan(tokens: list[int], sizes: Sizes, offset: int = 1000) -> dict:
    """A corpus passage, and a second prompt that shares only its first ``det_shared_prefix`` tokens."""
    need = offset + sizes.det_prompt_tokens + 400
    if len(tokens) < need:
        offset = 0
    ids = tokens[offset:offset + sizes.det_prompt_tokens]
    tail_from = offset + sizes.det_prompt_tokens + 200
    partial = ids[:sizes.det_shared_prefix] + tokens[tail_from:tail_from + 200]
    return {"ids": ids, "partial_ids": partial, "max_new_tokens": sizes.det_new_tokens,
            "repeats": sizes.det_repeats}


def throughput_plan(sizes: Sizes) -> list[dict]:
    """Prefill-heavy (long prompt, 1 token) and decode-heavy (short prompt, many tokens) shapes."""
    return [
        {"name": "prefill", "kind": "prefill", "input_len": sizes.tp_prefill_len, "output_len": 1,
         "batches": list(sizes.tp_batches), "reps": {str(b): sizes.tp_reps_prefill for b in sizes.tp_batches}},
        {"name": "decode", "kind": "decode", "input_len": sizes.tp_decode_prompt_len,
         "output_len": sizes.tp_decode_new_tokens, "batches": list(sizes.tp_batches),
         "reps": {str(b): sizes.tp_reps_decode for b in sizes.tp_batches}},
    ]


# The speed model (Llama-3.1-8B geometry, dummy weights): prefill rows repeat until this many prompt tokens
# were timed (at most 3, at least 1 run: 4K x 1 runs 3 times, 32K x 32 = 1M tokens once, ~40 s on an H200).
SPEED_PREFILL_TOKENS_PER_ROW = 300_000
# Decode rows keep batch x (prompt + new tokens) of KV resident; above this the shape is left out of the plan
# (32K x 32 needs ~1M tokens = 131 GB of bf16 KV for Llama-3.1-8B: more than an H200 holds besides weights).
SPEED_DECODE_MAX_KV_TOKENS = 262_144


def _k(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def speed_plan(prompts: list[int], batches: list[int], decode_tokens: int, quick: bool) -> tuple[list[dict], list[str]]:
    """Check 4 on a full-size geometry: prefill-heavy rows for every prompt length and batch, decode-heavy
    rows (``decode_tokens`` new tokens; 0 = none) where their KV fits. Returns (shapes, left-out notes)."""
    if not prompts or not batches or min(prompts) < 2 or min(batches) < 1 or decode_tokens < 0:
        raise ValueError(f"speed plan needs prompts >= 2, batches >= 1, decode tokens >= 0 (got {prompts}, "
                         f"{batches}, {decode_tokens})")
    shapes: list[dict] = []
    left_out: list[str] = []
    for n in prompts:
        reps = {str(b): 1 if quick else max(1, min(3, SPEED_PREFILL_TOKENS_PER_ROW // (b * n))) for b in batches}
        shapes.append({"name": f"prefill {_k(n)}", "kind": "prefill", "input_len": n, "output_len": 1,
                       "batches": list(batches), "reps": reps})
    if decode_tokens:
        for n in prompts:
            fits = [b for b in batches if b * (n + decode_tokens) <= SPEED_DECODE_MAX_KV_TOKENS]
            left_out += [f"decode {_k(n)} batch {b}: {b * (n + decode_tokens):,} KV tokens > "
                         f"{SPEED_DECODE_MAX_KV_TOKENS:,} (the plan's limit)" for b in batches if b not in fits]
            if fits:
                shapes.append({"name": f"decode {_k(n)}", "kind": "decode", "input_len": n,
                               "output_len": decode_tokens, "batches": fits, "reps": {str(b): 1 for b in fits}})
    return shapes, left_out


def build_speed(vocab_size: int, prompts: list[int], batches: list[int], decode_tokens: int, quick: bool) -> dict:
    """The speed model's workload: random token ids (dummy weights, no tokenizer) and the throughput shapes."""
    shapes, left_out = speed_plan(prompts, batches, decode_tokens, quick)
    tokens = random_tokens(max(200_000, 4 * max(prompts)), vocab_size, seed=1)
    return {"tokens": tokens, "throughput": shapes, "left_out": left_out}


def build(tokens: list[int], sizes: Sizes, encode=None) -> dict:
    """The whole workload (JSON-ready). ``encode`` None means no tokenizer (dummy weights)."""
    w = {
        "tokens": tokens,
        "topk": sizes.topk,
        "determinism": determinism_plan(tokens, sizes),
        "throughput": throughput_plan(sizes),
        "sizes": {k: (asdict(v) if isinstance(v, BucketSpec) else v) for k, v in asdict(sizes).items()},
    }
    if encode is not None:
        w["accuracy"] = accuracy_plan(len(tokens), sizes)
        w["passkey"] = passkey_plan(encode, sizes)
        w["passkey_new_tokens"] = sizes.passkey_new_tokens
        w["probe_prompt"] = "The capital of France is"
    return w
