#!/usr/bin/env python3
"""Verify the sage_attn backend against a baseline on a GPU: see `python verify.py --help`
(logic: sglang_sage/verify/cli.py; report under reports/<sglang-version>/<gpu>/)."""

import sys

from sglang_sage.verify.cli import main

if __name__ == "__main__":
    sys.exit(main())
