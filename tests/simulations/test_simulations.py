"""Each simulation's --quick run, its summary checked against the theorem it illustrates."""

import json

import numpy as np
import pytest

from simulations import generation_verification, single_token, token_overlap


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single_token")
    return single_token.main(["--quick", "--out-dir", str(out)]), out


@pytest.fixture(scope="module")
def overlap(tmp_path_factory):
    out = tmp_path_factory.mktemp("token_overlap")
    return token_overlap.main(["--quick", "--out-dir", str(out)]), out


def test_single_token_writes_figure_and_json_with_required_keys(single):
    _, out = single
    assert (out / "single_token.png").stat().st_size > 10_000
    on_disk = json.loads((out / "single_token.json").read_text())
    for section, key in [
        ("ex", "unseen_accuracy"),
        ("im", "unseen_accuracy_half_ties"),
        ("im", "unseen_tie_rate"),
        ("im", "unseen_max_abs_reward_gap"),
        ("ex", "cosine_to_max_margin"),
        ("ex", "max_margin_predicted_unseen_accuracy"),
        ("ex", "train_accuracy"),
        ("im", "train_accuracy"),
    ]:
        assert key in on_disk[section], (section, key)
    assert {"signal", "ex_unseen_accuracy", "im_unseen_accuracy_half_ties"} <= set(on_disk["sweep"][0])
    assert on_disk["config"]["seed"] == 0


def test_im_rm_ties_exactly_on_unseen_tokens(single):
    s, _ = single
    assert s["im"]["train_accuracy"] == 1.0
    assert s["im"]["unseen_max_abs_reward_gap"] == 0.0  # exactly: the rows never move
    assert s["im"]["unseen_tie_rate"] == 1.0
    assert s["im"]["unseen_accuracy_half_ties"] == 0.5
    assert s["im"]["unseen_token_rows_unchanged"]
    assert all(r["im_unseen_accuracy_half_ties"] == 0.5 for r in s["sweep"])


def test_ex_rm_follows_max_margin_and_meaning(single):
    s, _ = single
    assert s["ex"]["train_accuracy"] == 1.0
    assert s["ex"]["cosine_to_max_margin"] > 0.95
    # converged, not merely started: the margin reached is near the maximum, and the direction moved
    # towards u* (the first step's mean-difference direction alone has cosine 0.96 and margin 0.62×)
    assert s["ex"]["achieved_margin"] > 0.9 * s["ex"]["max_margin"]
    assert s["curve"][-1]["cosine_to_max_margin"] > s["curve"][0]["cosine_to_max_margin"] + 0.02
    assert abs(s["ex"]["unseen_accuracy"] - s["ex"]["max_margin_predicted_unseen_accuracy"]) < 0.1
    sweep = {r["signal"]: r for r in s["sweep"]}
    assert abs(sweep[0.0]["ex_unseen_accuracy"] - 0.5) < 0.2  # no meaning in the states: chance
    assert sweep[max(sweep)]["ex_unseen_accuracy"] > 0.95  # strong meaning: generalises


def test_token_overlap_predictions_match_the_actual_step(overlap):
    s, out = overlap
    assert (out / "token_overlap.png").exists()
    assert s["pearson_pred_vs_obs"]["ex"] > 0.999999
    assert s["pearson_pred_vs_obs"]["ex_mean"] > 0.999999
    assert s["pearson_pred_vs_obs"]["im"] > 0.9999
    # the EX-RM's observation is a real autograd step on u, re-scored: r_EX is linear in u, so the
    # first-order prediction must equal it to rounding (a wrong g or sign in the formula fails here)
    for key in ("ex", "ex_mean"):
        pred = np.array([p[f"{key}_pred"] for p in s["points"]])
        obs = np.array([p[f"{key}_obs"] for p in s["points"]])
        np.testing.assert_allclose(pred, obs, rtol=1e-9, atol=1e-15)
    errs = [s["im_relative_error_by_lr"][k] for k in ("0.01", "0.001")]
    assert errs[1] < 1e-3 and 7 < errs[0] / errs[1] < 13  # O(η)


def test_im_rm_tracks_tokens_and_ex_rm_tracks_meaning(overlap):
    s, _ = overlap
    pa = s["paraphrase"]
    assert pa["ex_relative_change"] > 0.3 and pa["ex_fraction_wrong_sign"] == 0.0
    assert (
        pa["im_relative_change"] < 0.05 and pa["im_fraction_wrong_sign"] > 0.5
    )  # paraphrases go the wrong way
    im = {(r["group"], r["overlap"]): r["relative_change"] for r in s["overlap_curve"]["im"]}
    ex = {(r["group"], r["overlap"]): r["relative_change"] for r in s["overlap_curve"]["ex"]}
    # IM-RM: synonyms buy nothing over unrelated tokens; EX-RM: they keep most of the change
    assert abs(im[("synonyms", 0.0)] - im[("unrelated", 0.0)]) < 0.3
    assert ex[("synonyms", 0.0)] - ex[("unrelated", 0.0)] > 0.4
    closest = max(s["tau_sweep"], key=lambda r: r["hidden_cos"])
    assert closest["ex_relative_change"] > 0.5 and closest["im_relative_change"] < 0


def test_generation_verification_verifies_without_generating(tmp_path):
    s = generation_verification.main(["--quick", "--out-dir", str(tmp_path)])
    assert (tmp_path / "generation_verification.png").exists()
    assert s["ex"]["test_accuracy"] > 0.85 and s["im"]["test_accuracy"] > 0.85  # both verify
    assert s["im"]["sampled_cycle_rate"] < 0.01 and s["im"]["greedy_cycle_rate"] < 0.05  # neither generates
    assert s["im"]["mean_correct_mass"] < 0.01
    # Theorem 1's construction: exact verifier, generation mass τ(p) ≤ e·p
    assert s["tilt"]["mean_correct_mass"] <= s["tilt"]["mean_bound"] * (1 + 1e-9)
    assert s["tilt"]["mean_correct_mass"] < 0.01


def test_is_cycle_against_brute_force():
    import numpy as np

    from theory.graphs import hamiltonian_cycles, is_hamiltonian_cycle, planted_cycle_graphs

    rng = np.random.default_rng(0)
    adj = planted_cycle_graphs(5, 0.3, 3, rng)
    seqs = rng.integers(0, 5, (200, 5))
    seqs[:50] = [rng.permutation(5) for _ in range(50)]
    for a in adj:
        got = is_hamiltonian_cycle(a, seqs)
        want = [len(set(q)) == 5 and all(a[q[i], q[(i + 1) % 5]] for i in range(5)) for q in seqs]
        assert got.tolist() == want
        # every cycle appears once per start and direction: a multiple of 2n sequences, each a cycle
        cycles = hamiltonian_cycles(a)
        assert len(cycles) > 0 and len(cycles) % 10 == 0 and is_hamiltonian_cycle(a, cycles).all()
        assert np.all(a == a.T) and not np.any(np.diag(a))
