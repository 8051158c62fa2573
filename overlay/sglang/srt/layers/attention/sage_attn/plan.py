"""Per-batch work plan for the 8-bit extend kernels (built once per batch, used by every layer).

SGLang already holds the extend and prefix lengths of a batch on the host (``extend_seq_lens_cpu``,
``extend_prefix_lens_cpu``), so the block tables are computed there with NumPy and copied to the GPU
in one transfer: no per-request loop over tensors and no device-to-host sync.

Two tables:

* key blocks: every sequence's keys (prefix + new tokens) cut into ``block_n`` rows; each block is
  smoothed and quantized once per layer and then read by every query block of its sequence;
* query blocks: ``block_m`` new tokens of one sequence, ordered heaviest first (most key blocks to
  visit under the causal mask) so ragged batches keep the GPU busy to the end.

This module imports only NumPy and torch: it is unit-tested on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SagePlan:
    """Block tables and sizes shared by all layers of one forward batch."""

    batch_size: int
    block_m: int
    block_n: int
    num_q_blocks: int
    num_k_blocks: int
    # int32 [B + 1]: new-token offsets of each sequence in the packed q / output
    qo_indptr: torch.Tensor
    # int32 [B]: full sequence length (prefix + new tokens)
    kv_lens: torch.Tensor
    # int32 [B + 1]: first key block of each sequence in the packed 8-bit key buffer
    kblk_indptr: torch.Tensor
    # int32 [num_k_blocks]: sequence of each key block, and its first key position
    kblk_seq: torch.Tensor
    kblk_start: torch.Tensor
    # int32 [num_q_blocks]: sequence of each query block, and its first query row (heaviest first)
    qblk_seq: torch.Tensor
    qblk_start: torch.Tensor


def _cdiv(a: np.ndarray, b: int) -> np.ndarray:
    return (a + b - 1) // b


def plan_host_tables(
    q_lens: Sequence[int] | np.ndarray,
    kv_lens: Sequence[int] | np.ndarray,
    block_m: int,
    block_n: int,
    causal: bool = True,
) -> dict[str, np.ndarray]:
    """Compute the block tables on the host (NumPy, int32).

    ``kv_lens[i] >= q_lens[i] >= 1``: the new tokens are the last ``q_lens[i]`` keys of sequence i
    (their K/V were already written to the KV pool), so query row r sees keys ``0 .. prefix + r``.
    """
    q = np.asarray(q_lens, dtype=np.int64)
    kv = np.asarray(kv_lens, dtype=np.int64)
    if q.ndim != 1 or q.shape != kv.shape:
        raise ValueError(
            f"q_lens and kv_lens must be 1-D of equal length, got {q.shape} and {kv.shape}"
        )
    if q.size == 0:
        raise ValueError("empty batch")
    if (q < 1).any():
        raise ValueError(
            f"every sequence needs at least one new token, got q_lens={q.tolist()}"
        )
    if (kv < q).any():
        raise ValueError(
            f"kv_lens must be >= q_lens, got q_lens={q.tolist()} kv_lens={kv.tolist()}"
        )
    bsz = q.size
    nkb = _cdiv(kv, block_n)
    kblk_indptr = np.zeros(bsz + 1, dtype=np.int64)
    np.cumsum(nkb, out=kblk_indptr[1:])
    kblk_seq = np.repeat(np.arange(bsz), nkb)
    kblk_start = (
        np.arange(kblk_indptr[-1]) - np.repeat(kblk_indptr[:-1], nkb)
    ) * block_n

    nqb = _cdiv(q, block_m)
    qblk_seq = np.repeat(np.arange(bsz), nqb)
    qblk_start = (np.arange(nqb.sum()) - np.repeat(np.cumsum(nqb) - nqb, nqb)) * block_m
    prefix = (kv - q)[qblk_seq]
    if causal:
        last_row = np.minimum(qblk_start + block_m, q[qblk_seq])
        work = _cdiv(prefix + last_row, block_n)
    else:
        work = nkb[qblk_seq]
    # Heaviest first; the stable sort keeps equal-work blocks in memory order.
    order = np.argsort(-work, kind="stable")
    qo_indptr = np.zeros(bsz + 1, dtype=np.int64)
    np.cumsum(q, out=qo_indptr[1:])
    return {
        "qo_indptr": qo_indptr.astype(np.int32),
        "kv_lens": kv.astype(np.int32),
        "kblk_indptr": kblk_indptr.astype(np.int32),
        "kblk_seq": kblk_seq.astype(np.int32),
        "kblk_start": kblk_start.astype(np.int32),
        "qblk_seq": qblk_seq[order].astype(np.int32),
        "qblk_start": qblk_start[order].astype(np.int32),
    }


def build_plan(
    q_lens: Sequence[int] | np.ndarray,
    kv_lens: Sequence[int] | np.ndarray,
    device: torch.device | str,
    block_m: int,
    block_n: int,
    causal: bool = True,
) -> SagePlan:
    """Host tables -> one packed int32 tensor -> one host-to-device copy -> views."""
    tables = plan_host_tables(q_lens, kv_lens, block_m, block_n, causal)
    names = list(tables)
    flat = np.concatenate([tables[n] for n in names])
    host = torch.from_numpy(flat)
    if torch.device(device).type == "cuda":
        host = host.pin_memory()
    dev = host.to(device, non_blocking=True)
    views: dict[str, torch.Tensor] = {}
    off = 0
    for n in names:
        size = tables[n].size
        views[n] = dev[off : off + size]
        off += size
    return SagePlan(
        batch_size=int(tables["kv_lens"].size),
        block_m=block_m,
        block_n=block_n,
        num_q_blocks=int(tables["qblk_seq"].size),
        num_k_blocks=int(tables["kblk_seq"].size),
        **views,
    )
