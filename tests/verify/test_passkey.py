"""Passkey prompt construction and scoring."""

from __future__ import annotations

import pytest

from sglang_sage.verify import passkey


@pytest.mark.parametrize(("answer", "hit"), [
    (" 68241.", True),
    ("The pass key is 68241. Remember", True),
    ("68241", True),
    ("682410", False),  # a longer number is a wrong answer
    ("6824", False),
    ("6 8 2 4 1", False),
    ("", False),
    ("no digits", False),
    ("12345 and then 68241", True),
])
def test_score_answer(answer, hit):
    assert passkey.score_answer(answer, "68241") is hit


def test_score_answer_refuses_non_digit_key():
    with pytest.raises(ValueError):
        passkey.score_answer("abc", "12a45")


def test_keys_are_deterministic_five_digit():
    a, b = passkey.make_keys(10, seed=7), passkey.make_keys(10, seed=7)
    assert a == b
    assert all(len(k) == 5 and k[0] != "0" for k in a)


def test_build_prompt_places_needle_at_depth():
    p = passkey.build_prompt(10, 0.3, "55555")
    body = p[len(passkey.INTRO):]
    assert body.index(passkey.NEEDLE.format(key="55555")) == len(passkey.FILLER) * 3
    assert p.endswith(passkey.QUESTION)
    assert p.count(passkey.FILLER) == 10
    with pytest.raises(ValueError):
        passkey.build_prompt(10, 1.5, "1")


def count_words(s: str) -> int:
    return len(s.split())


def test_fit_filler_respects_target():
    for target in (100, 500, 2000):
        n = passkey.fit_filler(count_words, target)
        assert count_words(passkey.build_prompt(n, 0.5, "12345")) <= target
        assert count_words(passkey.build_prompt(n + 2, 0.5, "12345")) > target * 0.97


def test_make_trials_and_accuracy():
    trials = passkey.make_trials(count_words, {"short": 100, "long": 400}, (0.1, 0.9), 2)
    assert len(trials) == 8
    assert {t.bucket for t in trials} == {"short", "long"}
    assert all(t.key in t.text for t in trials)
    assert len({t.key for t in trials}) == 8
    assert passkey.accuracy([True, False, True, True]) == 0.75
    with pytest.raises(ValueError):
        passkey.accuracy([])
