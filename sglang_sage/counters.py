"""Read the ``sage_attn`` backend's counters from outside a running engine.

The scheduler runs in its own process(es); each one that hosts a ``sage_attn`` backend rewrites
``$SGLANG_SAGE_STATS_DIR/sage_attn_stats_<pid>.json`` after every forward batch (see
docs/CONTRACTS.md). Summing those files is the only way a report can prove that the 8-bit kernels
ran, instead of trusting that the flag was passed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

STATS_DIR_ENV = "SGLANG_SAGE_STATS_DIR"
FILE_GLOB = "sage_attn_stats_*.json"
COUNTER_NAMES = (
    "prefill_8bit_batches",
    "extend_prefix_8bit_batches",
    "decode_batches",
    "prefill_8bit_layer_calls",
    "extend_prefix_8bit_layer_calls",
    "decode_layer_calls",
    "cuda_graph_decode_replays",
)


def _load(path: Path, retries: int = 3) -> dict[str, Any] | None:
    """One process's file; None when it stays unreadable (it is replaced atomically, but be safe)."""
    for attempt in range(retries):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.02 * (attempt + 1))
            continue
        if isinstance(data, dict) and isinstance(data.get("counters"), dict):
            return data
        return None
    return None


def read_counters_detail(stats_dir: str | Path) -> dict[str, Any]:
    """Summed counters plus where they came from: process count, pids, decode backends."""
    root = Path(stats_dir)
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    pids: list[int] = []
    decode_backends: set[str] = set()
    prefill_kernels: set[str] = set()
    unreadable: list[str] = []
    for path in sorted(root.glob(FILE_GLOB)) if root.is_dir() else []:
        data = _load(path)
        if data is None:
            unreadable.append(path.name)
            continue
        for name, value in data["counters"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                counters[name] = counters.get(name, 0) + int(value)
        if isinstance(data.get("pid"), int):
            pids.append(data["pid"])
        if data.get("decode_backend"):
            decode_backends.add(str(data["decode_backend"]))
        if data.get("prefill_kernel"):
            prefill_kernels.add(str(data["prefill_kernel"]))
    return {
        "counters": counters,
        "processes": len(pids),
        "pids": pids,
        "decode_backends": sorted(decode_backends),
        "prefill_kernels": sorted(prefill_kernels),
        "unreadable": unreadable,
    }


def read_counters(stats_dir: str | Path) -> dict[str, int]:
    """Counters summed over every scheduler process that wrote into ``stats_dir``.

    Every name of the contract is present (0 when no process wrote it), so callers can compare
    snapshots without guarding keys. A missing directory reads as all zeros.
    """
    return read_counters_detail(stats_dir)["counters"]


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Per-counter increase between two snapshots (what one phase of work added)."""
    names = set(before) | set(after)
    return {n: int(after.get(n, 0)) - int(before.get(n, 0)) for n in sorted(names)}
