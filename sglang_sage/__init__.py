"""sglang-sage: the patch engine that turns a pinned SGLang into SGLang + the `sage_attn` backend."""

__version__ = "0.1.0"
