"""Fake ServerArgs: resolves a missing attention backend to a default that is not sage_attn."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

ATTENTION_BACKEND_CHOICES = ["triton", "flashinfer", "fa3", "sage_attn"]


@dataclass
class ServerArgs:
    model_path: str
    attention_backend: str | None = None
    load_format: str = "auto"
    skip_tokenizer_init: bool = False
    mem_fraction_static: float | None = None

    def __post_init__(self) -> None:
        if self.attention_backend is None:
            self.attention_backend = "fa3"

    def _get_default_attn_backend(self) -> str:
        return "fa3"


def prepare_server_args(argv: list[str]) -> ServerArgs:
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--attention-backend", choices=ATTENTION_BACKEND_CHOICES)
    p.add_argument("--load-format", default="auto")
    p.add_argument("--skip-tokenizer-init", action="store_true")
    a, _ = p.parse_known_args(argv)
    return ServerArgs(a.model_path, a.attention_backend, a.load_format, a.skip_tokenizer_init)
