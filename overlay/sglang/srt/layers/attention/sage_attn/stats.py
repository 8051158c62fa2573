"""Per-path counters of the ``sage_attn`` backend, readable from outside a running engine.

The scheduler runs in its own process, so the counters are published as a small JSON file per
process in ``$SGLANG_SAGE_STATS_DIR`` (when that variable is set): a report can then prove which
kernels ran. Counting is a Python integer increment. The file is rewritten when a path runs for
the first time (so "did the 8-bit kernel run?" is answered at once) and otherwise at most every
``PUBLISH_INTERVAL_S``: a file write per decode step would tax serving for a report's sake.
"""

from __future__ import annotations

import json
import os
import time
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
PUBLISH_INTERVAL_S = 0.5


class SageStats:
    """Counters of one backend instance (one per scheduler process / TP rank)."""

    def __init__(
        self, decode_backend: str, tp_rank: int = 0, prefill_kernel: str = "triton"
    ) -> None:
        self.decode_backend = decode_backend
        self.prefill_kernel = (
            prefill_kernel  # "sm90" or "triton": which 8-bit kernel the counters count
        )
        self.tp_rank = tp_rank
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        stats_dir = os.environ.get(STATS_DIR_ENV)
        self._path = (
            Path(stats_dir) / f"sage_attn_stats_{os.getpid()}.json"
            if stats_dir
            else None
        )
        self._published_paths: frozenset[str] = frozenset()
        self._published_at = float("-inf")

    def add(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def batch_done(self, name: str) -> None:
        """Count one batch; publish all counters (the previous batch's layer calls too) when a path
        ran for the first time or the last file is older than ``PUBLISH_INTERVAL_S``."""
        self.counters[name] += 1
        if self._path is None:
            return
        ran = frozenset(k for k, v in self.counters.items() if v)
        if (
            ran != self._published_paths
            or time.monotonic() - self._published_at >= PUBLISH_INTERVAL_S
        ):
            self.publish()

    def publish(self) -> None:
        if self._path is None:
            return
        payload = {
            "pid": os.getpid(),
            "tp_rank": self.tp_rank,
            "decode_backend": self.decode_backend,
            "prefill_kernel": self.prefill_kernel,
            "counters": self.counters,
        }
        tmp = self._path.with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self._path)
        self._published_paths = frozenset(k for k, v in self.counters.items() if v)
        self._published_at = time.monotonic()
