"""Fake sglang for CPU tests of verify.py (see ../README.md)."""

__version__ = "0.0.0+fake"

from sglang._fake_engine import Engine  # noqa: E402,F401
