"""Pure math of the verification (numpy only): testable on CPU against hand-computed values.

Logit comparisons use what SGLang returns per prompt position: the top-K log-probabilities of the
baseline run (set A) and of the sage run (set B). The full-vocabulary KL cannot be formed from
those, so :func:`coarse_kl` computes the KL between the two distributions *coarse-grained* to the
cells ``{t}`` for every token ``t`` in A ∩ B plus one cell holding all other tokens. Both masses
of every cell are known exactly (the rest cell is ``1 - sum`` of the known ones), so nothing is
imputed; and by the data-processing inequality the coarse KL is a lower bound of the full KL that
becomes exact as the top-K sets cover the mass. The drift check (HF model, full logits) reports the
full-vocabulary KL next to it, which shows how tight the bound is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


def coarse_kl(p_ids: np.ndarray, p_lp: np.ndarray, q_ids: np.ndarray, q_lp: np.ndarray) -> np.ndarray:
    """Per-position KL(P‖Q) over the cells {A∩B tokens} + {rest}; inputs are [N, K] (ids, log-probs).

    Rows may hold different K for P and Q. Log-probs must be natural-log probabilities.
    """
    p_ids, q_ids = np.atleast_2d(p_ids), np.atleast_2d(q_ids)
    p_lp, q_lp = np.atleast_2d(p_lp).astype(np.float64), np.atleast_2d(q_lp).astype(np.float64)
    if p_ids.shape != p_lp.shape or q_ids.shape != q_lp.shape or p_ids.shape[0] != q_ids.shape[0]:
        raise ValueError("ids and log-probs must be [N, K] with the same N")
    eq = p_ids[:, :, None] == q_ids[:, None, :]  # [N, Kp, Kq]
    shared = eq.any(axis=2)  # baseline entries also in sage's top-K
    q_at_p = np.where(eq, q_lp[:, None, :], 0.0).sum(axis=2)  # sage log-prob of each shared entry
    p = np.where(shared, np.exp(p_lp), 0.0)
    q = np.where(shared, np.exp(q_at_p), 0.0)
    # a token P gives probability 0 (log-prob -inf) adds nothing (0·log 0 = 0), not 0·(-inf) = nan
    with np.errstate(invalid="ignore"):
        cell = np.where(shared & (p > 0), p * (p_lp - q_at_p), 0.0).sum(axis=1)
    p_rest = np.maximum(1.0 - p.sum(axis=1), 0.0)  # top-K mass a rounding hair above 1: no rest
    q_rest = np.maximum(1.0 - q.sum(axis=1), _EPS)  # Q leaves no mass where P has some: large, not inf
    rest = p_rest * (np.log(np.maximum(p_rest, _EPS)) - np.log(q_rest))
    # tiny negative values can only come from rounding: KL >= 0
    return np.maximum(cell + rest, 0.0)


def top1_ids(ids: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """The arg-max token of each row (does not assume the rows are sorted)."""
    ids, lp = np.atleast_2d(ids), np.atleast_2d(lp)
    return ids[np.arange(ids.shape[0]), np.argmax(lp, axis=1)]


def shared_abs_delta(p_ids: np.ndarray, p_lp: np.ndarray, q_ids: np.ndarray, q_lp: np.ndarray) -> np.ndarray:
    """Per-position max |Δ log-prob| over the tokens in both top-K sets (0 where none is shared).

    Log-probs are logits shifted by one constant per position (the log-partition), so this is the
    logit difference up to that shift: it is what sampling sees.
    """
    p_ids, q_ids = np.atleast_2d(p_ids), np.atleast_2d(q_ids)
    p_lp, q_lp = np.atleast_2d(p_lp).astype(np.float64), np.atleast_2d(q_lp).astype(np.float64)
    eq = p_ids[:, :, None] == q_ids[:, None, :]
    diff = np.abs(p_lp[:, :, None] - q_lp[:, None, :])
    return np.where(eq, diff, 0.0).max(axis=(1, 2))


@dataclass
class LogitComparison:
    """Aggregates of a teacher-forced comparison over N positions."""

    positions: int
    mean_kl: float
    p99_kl: float
    max_kl: float
    top1_agreement: float
    max_abs_dlogprob: float
    mean_abs_dlogprob: float
    topk_set_equal: float
    mean_rest_mass: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def compare_topk(p_ids: np.ndarray, p_lp: np.ndarray, q_ids: np.ndarray, q_lp: np.ndarray) -> LogitComparison:
    """KL (coarse, see module doc), top-1 agreement and Δlog-prob over all positions."""
    p_ids, q_ids = np.atleast_2d(p_ids), np.atleast_2d(q_ids)
    n = p_ids.shape[0]
    if n == 0:
        raise ValueError("no positions to compare")
    kl = coarse_kl(p_ids, p_lp, q_ids, q_lp)
    d = shared_abs_delta(p_ids, p_lp, q_ids, q_lp)
    agree = top1_ids(p_ids, p_lp) == top1_ids(q_ids, q_lp)
    same_set = np.array([set(a.tolist()) == set(b.tolist()) for a, b in zip(p_ids, q_ids)])
    rest = np.maximum(1.0 - np.exp(np.atleast_2d(p_lp).astype(np.float64)).sum(axis=1), 0.0)
    return LogitComparison(
        positions=int(n),
        mean_kl=float(kl.mean()),
        p99_kl=float(np.quantile(kl, 0.99)),
        max_kl=float(kl.max()),
        top1_agreement=float(agree.mean()),
        max_abs_dlogprob=float(d.max()),
        mean_abs_dlogprob=float(d.mean()),
        topk_set_equal=float(same_set.mean()),
        mean_rest_mass=float(rest.mean()),
    )


def full_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """Per-row KL(softmax(p)‖softmax(q)) over the full vocabulary (drift check, HF logits)."""
    p_logits = np.atleast_2d(p_logits).astype(np.float64)
    q_logits = np.atleast_2d(q_logits).astype(np.float64)
    lp = p_logits - _logsumexp(p_logits)
    lq = q_logits - _logsumexp(q_logits)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(axis=1), 0.0)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))


# ---- perplexity ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One sliding-window request: tokens [begin, end) are sent, [score_from, end) are scored."""

    begin: int
    end: int
    score_from: int

    @property
    def logprob_start_len(self) -> int:
        """SGLang's ``logprob_start_len`` so that the returned entries cover ``score_from``.

        SGLang returns the input log-probs of positions ``logprob_start_len .. len-1`` relative to
        the request, with the entry of position ``logprob_start_len`` always ``None`` (it has no
        prediction of its own in the returned slice), so we start one position earlier.
        """
        return self.score_from - self.begin - 1


