"""Metric math against hand-computed values (CPU, numpy only)."""

from __future__ import annotations

import math

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
        kl = metrics.coarse_kl(np.array([[1, 2]]), np.array([lp(0.5, 0.3)]),
                               np.array([[2, 1]]), np.array([lp(0.4, 0.4)]))[0]
        want = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4) + 0.0  # rest cells equal
        assert kl == pytest.approx(want, rel=1e-12)

    def test_token_missing_from_sage_topk_goes_to_rest_cell(self):
        # P top-2 {1:.6, 2:.3}; Q top-2 {1:.5, 3:.3}: only token 1 is a shared cell.
        # cells: {1}: .6 vs .5 ; rest: .4 vs .5
        kl = metrics.coarse_kl(np.array([[1, 2]]), np.array([lp(0.6, 0.3)]),
                               np.array([[1, 3]]), np.array([lp(0.5, 0.3)]))[0]
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
        p_ids = np.array([[1, 2], [3, 4]])
        p_lp = np.array([lp(0.6, 0.3), lp(0.5, 0.4)])
        q_ids = np.array([[1, 2], [4, 3]])  # second row: arg-max flips to 4
        q_lp = np.array([lp(0.6, 0.3), lp(0.45, 0.44)])
        c = metrics.compare_topk(p_ids, p_lp, q_ids, q_lp)
        assert c.positions == 2
        assert c.top1_agreement == 0.5
        assert c.topk_set_equal == 1.0
        assert c.max_abs_dlogprob == pytest.approx(abs(math.log(0.5) - math.log(0.44)), rel=1e-12)
        assert c.mean_rest_mass == pytest.approx((0.1 + 0.1) / 2, rel=1e-9)

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
        ppl, n = metrics.windowed_perplexity(lambda toks: [0.0] + [-math.log(v)] * (len(toks) - 1),
                                             list(range(100)), 16, 4)
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
        assert metrics.perplexity([1e-7, -1e-7]) >= 1.0

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
