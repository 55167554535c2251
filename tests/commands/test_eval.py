"""rmgap eval: existing LMs scored as implicit RMs with no training, against TRL's definition computed
by hand (β·Σ_k [ln π(y_k|x, y_<k) − ln π_ref(y_k|x, y_<k)], what DPOTrainer logs as rewards/chosen),
its own reference giving exactly 0, the names and files, and the refusals."""

from __future__ import annotations

import json

import pytest
import torch

from lm_probes.common import read_jsonl_rows
from lm_probes.data.pairs import encode_pairs
from lm_probes.lm.encoding import pad_id_of
from lm_probes.lm.scoring import score
from rmgap.commands import eval as eval_cmd
from tests.conftest import TRAIN, make_tiny_lm, run_rmgap


@pytest.fixture
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n" for p in TRAIN
        )
    )
    return path


def _by_hand(policy, ref, beta, reference=True):
    """TRL's implicit reward, one response at a time, through the single-sequence pass."""
    out = []
    for enc in encode_pairs(policy.tokenizer, TRAIN).encodings:
        r = []
        for e in enc:
            with torch.no_grad():
                lp = score(policy.model, [e], pad_id_of(policy.tokenizer), mode="single").logprob.item()
                lr = score(ref.model, [e], pad_id_of(ref.tokenizer), mode="single").logprob.item()
            r.append(beta * (lp - (lr if reference else 0.0)))
        out.append(r)
    return out


@pytest.mark.parametrize("reward", ["im_rm", "im_rm_no_ref"])
def test_eval_gives_trls_implicit_reward_per_example(tmp_path, pairs_file, reward):
    policy, ref = make_tiny_lm(seed=1), make_tiny_lm(seed=0)
    argv = ["--data", f"mine={pairs_file}", "--reward", reward, "--beta", "0.1", "--out", str(tmp_path / "o")]
    res = eval_cmd.main([*argv, "--ref", "x"], lm=policy, ref_lm=ref)
    rows = read_jsonl_rows(tmp_path / "o" / "rewards_mine.jsonl.gz")
    want = _by_hand(policy, ref, 0.1, reference=reward == "im_rm")
    got = [x for r in rows for x in (r["reward_chosen"], r["reward_rejected"])]
    assert got == pytest.approx([x for w in want for x in w], abs=1e-9) and len(rows) == len(want)
    m = res["sets"]["mine"]["metrics"]
    strict = sum(c > j for c, j in want) / len(want)
    assert m["rewards/accuracies"] == strict and m["n"] == 4 and res["beta"] == 0.1
    lo, hi = m["ci95"]["rmgap/accuracy_half_ties"]
    assert lo <= m["rmgap/accuracy_half_ties"] <= hi
    rb = json.loads((tmp_path / "o" / "rewardbench_results.json").read_text())
    assert rb["mine"] == strict and rb["model_type"] == ("DPO" if reward == "im_rm" else "DPO Ref. Free")
    assert json.loads((tmp_path / "o" / "results.json").read_text())["sets"]["mine"]["n"] == 4


def test_a_model_is_its_own_reference_every_reward_exactly_zero(tmp_path, pairs_file):
    res = eval_cmd.main(
        ["--data", str(pairs_file), "--ref", "x", "--out", str(tmp_path / "o"), "--transform", "synonyms:1"],
        lm=make_tiny_lm(seed=3),
        ref_lm=make_tiny_lm(seed=3),
    )
    for name in ("pairs", "pairs__synonyms_1"):
        m = res["sets"][name]["metrics"]
        assert (
            m["rmgap/tie_rate"] == 1.0
            and m["rewards/accuracies"] == 0.0
            and m["rmgap/accuracy_half_ties"] == 0.5
        )


def test_refusals_are_one_line(tmp_path, pairs_file):
    base = ("eval", "--data", str(pairs_file), "--out", str(tmp_path / "o"))
    for extra, message in [
        (("--reward", "ex_rm"), "smollm2 is a language model"),
        (("--reward", "ex_rm_mean"), "invalid choice: 'ex_rm_mean'"),
        (("--reward", "im_rm"), "divides by a reference model: give --ref"),
        (("--data", str(pairs_file)), "already another set's"),
    ]:
        code, _, err = run_rmgap(*base, *extra)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def _outcomes(folder, name="mine"):
    rows = read_jsonl_rows(folder / f"rewards_{name}.jsonl.gz")
    return {
        r["where"]: 1.0
        if r["reward_chosen"] > r["reward_rejected"]
        else 0.5
        if r["reward_chosen"] == r["reward_rejected"]
        else 0.0
        for r in rows
    }