def plan_windows(n_tokens: int, window: int, stride: int, max_windows: int | None = None) -> list[Window]:
    """Sliding windows over a token stream where every scored token is scored exactly once.

    The first window scores positions 1..W-1 (position 0 has no context); window k>0 starts at
    k*S and scores only its last S tokens, so each of them sees at least W-S tokens of context.
    """
    if window < 2 or stride < 1 or stride > window - 1:
        raise ValueError(f"need window >= 2 and 1 <= stride <= window-1 (got W={window}, S={stride})")
    if n_tokens < window:
        raise ValueError(f"corpus has {n_tokens} tokens, fewer than one window of {window}")
    out = [Window(0, window, 1)]
    k = 1
    while k * stride + window <= n_tokens and (max_windows is None or len(out) < max_windows):
        begin = k * stride
        out.append(Window(begin, begin + window, begin + window - stride))
        k += 1
    return out


def perplexity(token_logprobs: Sequence[float] | np.ndarray) -> float:
    """exp(mean NLL) of scored tokens; ≥ 1 by construction (every log-prob ≤ 0), asserted."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("no scored tokens")
    if not np.all(np.isfinite(lp)):
        raise ValueError("non-finite log-prob among scored tokens")
    # log-probs can exceed 0 only by rounding of a probability of ~1: clamp those few ulps
    if lp.max() > 1e-3:
        raise ValueError(f"log-prob {lp.max():.4g} > 0: these are not log-probabilities")
    nll = -np.minimum(lp, 0.0)
    ppl = math.exp(float(nll.mean()))
    assert ppl >= 1.0, f"perplexity {ppl} < 1 is impossible"
    return ppl


def windowed_perplexity(logprob_fn, tokens: Sequence[int], window: int, stride: int,
                        max_windows: int | None = None) -> tuple[float, int]:
    """Reference implementation over a callable (used by the tests and as the spec of the GPU path).

    ``logprob_fn(tokens_of_window) -> list`` gives, for every position i ≥ 1 of the window, the
    log-prob of token i given tokens 0..i-1 of the window (entry 0 ignored). Returns (ppl, n).
    """
    scored: list[float] = []
    for w in plan_windows(len(tokens), window, stride, max_windows):
        lps = logprob_fn(list(tokens[w.begin:w.end]))
        scored.extend(lps[w.score_from - w.begin:])
    return perplexity(scored), len(scored)


def relative_delta(value: float, reference: float) -> float:
    """(value - reference) / reference."""
    if reference == 0:
        raise ValueError("reference is 0")
    return (value - reference) / reference


# ---- activation drift ----------------------------------------------------------------------


def rel_l2(x: np.ndarray, ref: np.ndarray) -> float:
    """‖x - ref‖₂ / ‖ref‖₂ over all elements."""
    x = np.asarray(x, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    denom = np.linalg.norm(ref)
    if denom == 0:
        return 0.0 if np.linalg.norm(x) == 0 else math.inf
    return float(np.linalg.norm(x - ref) / denom)


def cosine(x: np.ndarray, ref: np.ndarray) -> float:
    """Cosine similarity over all elements (1.0 for two zero tensors)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    nx, nr = np.linalg.norm(x), np.linalg.norm(ref)
    if nx == 0 and nr == 0:
        return 1.0
    if nx == 0 or nr == 0:
        return 0.0
    return float(np.dot(x, ref) / (nx * nr))


# ---- throughput ----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Median of a non-empty list (robust summary of repeated timings)."""
    if not values:
        raise ValueError("no values")
    return float(np.median(np.asarray(values, dtype=np.float64)))


def tokens_per_second(tokens: int, seconds: float) -> float:
    """tokens / seconds, refusing a zero/negative duration rather than reporting infinity."""
    if seconds <= 0:
        raise ValueError(f"duration {seconds} <= 0")
    return tokens / seconds
