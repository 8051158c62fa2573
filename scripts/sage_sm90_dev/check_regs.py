#!/usr/bin/env python3
"""Check that every ``setmaxnreg`` region of the sm90 sage_attn kernels stays within its limit.

ptxas honours ``setmaxnreg.inc`` (the consumer warpgroups may use up to the raised count) but does
not keep code after ``setmaxnreg.dec`` under the lowered count: a producer that needs more
registers than it released would silently read registers it no longer owns (seen on the H200:
wrong results for head_dim 128). This reads the SASS of a built library and fails when a region
uses more registers than its ``USETMAXREG`` allows.

    python3 scripts/sage_sm90_dev/check_regs.py lib.so [--cuobjdump PATH]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys


def regions(sass: str) -> dict[str, dict[tuple[str, int], int]]:
    """function name -> {(USETMAXREG kind, limit): highest register count used after it}."""
    out: dict[str, dict[tuple[str, int], int]] = {}
    for chunk in re.split(r"\n\s*Function : ", sass)[1:]:
        lines = chunk.split("\n")
        name = lines[0].strip()
        cur = None
        used: dict[tuple[str, int], int] = {}
        for ln in lines[1:]:
            m = re.search(r"USETMAXREG\.(\w+)\.CTAPOOL\s+(?:\S+,\s*)?(0x[0-9a-f]+)", ln)
            if m:
                cur = (m.group(1), int(m.group(2), 16))
                used.setdefault(cur, 0)
                continue
            if cur is not None:
                for r in re.findall(r"\bR(\d+)\b", ln):
                    used[cur] = max(used[cur], int(r) + 1)
                if re.search(r"\*/\s+EXIT\s*;", ln) and cur[0] == "DEALLOC":
                    cur = None  # unpredicated exit: the producer ends; code after it belongs to callers
        if used:
            out[name] = used
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("lib")
    ap.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    args = ap.parse_args()
    sass = subprocess.run([args.cuobjdump, "-sass", args.lib], capture_output=True, text=True, check=True).stdout
    bad = 0
    for name, used in regions(sass).items():
        for (kind, limit), n in used.items():
            ok = n <= limit
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {kind:9s} limit {limit:3d} uses {n:3d}  {name[:90]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
