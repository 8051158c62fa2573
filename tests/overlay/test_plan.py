"""Block tables of the per-batch plan, against hand-computed values."""

import numpy as np
import pytest
import torch


def test_tables_hand_computed(sage_attn):
    t = sage_attn["plan"].plan_host_tables([3, 5], [3, 12], block_m=4, block_n=4)
    assert t["qo_indptr"].tolist() == [0, 3, 8]
    assert t["kv_lens"].tolist() == [3, 12]
    # seq 0: 1 key block; seq 1: 3 key blocks
    assert t["kblk_indptr"].tolist() == [0, 1, 4]
    assert t["kblk_seq"].tolist() == [0, 1, 1, 1]
    assert t["kblk_start"].tolist() == [0, 0, 4, 8]
    # q blocks: (seq0, 0) sees 3 keys -> 1 block; (seq1, 0): prefix 7 + 4 rows -> 11 keys -> 3 blocks;
    # (seq1, 4): prefix 7 + 5 rows -> 12 keys -> 3 blocks.  Heaviest first, stable.
    assert list(zip(t["qblk_seq"].tolist(), t["qblk_start"].tolist())) == [(1, 0), (1, 4), (0, 0)]


def test_non_causal_work_is_whole_sequence(sage_attn):
    t = sage_attn["plan"].plan_host_tables([8, 1], [8, 30], block_m=4, block_n=8, causal=False)
    assert list(zip(t["qblk_seq"].tolist(), t["qblk_start"].tolist())) == [(1, 0), (0, 0), (0, 4)]


@pytest.mark.parametrize(
    "q_lens,kv_lens,msg",
    [
        ([0], [3], "at least one new token"),
        ([4], [3], "kv_lens must be >= q_lens"),
        ([], [], "empty batch"),
        ([1, 2], [3], "equal length"),
    ],
)
def test_bad_lengths_are_named(sage_attn, q_lens, kv_lens, msg):
    with pytest.raises(ValueError, match=msg):
        sage_attn["plan"].plan_host_tables(q_lens, kv_lens, 4, 4)


def test_random_plans_cover_every_row_and_key_once(sage_attn):
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = int(rng.integers(1, 6))
        q = rng.integers(1, 40, size=b)
        kv = q + rng.integers(0, 60, size=b)
        bm, bn = (4, 8) if rng.random() < 0.5 else (16, 4)
        t = sage_attn["plan"].plan_host_tables(q, kv, bm, bn)
        rows = {(s, r) for s, st in zip(t["qblk_seq"], t["qblk_start"]) for r in range(st, min(st + bm, q[s]))}
        assert rows == {(s, r) for s in range(b) for r in range(q[s])}
        keys = [(s, k) for s, st in zip(t["kblk_seq"], t["kblk_start"]) for k in range(st, min(st + bn, kv[s]))]
        assert sorted(keys) == [(s, k) for s in range(b) for k in range(kv[s])]


def test_build_plan_views_match_tables(sage_attn):
    p = sage_attn["plan"].build_plan([3, 5], [3, 12], "cpu", 4, 4)
    assert p.num_q_blocks == 3 and p.num_k_blocks == 4 and p.kv_lens.tolist()[-1] == 12
    assert p.kblk_start.dtype == torch.int32 and p.kblk_start.tolist() == [0, 0, 4, 8]


def test_overlay_kernels_loader_refuses_a_second_directory_under_one_name(tmp_path):
    from sglang_sage.overlay_kernels import DEFAULT_PKG_DIR, load_sage_attn

    other = tmp_path / "sage_attn"
    other.mkdir()
    (other / "__init__.py").write_text("")
    assert load_sage_attn() is load_sage_attn(DEFAULT_PKG_DIR)  # same directory: the loaded package
    import pytest

    with pytest.raises(ValueError, match="already loaded"):
        load_sage_attn(other)
    with pytest.raises(FileNotFoundError, match="no sage_attn package"):
        load_sage_attn(tmp_path / "missing", name="sage_attn_overlay_missing")
