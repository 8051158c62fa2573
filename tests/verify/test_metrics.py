"""Metric math against hand-computed values (CPU, numpy only)."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

from sglang_sage.verify import metrics


def lp(*ps: float) -> list[float]:
    return [math.log(p) for p in ps]


class TestCoarseKL:
    def test_identical_distributions_give_zero(self):
        ids = np.array([[5, 7, 9]])
        v = np.array([lp(0.5, 0.3, 0.1)])
        assert metrics.coarse_kl(ids, v, ids, v)[0] == pytest.approx(0.0, abs=1e-15)

    def test_hand_computed_same_sets(self):
        # P: a=.5 b=.3 rest=.2 ; Q: a=.4 b=.4 rest=.2
        kl = metrics.coarse_kl(
            np.array([[1, 2]]), np.array([lp(0.5, 0.3)]), np.array([[2, 1]]), np.array([lp(0.4, 0.4)])
        )[0]
        want = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4) + 0.0  # rest cells equal
        assert kl == pytest.approx(want, rel=1e-12)

    def test_token_missing_from_sage_topk_goes_to_rest_cell(self):
        # P top-2 {1:.6, 2:.3}; Q top-2 {1:.5, 3:.3}: only token 1 is a shared cell.
        # cells: {1}: .6 vs .5 ; rest: .4 vs .5
        kl = metrics.coarse_kl(
            np.array([[1, 2]]), np.array([lp(0.6, 0.3)]), np.array([[1, 3]]), np.array([lp(0.5, 0.3)])
        )[0]
        want = 0.6 * math.log(0.6 / 0.5) + 0.4 * math.log(0.4 / 0.5)
        assert kl == pytest.approx(want, rel=1e-12)

    def test_is_a_lower_bound_of_the_full_kl(self):
        rng = np.random.default_rng(0)
        for _ in range(20):
            p = rng.dirichlet(np.ones(50))
            q = rng.dirichlet(np.ones(50))
            full = float(np.sum(p * np.log(p / q)))
            k = 8
            pi, qi = np.argsort(-p)[:k], np.argsort(-q)[:k]
            coarse = metrics.coarse_kl(pi[None], np.log(p[pi])[None], qi[None], np.log(q[qi])[None])[0]
            assert 0.0 <= coarse <= full + 1e-12

    def test_exact_when_topk_covers_the_vocabulary(self):
        p = np.array([0.5, 0.25, 0.125, 0.125])
        q = np.array([0.25, 0.25, 0.25, 0.25])
        ids = np.arange(4)[None]
        kl = metrics.coarse_kl(ids, np.log(p)[None], ids, np.log(q)[None])[0]
        assert kl == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-12)

    def test_disjoint_topk_sets(self):
        # no shared cell: only rest cell, both masses 1 -> KL 0 (the bound is loose here, by design)
        kl = metrics.coarse_kl(np.array([[1]]), np.array([lp(0.9)]), np.array([[2]]), np.array([lp(0.9)]))[0]
        assert kl == pytest.approx(0.0, abs=1e-12)

    def test_padding_rows_are_harmless(self):
        ids = np.array([[1, 2, -1]])
        v = np.array([lp(0.5, 0.3) + [-1e30]])
        q = np.array([lp(0.4, 0.4) + [-1e30]])
        kl = metrics.coarse_kl(ids, v, ids, q)[0]
        want = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)
        assert kl == pytest.approx(want, rel=1e-12)

    def test_shape_mismatch_is_refused(self):
        with pytest.raises(ValueError):
            metrics.coarse_kl(np.array([[1, 2]]), np.array([[0.0]]), np.array([[1, 2]]), np.array([[0.0, 0.0]]))


class TestCompareTopk:
    def test_top1_and_deltas(self):
        # rows are NOT sorted by log-prob: the arg-max is never taken from column 0
        p_ids = np.array([[2, 1], [4, 3]])
        p_lp = np.array([lp(0.3, 0.6), lp(0.4, 0.5)])  # top-1: 1, 3
        q_ids = np.array([[1, 2], [3, 4]])
        q_lp = np.array([lp(0.6, 0.3), lp(0.44, 0.45)])  # top-1: 1, 4 (second row flips)
        c = metrics.compare_topk(p_ids, p_lp, q_ids, q_lp)
        assert c.positions == 2
        assert c.top1_agreement == 0.5
        assert c.topk_set_equal == 1.0
        d1 = max(abs(math.log(0.5) - math.log(0.44)), abs(math.log(0.4) - math.log(0.45)))
        assert c.max_abs_dlogprob == pytest.approx(d1, rel=1e-12)
        assert c.mean_abs_dlogprob == pytest.approx(d1 / 2, rel=1e-12)  # first row: shared tokens equal
        assert c.mean_rest_mass == pytest.approx((0.1 + 0.1) / 2, rel=1e-9)
        kl = metrics.coarse_kl(p_ids, p_lp, q_ids, q_lp)
        assert c.mean_kl == pytest.approx(kl.mean(), rel=1e-12) and c.max_kl == pytest.approx(kl.max(), rel=1e-12)
        assert kl[0] == pytest.approx(0.0, abs=1e-15) and kl[1] > 0

    def test_set_equality_and_quantile(self):
        # 100 positions: 99 identical, one with a different top-K set
        ids = np.tile(np.array([[1, 2]]), (100, 1))
        v = np.tile(np.array([lp(0.5, 0.3)]), (100, 1))
        q_ids, q_lp = ids.copy(), v.copy()
        q_ids[7] = [1, 5]
        q_lp[7] = lp(0.3, 0.5)
        c = metrics.compare_topk(ids, v, q_ids, q_lp)
        assert c.topk_set_equal == pytest.approx(0.99)
        assert c.top1_agreement == pytest.approx(0.99)
        kl = metrics.coarse_kl(ids, v, q_ids, q_lp)
        assert c.max_kl == pytest.approx(kl[7], rel=1e-12) and c.max_kl > 0
        assert c.p99_kl == pytest.approx(float(np.quantile(kl, 0.99)), rel=1e-12)
        assert 0 < c.p99_kl < c.max_kl

    def test_unsorted_rows(self):
        ids = np.array([[7, 3]])
        assert metrics.top1_ids(ids, np.array([lp(0.1, 0.8)]))[0] == 3

    def test_empty_is_refused(self):
        with pytest.raises(ValueError):
            metrics.compare_topk(np.zeros((0, 2), int), np.zeros((0, 2)), np.zeros((0, 2), int), np.zeros((0, 2)))


def test_full_kl_hand_computed():
    p = np.log(np.array([[0.5, 0.5]]))
    q = np.log(np.array([[0.9, 0.1]]))
    want = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert metrics.full_kl(p + 3.0, q - 1.0)[0] == pytest.approx(want, rel=1e-12)  # logits: shift-invariant


class TestWindows:
    def test_plan_scores_every_token_once(self):
        wins = metrics.plan_windows(20, 8, 3)
        scored = [i for w in wins for i in range(w.score_from, w.end)]
        assert scored == list(range(1, scored[-1] + 1))
        assert wins[0] == metrics.Window(0, 8, 1)
        assert wins[1] == metrics.Window(3, 11, 8)
        assert all(w.score_from - w.begin >= 8 - 3 for w in wins[1:])  # context ≥ W-S

    def test_logprob_start_len(self):
        assert metrics.Window(0, 8, 1).logprob_start_len == 0
        assert metrics.Window(3, 11, 8).logprob_start_len == 4

    def test_max_windows(self):
        assert len(metrics.plan_windows(1000, 8, 3, max_windows=4)) == 4

    def test_bad_arguments(self):
        with pytest.raises(ValueError):
            metrics.plan_windows(5, 8, 3)
        with pytest.raises(ValueError):
            metrics.plan_windows(50, 8, 8)

    def test_uniform_model_has_perplexity_vocab_size(self):
        v = 37
        ppl, n = metrics.windowed_perplexity(
            lambda toks: [0.0] + [-math.log(v)] * (len(toks) - 1), list(range(100)), 16, 4
        )
        assert ppl == pytest.approx(v, rel=1e-12)
        assert n == 99  # every token but the first, each once

    def test_only_last_stride_tokens_count(self):
        # log-prob depends on the position inside the window: early positions are "bad" (-5),
        # positions >= 4 are "good" (-1). W=8, S=4: after the first window only good positions are scored.
        def fn(toks):
            return [0.0] + [-5.0 if i < 4 else -1.0 for i in range(1, len(toks))]

        ppl, n = metrics.windowed_perplexity(fn, list(range(40)), 8, 4)
        # first window: positions 1..7 -> 3 bad + 4 good; 8 more windows x 4 good
        n_bad, n_good = 3, 4 + 8 * 4
        assert n == n_bad + n_good
        assert ppl == pytest.approx(math.exp((5 * n_bad + 1 * n_good) / n), rel=1e-12)


class TestPerplexity:
    def test_certain_model_is_one(self):
        assert metrics.perplexity([0.0, 0.0]) == 1.0

    def test_hand_computed(self):
        assert metrics.perplexity(lp(0.5, 0.25)) == pytest.approx(math.sqrt(8), rel=1e-12)

    def test_positive_logprobs_are_refused(self):
        with pytest.raises(ValueError):
            metrics.perplexity([0.5, -1.0])  # a "perplexity below 1" must never be reported

    def test_tiny_rounding_above_zero_is_clamped(self):
        # a log-prob a few ulps above 0 counts as 0, it does not lower the perplexity
        assert metrics.perplexity([1e-7]) == 1.0
        assert metrics.perplexity([1e-4, math.log(0.25)]) == pytest.approx(2.0, rel=1e-12)
        assert metrics.perplexity([1e-3]) == 1.0  # the largest excess that still counts as rounding

    def test_non_finite_and_empty(self):
        with pytest.raises(ValueError):
            metrics.perplexity([-math.inf])
        with pytest.raises(ValueError):
            metrics.perplexity([])

    def test_relative_delta(self):
        assert metrics.relative_delta(10.02, 10.0) == pytest.approx(0.002)
        with pytest.raises(ValueError):
            metrics.relative_delta(1.0, 0.0)


def test_rel_l2_and_cosine():
    ref = np.array([3.0, 4.0])
    assert metrics.rel_l2(np.array([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert metrics.cosine(np.array([6.0, 8.0]), ref) == pytest.approx(1.0)
    assert metrics.cosine(np.array([4.0, -3.0]), ref) == pytest.approx(0.0)
    assert metrics.rel_l2(np.zeros(2), np.zeros(2)) == 0.0


def test_throughput_helpers():
    assert metrics.median([3.0, 1.0, 2.0]) == 2.0
    assert metrics.tokens_per_second(100, 0.5) == 200.0
    with pytest.raises(ValueError):
        metrics.tokens_per_second(1, 0.0)


# ---- edges the mutation run asked for ---------------------------------------------------------------------------


def msg(text: str) -> str:
    """A `match=` pattern for exactly this message."""
    return "^" + re.escape(text) + "$"


class TestCoarseKLEdges:
    def test_shape_refusals(self):
        one, two = np.array([[1, 2]]), np.array([[1, 2], [1, 2]])
        v1, v2 = np.zeros((1, 2)), np.zeros((2, 2))
        for args in ((one, np.zeros((1, 3)), one, v1), (one, v1, one, np.zeros((1, 3))), (one, v1, two, v2)):
            with pytest.raises(ValueError, match=msg("ids and log-probs must be [N, K] with the same N")):
                metrics.coarse_kl(*args)
        assert metrics.coarse_kl(one, v1, one[:, :1], v1[:, :1]).shape == (1,)  # different K is fine

    def test_zero_probability_tokens_add_nothing_and_raise_no_warning(self):
        ids = np.array([[1, 2, 3]])
        p = np.array([lp(0.5, 0.3) + [-math.inf]])
        q = np.array([lp(0.4, 0.4) + [-math.inf]])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kl = metrics.coarse_kl(ids, p, ids, q)[0]
        assert kl == pytest.approx(0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4), rel=1e-12)

    def test_q_without_rest_mass(self):
        # Q puts all its mass on token 1, P only half: the rest cell compares .5 with (clamped) 0 -> large, finite
        kl = metrics.coarse_kl(np.array([[1]]), np.array([lp(0.5)]), np.array([[1]]), np.array([lp(1.0)]))[0]
        assert kl == pytest.approx(0.5 * math.log(0.5 / 1.0) + 0.5 * (math.log(0.5) - math.log(1e-12)), rel=1e-12)

    def test_p_top_k_mass_above_one_has_no_rest_cell(self):
        # rounding can push the listed mass over 1: no negative rest mass enters the sum
        kl = metrics.coarse_kl(
            np.array([[1, 2]]), np.array([lp(0.6, 0.5)]), np.array([[1, 2]]), np.array([lp(0.5, 0.3)])
        )
        assert kl[0] == pytest.approx(0.6 * math.log(0.6 / 0.5) + 0.5 * math.log(0.5 / 0.3), rel=1e-12)
        c = metrics.compare_topk(
            np.array([[1, 2]]), np.array([lp(0.6, 0.5)]), np.array([[1, 2]]), np.array([lp(0.5, 0.3)])
        )
        assert c.mean_rest_mass == 0.0


def test_top1_from_both_sides_unsorted():
    p_ids = np.array([[2, 1], [4, 3], [6, 5]])
    p_lp = np.array([lp(0.3, 0.6), lp(0.4, 0.5), lp(0.2, 0.7)])  # top-1: 1, 3, 5 (never column 0)
    q_ids = np.array([[1, 2], [3, 4], [5, 6]])
    q_lp = np.array([lp(0.6, 0.3), lp(0.44, 0.45), lp(0.8, 0.1)])  # top-1: 1, 4, 5
    assert metrics.compare_topk(p_ids, p_lp, q_ids, q_lp).top1_agreement == pytest.approx(2 / 3)
    assert metrics.compare_topk(q_ids, q_lp, p_ids, p_lp).top1_agreement == pytest.approx(2 / 3)


def test_empty_comparison_message():
    z = np.zeros((0, 2))
    with pytest.raises(ValueError, match=msg("no positions to compare")):
        metrics.compare_topk(z.astype(int), z, z.astype(int), z)


def test_full_kl_per_row():
    p = np.array([[0.0, 0.0], [5.0, -5.0], [100.0, 0.0]])  # rows of very different scale
    q = np.array([[1.0, 0.0], [0.0, 0.0], [100.0, 100.0]])

    def kl(a, b):
        pa, pb = np.exp(a - a.max()) / np.exp(a - a.max()).sum(), np.exp(b - b.max()) / np.exp(b - b.max()).sum()
        return float(np.sum(pa * np.log(pa / pb)))

    got = metrics.full_kl(p, q)
    assert got.shape == (3,)
    for i in range(3):
        assert got[i] == pytest.approx(kl(p[i], q[i]), rel=1e-12)


class TestWindowEdges:
    def test_smallest_valid_arguments(self):
        assert metrics.plan_windows(2, 2, 1) == [metrics.Window(0, 2, 1)]
        assert metrics.plan_windows(8, 8, 7) == [metrics.Window(0, 8, 1)]  # exactly one window of tokens
        assert metrics.plan_windows(4, 2, 1) == [
            metrics.Window(0, 2, 1),
            metrics.Window(1, 3, 2),
            metrics.Window(2, 4, 3),
        ]

    def test_windows_stop_at_the_end_of_the_corpus(self):
        wins = metrics.plan_windows(20, 8, 3)
        assert len(wins) == 5 and wins[-1] == metrics.Window(12, 20, 17)
        assert len(metrics.plan_windows(21, 8, 3)) == 5 and len(metrics.plan_windows(23, 8, 3)) == 6

    @pytest.mark.parametrize(("w", "s"), [(1, 1), (8, 0), (8, -1), (8, 8), (0, 0)])
    def test_bad_window_or_stride(self, w, s):
        text = f"need window >= 2 and 1 <= stride <= window-1 (got W={w}, S={s})"
        with pytest.raises(ValueError, match=msg(text)):
            metrics.plan_windows(50, w, s)

    def test_short_corpus(self):
        with pytest.raises(ValueError, match=msg("corpus has 7 tokens, fewer than one window of 8")):
            metrics.plan_windows(7, 8, 3)

    def test_windowed_perplexity_honours_max_windows(self):
        _, n = metrics.windowed_perplexity(lambda toks: [0.0] + [-1.0] * (len(toks) - 1), list(range(100)), 8, 3, 2)
        assert n == 7 + 3


class TestPrecisionAndMessages:
    """Every input is computed in float64, whatever dtype it arrives in."""

    rng = np.random.default_rng(1)
    x32 = rng.standard_normal(4096).astype(np.float32)
    r32 = (x32 + 0.1 * rng.standard_normal(4096)).astype(np.float32)

    def test_cosine_and_rel_l2_in_float64(self):
        x, r = self.x32.astype(np.float64), self.r32.astype(np.float64)
        want_cos = float(np.dot(x, r) / (np.linalg.norm(x) * np.linalg.norm(r)))
        want_l2 = float(np.linalg.norm(x - r) / np.linalg.norm(r))
        assert metrics.cosine(self.x32, r) == pytest.approx(want_cos, rel=1e-14)
        assert metrics.cosine(x, self.r32) == pytest.approx(want_cos, rel=1e-14)
        assert metrics.rel_l2(self.x32, r) == pytest.approx(want_l2, rel=1e-14)
        assert metrics.rel_l2(x, self.r32) == pytest.approx(want_l2, rel=1e-14)

    def test_median_and_perplexity_in_float64(self):
        a, b = np.float32(0.1), np.float32(0.2)
        assert metrics.median([a, b]) == (float(a) + float(b)) / 2
        lps = -np.abs(self.x32)
        want = math.exp(float(np.mean(-lps.astype(np.float64))))
        assert metrics.perplexity(lps) == pytest.approx(want, rel=1e-14)

    def test_zero_vectors(self):
        z, e1, e2 = np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0])
        assert metrics.cosine(z, z) == 1.0
        assert metrics.cosine(z, e1) == 0.0 and metrics.cosine(e1, z) == 0.0
        assert metrics.cosine(e1, e1) == 1.0 and metrics.cosine(e1, e2) == 0.0
        assert metrics.cosine(2 * e1, e1) == pytest.approx(1.0)
        assert metrics.rel_l2(e1, z) == math.inf and metrics.rel_l2(z, z) == 0.0
        assert metrics.rel_l2(e1, e1) == 0.0

    def test_messages(self):
        with pytest.raises(ValueError, match=msg("no scored tokens")):
            metrics.perplexity([])
        with pytest.raises(ValueError, match=msg("non-finite log-prob among scored tokens")):
            metrics.perplexity([-1.0, math.nan])
        with pytest.raises(ValueError, match=msg("log-prob 0.5 > 0: these are not log-probabilities")):
            metrics.perplexity([0.5, -1.0])
        with pytest.raises(ValueError, match=msg("reference is 0")):
            metrics.relative_delta(1.0, 0.0)
        with pytest.raises(ValueError, match=msg("no values")):
            metrics.median([])
        with pytest.raises(ValueError, match=msg("duration 0.0 <= 0")):
            metrics.tokens_per_second(1, 0.0)
        with pytest.raises(ValueError, match=msg("duration -1 <= 0")):
            metrics.tokens_per_second(1, -1)


def test_full_kl_rows_far_apart_in_scale():
    """Each row is shifted by its own maximum: a row far below another must not underflow to -inf."""
    p = np.array([[800.0, 0.0], [0.0, -1.0]])
    q = np.array([[799.0, 0.0], [-1.0, 0.0]])
    got = metrics.full_kl(p, q)
    a = np.array([1.0, math.exp(-1.0)]) / (1 + math.exp(-1.0))
    assert got[0] == pytest.approx(0.0, abs=1e-300) and np.isfinite(got).all()
    assert got[1] == pytest.approx(float(np.sum(a * np.log(a / a[::-1]))), rel=1e-12)


def test_coarse_kl_rest_cell_per_row():
    ids = np.array([[1, 2], [1, 2]])
    p = np.array([lp(0.5, 0.1), lp(0.7, 0.2)])  # rest .4 and .1
    q = np.array([lp(0.4, 0.1), lp(0.7, 0.1)])  # rest .5 and .2
    kl = metrics.coarse_kl(ids, p, ids, q)
    assert kl[0] == pytest.approx(0.5 * math.log(0.5 / 0.4) + 0.4 * math.log(0.4 / 0.5), rel=1e-12)
    assert kl[1] == pytest.approx(0.2 * math.log(0.2 / 0.1) + 0.1 * math.log(0.1 / 0.2), rel=1e-12)
