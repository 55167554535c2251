"""rmgap robustness on a tiny model: the split by prompt, the outputs and results.json keys the issue
names, the evaluation stage against an independent recomputation (trained weights from the
checkpoint, the reference from the untrained model), the gap statistic by hand, and the run folder's
protection (no overwrite, no resume into another run), and a cell whose checkpoint is gone trained
again only to reproduce what it recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lm_probes.common import read_jsonl_rows
from lm_probes.data.pairs import Pair, read_jsonl
from lm_probes.lm.scoring import score
from lm_probes.rm.trainer import encode_for_training
from rmgap.experiments import robustness, robustness_analysis
from rmgap.experiments.robustness_cells import cell_config, cell_dir
from rmgap.experiments.robustness_eval import load_trained
from tests.conftest import WORDS, make_tiny_lm

EXTRA = ("it", "it's", "isn't", "not", "calculate", "compute", "therefore", "thus")


def _factory():
    return make_tiny_lm(max_positions=128, extra_words=EXTRA)


@pytest.fixture
def train_file(tmp_path):
    rows = []
    for k, w in enumerate(WORDS[:10]):
        prompt = f"is the following statement something you would say ? {w}"
        good = f"yes , it is {w} therefore i calculate kindness matters"
        for j, bad in enumerate(("no it is not", "never , it is not really", "nope")):
            rows.append({"prompt": prompt, "chosen": good, "rejected": f"{bad} {w} {WORDS[(k + j) % 10]}"})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(out, train_file, *extra):
    argv = ["--train-set", str(train_file), "--quick", "--seeds", "0,1,2", "--out", str(out), "--quiet"]
    return robustness.main([*argv, *extra], lm_factory=_factory)


def test_robustness_end_to_end(tmp_path, train_file):
    out = tmp_path / "run"
    res = _run(out, train_file)
    split = res["split"]
    assert split["test_prompts_seen_in_training"] == 0 and split["n_train"] == 6 and split["n_test"] == 6
    assert res["seeds"] == [0, 1, 2] and res["config"]["preset"] == "quick"
    t = res["transforms"]
    assert set(t) == {"contractions", "synonyms"} and set(t["synonyms"]) == {"0", "0.5", "1"}
    assert t["contractions"]["0"]["set"] == "original" and t["contractions"]["1"]["set"] == "contractions_1"
    e = t["contractions"]["1"]
    for obj in ("ex_rm", "im_rm"):
        assert len(e[obj]["accuracy_per_seed"]) == 3
    assert 0 < e["token_overlap"] < 1 and e["changed_fraction"] == 1.0
    lo, hi = e["robustness_gap"]["ci95"]
    assert lo <= e["robustness_gap"]["estimate"] <= hi
    gap = e["ex_rm"]["accuracy_change"]["estimate"] - e["im_rm"]["accuracy_change"]["estimate"]
    assert e["robustness_gap"]["estimate"] == pytest.approx(gap)
    assert t["synonyms"]["0.5"]["token_overlap"] > t["synonyms"]["1"]["token_overlap"]  # the dose
    for obj in ("ex_rm", "im_rm"):
        for k in (0, 1, 2):
            rows = read_jsonl_rows(out / obj / f"seed{k}" / "rewards_contractions_1.jsonl.gz")
            assert len(rows) == 6 and {"where", "reward_chosen", "reward_rejected"} <= set(rows[0])
    probe = res["probe"]  # the one-step prediction, at each transformation's largest strength
    assert set(probe["move_ratio"]) == {"contractions", "synonyms"} and probe["n_pairs"] == 4
    assert all(np.isfinite(r) and r != 1.0 for r in probe["move_ratio"].values())
    assert probe["agreement"]["spearman"] is None  # two transformations rank nothing
    assert (out / "dose_response.png").exists() and "| contractions | 1 |" in (out / "table.md").read_text()
    saved = json.loads((out / "results.json").read_text())
    assert (
        saved["transforms"]["contractions"]["1"]["robustness_gap"]["estimate"]
        == e["robustness_gap"]["estimate"]
    )
    assert len(saved["seconds"]["training"]) == 6 and saved["seconds"]["cells_total"] > 0


def test_the_evaluation_equals_a_pair_by_pair_recomputation(tmp_path, train_file):
    out = tmp_path / "run"
    _run(out, train_file)
    args = robustness._parser().parse_args(["--train-set", str(train_file), "--quick", "--out", str(out)])
    preset = robustness.PRESETS["quick"]
    data = robustness.robustness_data(_factory().tokenizer, args, preset, 128)
    cfg = cell_config(args, preset, "im_rm", 1)
    ref_lm, lm = _factory(), _factory()  # the untrained model (the reference) and the trained one,
    state = torch.load(cell_dir(out, "im_rm", 1) / "checkpoint.pt", weights_only=False)
    lm.model.load_state_dict(state["model"])  # loaded by hand, not through load_trained
    saved = robustness_analysis.read_rewards(cell_dir(out, "im_rm", 1) / "rewards_original.jsonl.gz")
    assert len(saved) == len(data.test)
    pad = lm.tokenizer.pad_token_id
    for p in data.test:
        e = encode_for_training(lm, [p], cfg).encodings[0]  # one response at a time
        with torch.no_grad():
            lp = [score(lm.model, [x], pad, mode="single").logprob.item() for x in e]
            lr = [score(ref_lm.model, [x], pad, mode="single").logprob.item() for x in e]
        want = [cfg.beta * (a - b) for a, b in zip(lp, lr, strict=True)]
        assert saved[p.where] == pytest.approx(want, abs=1e-9)
    assert load_trained(_factory(), cfg, cell_dir(out, "im_rm", 1) / "checkpoint.pt").rt.name == "im_rm"
    with pytest.raises(ValueError, match="not this cell's finished training"):
        load_trained(
            _factory(),
            cell_config(args, preset, "im_rm", 2),
            cell_dir(out, "im_rm", 1) / "checkpoint.pt",
        )


def test_the_gap_statistic_by_hand(tmp_path):
    """EX-RM unchanged, IM-RM flipped on 2 of 8 pairs in every seed: gap = +0.25; EX and IM swapped: −0.25."""
    n, seeds = 8, [0, 1, 2]
    wheres = [f"f:{i}" for i in range(n)]
    for obj in ("ex_rm", "im_rm"):
        for k in seeds:
            d = cell_dir(tmp_path, obj, k)
            d.mkdir(parents=True)
            for s in ("original", "t_1"):
                flip = obj == "im_rm" and s == "t_1"
                rows = [
                    {"where": w, "reward_chosen": -1.0 if flip and i < 2 else 1.0, "reward_rejected": 0.0}
                    for i, w in enumerate(wheres)
                ]
                (d / f"rewards_{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cells = robustness_analysis.Cells(tmp_path, ("ex_rm", "im_rm"), seeds, ["original", "t_1"])
    res = robustness_analysis.compare(cells, "t_1", "original", wheres, wheres, changed=wheres[:4])
    assert res["robustness_gap"]["estimate"] == pytest.approx(0.25)
    assert res["im_rm"]["accuracy_change"]["estimate"] == pytest.approx(-0.25)
    assert (
        res["ex_rm"]["accuracy_change"]["estimate"] == 0.0 and res["ex_rm"]["accuracy_per_seed"] == [1.0] * 3
    )
    assert (
        res["robustness_gap_changed"]["estimate"] == pytest.approx(0.5)
        and res["robustness_gap_changed"]["n_pairs"] == 4
    )
    assert res["margin_gap"]["estimate"] > 0
    swapped = robustness_analysis.Cells(tmp_path, ("im_rm", "ex_rm"), seeds, ["original", "t_1"])
    assert robustness_analysis.compare(swapped, "t_1", "original", wheres, wheres, [])["robustness_gap"][
        "estimate"
    ] == pytest.approx(-0.25)


def test_a_run_folder_is_never_overwritten_and_a_resume_continues_the_same_run(tmp_path, train_file):
    out = tmp_path / "run"
    first = _run(out, train_file, "--stages", "train")
    assert first == {}
    with pytest.raises(ValueError, match="a run is already here; pass --resume"):
        _run(out, train_file)
    with pytest.raises(ValueError, match=r"another run \(differs in split\)"):
        _run(out, train_file, "--resume", "--split-seed", "1")
    res = _run(out, train_file, "--resume")
    assert len(json.loads((out / "run.json").read_text())["invocations"]) == 2  # (refusals record nothing)
    assert res["transforms"]["contractions"]["1"]["n_pairs"] == 6
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and not a robustness run"):
        _run(tmp_path / "other", train_file)


def _forget(d, group="synonyms"):
    """A cell as a fresh clone has it: no checkpoint, and one group not scored yet."""
    (d / "checkpoint.pt").unlink()
    record = json.loads((d / "eval.json").read_text())
    del record[group]
    (d / "eval.json").write_text(json.dumps(record))


def test_a_cell_whose_checkpoint_is_gone_is_trained_again_and_must_reproduce_its_records(
    tmp_path, train_file
):
    out = tmp_path / "run"
    _run(out, train_file, "--stages", "train,eval")
    d = cell_dir(out, "im_rm", 1)
    before = read_jsonl_rows(d / "rewards_synonyms_1.jsonl.gz")
    _forget(d)
    _run(out, train_file, "--resume", "--stages", "eval")
    (check,) = json.loads((d / "eval.json").read_text())["retrained"]
    assert check["history_identical"] and check["max_abs_diff_original"] <= 1e-6
    assert (d / "checkpoint.pt").exists() and not (d / ".retrain").exists()
    again = read_jsonl_rows(d / "rewards_synonyms_1.jsonl.gz")
    for a, b in zip(again, before, strict=True):
        assert a["where"] == b["where"] and a["reward_chosen"] == pytest.approx(b["reward_chosen"], abs=1e-6)
    assert "retrained" not in json.loads((cell_dir(out, "ex_rm", 0) / "eval.json").read_text())
    seconds = _run(out, train_file, "--resume", "--stages", "analyze")["seconds"]
    assert set(seconds["retraining"]) == {"im_rm/seed1"} and seconds["retraining"]["im_rm/seed1"] > 0
    # recorded rewards that the retrained weights do not give: refused, nothing scored
    _forget(d)
    rows = read_jsonl_rows(d / "rewards_original.jsonl.gz")
    rows[0]["reward_chosen"] += 0.01  # (recorded under the uncompressed name, as an older rmgap did)
    (d / "rewards_original.jsonl.gz").unlink()
    (d / "rewards_original.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="did not reproduce the recorded cell"):
        _run(out, train_file, "--resume", "--stages", "eval")
    assert "synonyms" not in json.loads((d / "eval.json").read_text())
    (d / "history.json").write_text(json.dumps([{"epoch": 1, "train_loss": 0.5}]))  # another trajectory
    with pytest.raises(ValueError, match=r"epoch losses identical: False"):
        _run(out, train_file, "--resume", "--stages", "eval")


def test_split_by_prompt_keeps_every_prompt_on_one_side(train_file):
    from lm_probes.data.splits import split_by_prompt

    pairs = read_jsonl(train_file)
    train, test = split_by_prompt(pairs, 0.3, seed=0)
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in test})
    assert len(train) + len(test) == len(pairs) and len({p.prompt for p in test}) == 3
    assert split_by_prompt(pairs, 0.3, seed=0) == (train, test) and split_by_prompt(pairs, 0.3, 1) != (
        train,
        test,
    )
    with pytest.raises(ValueError, match="held_out must be in"):
        split_by_prompt(pairs, 1.0, 0)
    with pytest.raises(ValueError, match="cannot be split"):
        split_by_prompt([Pair("a", "b", "c")], 0.5, 0)
    assert np.isfinite(len(train))


def test_bad_input_is_one_line_and_exit_2(tmp_path, train_file):
    from tests.conftest import run_rmgap

    base = ("robustness", "--out", str(tmp_path / "r"))
    for extra, message in [
        (("--train-set", str(tmp_path / "missing.jsonl")), "missing.jsonl"),
        (("--stages", "train,bake"), "--stages: bake not among train, eval, probe, analyze"),
        (("--seeds", "0,x"), "--seeds takes comma-separated integers"),
        (("--seeds", "1,1"), "--seeds takes distinct integers"),
        (("--train-set", str(train_file), "--resume"), "--resume, but no run here"),
    ]:
        code, _, err = run_rmgap(*base, *extra)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("rmgap robustness: error:")


def test_the_dose_figure_takes_transformations_with_equal_token_overlap(tmp_path):
    """Two strengths with the same overlap (a tiny vocabulary's <unk>s, or real ties) once made the
    figure compare two entries, a TypeError at the end of a finished run."""
    from rmgap.experiments.robustness_report import dose_figure

    cell = {"ex_rm": {"accuracy": 0.5}, "im_rm": {"accuracy": 0.5}}
    res = {
        "transforms": {
            "synonyms": {"0.5": {"token_overlap": 0.9, **cell}, "1": {"token_overlap": 0.9, **cell}}
        }
    }
    dose_figure(res, tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000
