"""Per-path counters of the ``sage_attn`` backend, readable from outside a running engine.

The scheduler runs in its own process, so the counters are published as a small JSON file per
process in ``$SGLANG_SAGE_STATS_DIR`` (when that variable is set): a report can then prove which
kernels ran. Counting is a Python integer increment; the file is rewritten once per batch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

COUNTER_NAMES = (
    "prefill_8bit_batches",
    "extend_prefix_8bit_batches",
    "decode_batches",
    "prefill_8bit_layer_calls",
    "extend_prefix_8bit_layer_calls",
    "decode_layer_calls",
    "cuda_graph_decode_replays",
)
STATS_DIR_ENV = "SGLANG_SAGE_STATS_DIR"


class SageStats:
    """Counters of one backend instance (one per scheduler process / TP rank)."""

    def __init__(self, decode_backend: str, tp_rank: int = 0) -> None:
        self.decode_backend = decode_backend
        self.tp_rank = tp_rank
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        stats_dir = os.environ.get(STATS_DIR_ENV)
        self._path = Path(stats_dir) / f"sage_attn_stats_{os.getpid()}.json" if stats_dir else None

    def add(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def batch_done(self, name: str) -> None:
        """Count one batch and publish all counters (the layer calls of the previous batch too)."""
        self.counters[name] += 1
        self.publish()

    def publish(self) -> None:
        if self._path is None:
            return
        payload = {
            "pid": os.getpid(),
            "tp_rank": self.tp_rank,
            "decode_backend": self.decode_backend,
            "counters": self.counters,
        }
        tmp = self._path.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self._path)
