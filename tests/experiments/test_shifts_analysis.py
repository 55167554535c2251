"""The shifts experiment's win-rate logic on constructed cells, so that each of these mutations fails:
the CI win rate counted from the plain winners, the combined plain rate from the CI winners, EX and
IM swapped in the combined table, a max instead of a mean by shift type (issue 22)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lm_probes.data.pairs import Pair
from rmgap.experiments import shifts_analysis, shifts_report

N = 60


def _rewards(n_right: int, n: int = N) -> np.ndarray:
    """(n, 2) rewards with the first ``n_right`` pairs right (chosen above rejected)."""
    return np.array([[1.0, 0.0] if i < n_right else [0.0, 1.0] for i in range(n)])


SETS = {  # set → (shift type, EX-RM pairs right, IM-RM pairs right)
    "ultrafeedback": ("in_distribution", 40, 40),
    "ultrafeedback_paraphrased": ("token_level", 33, 30),  # plain: EX ahead; CI: a tie
    "ultrafeedback_french": ("token_level", 50, 20),  # EX by both rules
    "rewardbench_math": ("domain", 20, 50),  # IM by both rules
    "rewardbench_code": ("domain", 30, 30),  # a tie by both
}


def _analyze():
    cells = {0: {}}
    for obj, k in (("ex_rm", 1), ("im_rm", 2)):
        cells[0][obj] = {
            "rewards": {name: _rewards(v[k]) for name, v in SETS.items()},
            "where": {name: [f"{name}:{i}" for i in range(N)] for name in SETS},
            "tokens": {},
            "summary": {"model": {"model": "m"}, "seconds": 1.0},
        }
    seen = Pair(
        "p0", "c0", "r0"
    )  # a training pair; two evaluated math pairs share its prompt, one its chosen
    math = [Pair("p0", "c0", "r9"), Pair("p0", "c5", "r0"), Pair("p7", "c0", "r0")]
    data = SimpleNamespace(n_available={}, dropped_too_long={}, train=[seen], eval={"rewardbench_math": math})
    shift_map = {name: v[0] for name, v in SETS.items()}
    return shifts_analysis.analyze(
        cells, {0: data}, shift_map, ("ex_rm", "im_rm"), {}, n_boot=2000, tokenize=lambda t: t.split()
    )


def test_ci_and_plain_winners_and_their_rates_are_counted_from_their_own_rule():
    res = _analyze()
    assert (
        res["eval"]["ultrafeedback_paraphrased"]["winner"] == "tie"
        and res["eval"]["ultrafeedback_paraphrased"]["winner_plain"] == "ex_rm"
    )
    assert (
        res["eval"]["ultrafeedback_french"]["winner"] == "ex_rm"
        and res["eval"]["rewardbench_math"]["winner"] == "im_rm"
    )
    assert res["win_rate"]["token_level"] == pytest.approx({"ex_rm": 0.5, "im_rm": 0.0, "tie": 0.5, "n": 2})
    assert res["win_rate_plain"]["token_level"] == pytest.approx(
        {"ex_rm": 1.0, "im_rm": 0.0, "tie": 0.0, "n": 2}
    )
    assert res["win_rate"]["domain"] == pytest.approx({"ex_rm": 0.0, "im_rm": 0.5, "tie": 0.5, "n": 2})


def test_the_overlap_of_evaluated_and_training_pairs_is_counted():
    res = _analyze()
    assert res["eval"]["rewardbench_math"]["overlap_with_training"] == {
        "n": 3,
        "same_prompt": 2,
        "same_prompt_and_chosen": 1,
    }
    assert res["eval"]["rewardbench_code"]["overlap_with_training"]["n"] == 0
    assert shifts_report._seen(res["eval"]["rewardbench_math"]) == "2 / 1 of 3"


def test_mean_accuracy_by_shift_is_a_mean_not_a_max():
    res = _analyze()
    assert res["mean_accuracy"]["token_level"]["ex_rm"] == pytest.approx((33 + 50) / 2 / N)
    assert res["mean_accuracy"]["token_level"]["im_rm"] == pytest.approx((30 + 20) / 2 / N)
    assert res["mean_accuracy"]["domain"]["im_rm"] == pytest.approx((50 + 30) / 2 / N)


def test_combine_keeps_each_rule_and_each_model_in_its_place_and_splits_by_training_set():
    a = {**_analyze(), "config": {"train_set": "ultrafeedback"}}
    b = {**_analyze(), "config": {"train_set": "rewardmath"}}
    for name in (
        "ultrafeedback_paraphrased",
        "ultrafeedback_french",
    ):  # in run b the token-level cells go to the IM-RM by the CI rule
        b["eval"] = {**b["eval"], name: {**b["eval"][name], "winner": "im_rm", "winner_plain": "tie"}}
    comb = shifts_analysis.combine([a, b], ["a", "b"])
    assert comb["win_rate"]["token_level"] == pytest.approx(
        {"ex_rm": 0.25, "im_rm": 0.5, "tie": 0.25, "n": 4}
    )
    assert comb["win_rate_plain"]["token_level"] == pytest.approx(
        {"ex_rm": 0.5, "im_rm": 0.0, "tie": 0.5, "n": 4}
    )
    per = comb["by_train_set"]
    assert per["ultrafeedback"]["win_rate_plain"]["token_level"]["ex_rm"] == 1.0
    assert per["rewardmath"]["win_rate"]["token_level"]["im_rm"] == 1.0
    assert per["rewardmath"]["win_rate_plain"]["token_level"]["tie"] == 1.0
    french = next(c for c in comb["cells"] if c["run"] == "a" and c["set"] == "ultrafeedback_french")
    assert (french["ex_rm"], french["im_rm"]) == pytest.approx((50 / N, 20 / N))
    md = shifts_report.combined_markdown(comb)
    assert f"| a | ultrafeedback | ultrafeedback_french | token_level | {50 / N:.3f} | {20 / N:.3f} |" in md
    assert "| rewardmath | token_level | CI | 0.000 | 0.000 | 1.000 | 2 |" in md


def test_flips_are_counted_from_the_rewards_also_for_a_type_without_token_terms():
    """A flip is the second RM wrong and the EX-RM right on a token-level pair; for a reward type with
    no per-token terms (the hybrid) it is still counted, from the rewards alone, and the table calls
    the second RM what it is."""
    from rmgap.experiments.shifts_analysis import flips
    from rmgap.experiments.shifts_report import second_label

    where = ["s:1", "s:2", "s:3"]
    ex = {"rewards": {"para": np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])}, "where": {"para": where}}
    im = {"rewards": {"para": np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])}, "where": {"para": where}}
    rows = flips(ex, {**im, "tokens": {}}, {"para": "token_level"})
    assert [(r["where"], r["chosen_top"]) for r in rows] == [("s:1", None)]
    assert second_label({"mitigation": "hybrid"}) == "hybrid RM" and second_label({}) == "IM-RM"


def test_a_run_of_other_reward_types_is_reported_under_their_names():
    """``rmgap shifts --objectives ex_rm_mean,im_rm_no_ref`` (the paper's alternatives): the report
    reads the model from whichever RM ran and names both columns by their reward types."""
    from rmgap.experiments.shifts_report import first_label, second_label, table_markdown

    cfg = {"objectives": ["ex_rm_mean", "im_rm_no_ref"], "train_set": "ultrafeedback", "preset": "cpu",
           "seeds": [0], "command": "rmgap shifts --objectives ex_rm_mean,im_rm_no_ref"}  # fmt: skip
    assert (first_label(cfg), second_label(cfg)) == ("ex_rm_mean", "im_rm_no_ref")
    assert (first_label({}), second_label({})) == ("EX-RM", "IM-RM")
    win = {t: {"ex_rm": 0.0, "tie": 1.0, "im_rm": 0.0, "n": 1} for t in ("token_level", "domain")}
    res = {"config": cfg, "models": {"ex_rm_mean": {"model": "M"}, "im_rm_no_ref": {"model": "M"}},
           "eval": {"para": {"shift": "token_level", "ex_rm": {"accuracy": 0.6, "normalized_abs_margin": 1.0},
                             "im_rm": {"accuracy": 0.4, "normalized_abs_margin": 1.0}, "diff": 0.2,
                             "diff_ci95": [0.1, 0.3], "winner": "ex_rm", "winner_plain": "ex_rm",
                             "pairs_needed": 10, "n_pairs": 100, "n_available": 100, "dropped_too_long": 0}},
           "win_rate": win, "win_rate_plain": win, "mean_accuracy": {}, "rewrite_quality": {},
           "flips": {"n": {}, "im_rm_correct_before_rewrite": 0, "rows": []}}  # fmt: skip
    md = table_markdown(res)
    assert "| ex_rm_mean acc | im_rm_no_ref acc |" in md and "EX-RM" not in md
    assert "| ex_rm_mean | ex_rm_mean |" in md  # the winner columns name the reward type
    assert "rewards β ln π_θ (no reference)" in md and "π_ref" not in md  # its per-token terms
    assert "β(ln π_θ − ln π_ref)" in table_markdown({**res, "config": {**cfg, "objectives": None}})
