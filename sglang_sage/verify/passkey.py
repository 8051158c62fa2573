"""Passkey retrieval: a number hidden at a chosen depth of filler text, asked for at the end.

Long-context attention errors show up as a failure to retrieve the key; both backends get the
identical token sequence, greedy decoding, and the same scoring.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

INTRO = (
    "There is an important pass key hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will ask you about the pass key.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "What is the pass key? The pass key is"

_DIGIT_RUN = re.compile(r"\d+")


def score_answer(answer: str, key: str) -> bool:
    """True when the key appears as a whole run of digits in the answer.

    "The pass key is 68241." scores; "682410" or "6824" do not (a longer or shorter number is a
    wrong answer, not a partial hit).
    """
    if not key.isdigit():
        raise ValueError(f"pass key must be digits, got {key!r}")
    return key in _DIGIT_RUN.findall(answer)


@dataclass(frozen=True)
class PasskeyTrial:
    """One prompt: target length (tokens), depth of the needle in [0, 1], and the key."""

    bucket: str
    target_tokens: int
    depth: float
    key: str
    text: str


def make_keys(n: int, seed: int = 1234, digits: int = 5) -> list[str]:
    """Deterministic keys without a leading zero."""
    rng = random.Random(seed)
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    return [str(rng.randint(lo, hi)) for _ in range(n)]


def build_prompt(n_filler: int, depth: float, key: str) -> str:
    """Intro, ``n_filler`` filler lines with the needle after round(depth * n_filler) of them, question."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    cut = round(depth * n_filler)
    return INTRO + FILLER * cut + NEEDLE.format(key=key) + FILLER * (n_filler - cut) + QUESTION


def fit_filler(count_tokens: Callable[[str], int], target_tokens: int) -> int:
    """The largest filler count whose prompt stays within ``target_tokens`` (at least 1)."""
    probe_key = "12345"
    fixed = count_tokens(build_prompt(0, 0.0, probe_key))
    per_line = max(1, count_tokens(build_prompt(8, 0.0, probe_key)) - fixed) / 8.0
    n = max(1, int((target_tokens - fixed) / per_line))
    # the estimate is close; walk down until it fits (token merges across lines can differ)
    while n > 1 and count_tokens(build_prompt(n, 0.5, probe_key)) > target_tokens:
        n = max(1, int(n * 0.98) - 1)
    return n


def make_trials(count_tokens: Callable[[str], int], buckets: dict[str, int], depths: Sequence[float],
                keys_per_depth: int, seed: int = 1234) -> list[PasskeyTrial]:
    """Trials for every bucket (name -> target prompt tokens) × depth × key."""
    trials: list[PasskeyTrial] = []
    keys = make_keys(len(buckets) * len(depths) * keys_per_depth, seed)
    i = 0
    for bucket, target in buckets.items():
        n_filler = fit_filler(count_tokens, target)
        for depth in depths:
            for _ in range(keys_per_depth):
                key = keys[i]
                i += 1
                trials.append(PasskeyTrial(bucket, target, float(depth), key, build_prompt(n_filler, depth, key)))
    return trials


def accuracy(hits: Sequence[bool]) -> float:
    """Fraction of retrieved keys (0.0 for no trials would hide a bug: refuse it)."""
    if not hits:
        raise ValueError("no passkey trials")
    return sum(bool(h) for h in hits) / len(hits)