def test_compare_two_runs_pair_by_pair_with_the_shifts_rule(tmp_path, pairs_file):
    ref = make_tiny_lm(seed=0)
    for run, seed in (("a", 1), ("b", 3)):
        argv = ["--data", f"mine={pairs_file}", "--ref", "x", "--out", str(tmp_path / run)]
        eval_cmd.main(argv, lm=make_tiny_lm(seed=seed), ref_lm=ref)
    res = eval_cmd.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")])
    c = res["sets"]["mine"]
    oa, ob = _outcomes(tmp_path / "a"), _outcomes(tmp_path / "b")
    diff = sum(oa[w] - ob[w] for w in oa) / len(oa)
    lo, hi = c["diff_ci95"]
    assert c["diff_accuracy_ties_half"] == pytest.approx(diff) and lo <= diff <= hi and c["n_pairs"] == 4
    assert c["a"]["accuracy_ties_half"] - c["b"]["accuracy_ties_half"] == pytest.approx(diff)
    assert c["winner"] == ("a" if lo > 0 else "b" if hi < 0 else "tie")
    ra, rb = ({r["where"]: r for r in read_jsonl_rows(tmp_path / x / "rewards_mine.jsonl.gz")} for x in "ab")
    big = max(abs(ra[w][k] - rb[w][k]) for w in ra for k in ("reward_chosen", "reward_rejected"))
    assert c["max_abs_reward_diff"] == pytest.approx(big) and big > 0
    assert json.loads((tmp_path / "c" / "comparison.json").read_text())["sets"]["mine"] == c
    # sets named apart: FOLDER:SET on both sides
    argv = ["--data", f"other={pairs_file}", "--ref", "x", "--out", str(tmp_path / "o")]
    eval_cmd.main(argv, lm=make_tiny_lm(seed=3), ref_lm=ref)
    spec = [f"{tmp_path / 'a'}:mine", f"{tmp_path / 'o'}:other"]
    named = eval_cmd.main(["--compare", *spec, "--out", str(tmp_path / "e")])["sets"]["mine~other"]
    assert named["diff_ci95"] == c["diff_ci95"] and named["sets"] == ["mine", "other"]
    code, _, err = run_rmgap(
        "eval", "--compare", *(str(tmp_path / x) for x in "ao"), "--out", str(tmp_path / "f")
    )
    assert code == 2 and "share no evaluation set; name one of each" in err
    code, _, err = run_rmgap(
        "eval", "--compare", str(tmp_path / "a"), str(tmp_path), "--out", str(tmp_path / "d")
    )
    assert code == 2 and "not a finished rmgap eval or training folder" in err and len(err.splitlines()) == 1


def test_a_chat_template_file_renders_the_prompts(tmp_path, pairs_file):
    runs = {}
    own = make_tiny_lm().tokenizer.chat_template
    other = "{% for m in messages %}<assistant> {{ m['content'] }} {% endfor %}<user> "
    for name, text in (("default", None), ("same", own), ("other", other)):
        argv = ["--data", f"mine={pairs_file}", "--ref", "x", "--out", str(tmp_path / name)]
        if text is not None:
            (tmp_path / f"{name}.jinja").write_text(text)
            argv += ["--chat-template", str(tmp_path / f"{name}.jinja")]
        res = eval_cmd.main(argv, lm=make_tiny_lm(seed=1), ref_lm=make_tiny_lm(seed=0))
        runs[name] = ((tmp_path / name / "rewards_mine.jsonl.gz").read_bytes(), res["chat_template"])
    assert runs["default"][1] == "tokenizer" and runs["other"][1].startswith(str(tmp_path / "other.jinja"))
    assert runs["same"][0] == runs["default"][0] and runs["other"][0] != runs["default"][0]
