#!/usr/bin/env python3
"""Apply the sage_attn patch set to SGLang: see `python apply.py --help` (logic: sglang_sage/apply_cli.py)."""

import sys

from sglang_sage.apply_cli import main

if __name__ == "__main__":
    sys.exit(main())
