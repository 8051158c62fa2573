"""Fake ``transformers`` for the CPU orchestration tests: just ``AutoTokenizer`` (word-level, deterministic),
enough for verify.py's workload (corpus windows, passkey prompts) without the real package."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

_WORD = re.compile(r"\w+|[^\w\s]")


class _Tokenizer:
    """Words and punctuation → ids by crc32 (stable across processes), ids from 100 up to the model's vocab."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [100 + zlib.crc32(w.encode()) % (self.vocab - 100) for w in _WORD.findall(text)]
        return ([1] if add_special_tokens else []) + ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens)}


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path: str, **_kw) -> _Tokenizer:
        cfg = Path(path) / "config.json"
        vocab = int(json.loads(cfg.read_text()).get("vocab_size", 32000)) if cfg.is_file() else 32000
        return _Tokenizer(vocab)
