"""rmgap.flags: unnamed evaluation sets keep distinct names."""

from __future__ import annotations


def test_unnamed_evaluation_sets_keep_distinct_names():
    from rmgap.flags import named_set

    assert named_set("rewardmath/test", "--eval-set") == ("rewardmath_test", "rewardmath/test")
    assert named_set("ultrafeedback/test", "--eval-set") == ("ultrafeedback_test", "ultrafeedback/test")
    assert named_set("data/test.jsonl", "--eval") == ("test", "data/test.jsonl")
    assert named_set("fr=ultrafeedback_french/test", "--eval-set") == ("fr", "ultrafeedback_french/test")
