#!/usr/bin/env python3
"""Compile flashinfer's JIT kernels for a model before a timed run (verify.py's floor stage).

flashinfer nvcc-compiles each prefill/decode kernel class on first use (~80 s each on the H200 image); a stage
killed half-way through a compile leaves nothing in the cache, so on a fresh machine verify's flashinfer floor stage
timed out twice in a row (2026-12-01). This starts one Engine with the settings verify's engines use (no CUDA graphs),
runs a teacher-forced prefill with log-probs, a radix-hit prefill (paged prefix + ragged new part) and a few decode
steps, and exits: the kernels are then in flashinfer's cache for the timed run on the same machine.

    python3 scripts/warm_flashinfer.py /tmp/smollm2            # GPU machine (gpu_session.sh phase warmfi)
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("model", help="model directory (HF format)")
    ap.add_argument("--mem-fraction-static", type=float, default=0.2)
    ap.add_argument(
        "--backend",
        default="flashinfer",
        help="attention backend to warm (default flashinfer)",
    )
    args = ap.parse_args(argv)

    import sglang

    t0 = time.time()
    engine = sglang.Engine(
        model_path=args.model,
        attention_backend=args.backend,
        sampling_backend="pytorch",
        grammar_backend="none",
        mem_fraction_static=args.mem_fraction_static,
        log_level="error",
        disable_cuda_graph=True,
    )
    print(f"[warm] {args.backend} engine up in {time.time() - t0:.0f}s", flush=True)
    first = list(range(100, 400))
    try:
        for name, ids in (
            ("cold prefill", first),
            ("radix-hit prefill", first + list(range(400, 700))),
        ):
            t = time.time()
            engine.generate(
                input_ids=ids,
                sampling_params={"max_new_tokens": 4, "temperature": 0.0},
                return_logprob=True,
                logprob_start_len=0,
            )
            print(
                f"[warm] {name} ({len(ids)} tokens) + 4 decode steps: {time.time() - t:.0f}s",
                flush=True,
            )
    finally:
        engine.shutdown()
    print(
        f"[warm] {args.backend} kernels compiled and cached in {time.time() - t0:.0f}s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
