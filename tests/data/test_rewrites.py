"""lm_probes.data.rewrites: token overlap and rewrite quality."""

from __future__ import annotations

import pytest

from lm_probes.data.rewrites import rewrite_quality, token_overlap


def test_token_overlap_is_a_multiset_jaccard_index():
    assert token_overlap([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_overlap([1, 1, 2], [1, 2, 2]) == pytest.approx(2 / 4)
    assert token_overlap([1, 2], [3, 4]) == 0.0
    assert token_overlap([], []) == 0.0


def test_rewrite_quality_on_known_strings():
    orig = ["the cat sat on the warm mat today", "a dog ran across the wide green field"]
    same = rewrite_quality(orig, list(orig), str.split)
    assert same["token_overlap"] == 1.0 and same["chrf"] == pytest.approx(100.0)
    assert same["bleu"] == pytest.approx(100.0)
    assert same["length_ratio_chars"] == 1.0 and same["length_ratio_tokens"] == 1.0
    assert same["token_overlap_unrelated"] == pytest.approx(1 / 15)  # only "the" is shared
    other = rewrite_quality(orig, ["un chat", "zz zz zz zz zz zz zz zz zz zz zz zz zz zz zz zz"], str.split)
    assert other["token_overlap"] == 0.0 and other["bleu"] == pytest.approx(0.0, abs=1e-6)
    assert other["chrf"] < 15
    assert other["length_ratio_tokens"] == pytest.approx(18 / 16)
    with pytest.raises(ValueError, match="need"):
        rewrite_quality(orig[:1], orig[:1], str.split)


def test_the_unrelated_floor_split_by_whether_the_other_response_answers_the_same_prompt():
    # pairs (chosen, rejected): each pair's two responses share 1 of 3 words, different pairs none
    orig = ["a b c", "a d e", "x y z", "x v w"]
    q = rewrite_quality(orig, list(orig), str.split, paired=True)
    assert q["token_overlap_unrelated_same_prompt"] == pytest.approx(1 / 5)  # a|b c d e, x|y z v w
    assert q["token_overlap_unrelated_other_prompt"] == 0.0  # "a d e" vs "x y z", "x v w" vs "a b c"
    assert q["token_overlap_unrelated"] == pytest.approx(1 / 10)  # their mean: the mixed floor
    assert "token_overlap_unrelated_same_prompt" not in rewrite_quality(orig, orig, str.split)
    with pytest.raises(ValueError, match="whole pairs"):
        rewrite_quality(orig[:3], orig[:3], str.split, paired=True)
