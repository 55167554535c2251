"""rmgap persona: its data split and its table."""

from __future__ import annotations

from collections import Counter

import pytest

from lm_probes.common import read_jsonl_rows
from lm_probes.data.pairs import DataError
from lm_probes.data.persona import persona_data
from rmgap.experiments.persona import make_table, table_markdown


def test_persona_data_and_table():
    d = persona_data(n_train=80, n_test=40, pairs_per_statement=2, seed=0)
    # evaluation: each statement with the 2×2 word pairs (the authors' average over word pairs)
    assert len(d["train"]) == 160 and {k: len(v) for k, v in d["eval"].items()} == {
        "original_train": 320,
        "original_test": 160,
        "paraphrased_train": 320,
        "paraphrased_test": 160,
    }
    words = Counter((p.chosen.split()[-1], p.rejected.split()[-1]) for p in d["eval"]["paraphrased_test"])
    assert words == {(y, n): 40 for y in ("certainly", "absolutely") for n in ("really", "nope")}

    # the authors' templates: a training response and an evaluation paraphrase share only the pronouns
    # "I" and "my" (the old "Yes, my answer would be" also shared "would be")
    def words_of(pairs):
        return {w for p in pairs for w in (p.chosen + " " + p.rejected).lower().split()}

    trained, paraphrases = words_of(d["train"]), words_of(d["eval"]["paraphrased_test"])
    assert trained & paraphrases == {"i", "my"} and "view," in trained
    train_prompts = {p.prompt for p in d["train"]}
    assert not train_prompts & {p.prompt for p in d["eval"]["original_test"]}
    assert {p.prompt for p in d["eval"]["paraphrased_train"]} == train_prompts
    for p in d["eval"]["paraphrased_test"]:
        assert p.chosen.startswith("My response would be") and p.rejected.startswith("I lean toward")
    finals = {
        obj: {
            n: {"rmgap/accuracy_half_ties": a} for n, a in zip(d["eval"], (1.0, 0.9, 0.8, 0.7), strict=True)
        }
        for obj in ("ex_rm", "im_rm")
    }
    t = make_table(finals)
    assert t["paraphrased"]["test"]["im"] == 0.7 and t["original"]["train"]["ex"] == 1.0
    assert "| paraphrased | test | 0.700 | 0.700 |" in table_markdown(t, "h")
    with pytest.raises(DataError, match="need 2000"):
        persona_data(n_train=1000, n_test=1000)


def test_persona_over_seeds_aggregates_each_cell_over_seeds_and_statements(tmp_path):
    """--seeds: one split, each seed its own run under <out>/seed<k>/; every cell's mean is the mean of
    the seeds' accuracies (recomputed from their rewards files), inside its CI and its range."""
    import json

    import numpy as np
    import torch

    from rmgap.experiments.persona import main
    from tests.conftest import make_tiny_lm
    from tests.experiments.test_mitigations import PERSONA_WORDS

    topics = "people kindness matters like sure never yes no answer statement truthful reply".split()
    rows = [{"question": f"would you say ? i like {w}", "answer_matching_behavior": " Yes"} for w in topics]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["--persona-file", str(tmp_path / "p.jsonl"), "--n-train", "4", "--n-test", "2", "--epochs", "1"]
    argv += ["--lr", "1e-2", "--seeds", "0,1,2", "--out", str(tmp_path / "o"), "--quiet"]
    res = main(
        argv,
        lm_factory=lambda: make_tiny_lm(dtype=torch.float64, max_positions=96, extra_words=PERSONA_WORDS),
    )
    c = res["table"]["paraphrased"]["test"]["im"]
    per_seed = []
    for k in range(3):
        rows = read_jsonl_rows(tmp_path / "o" / f"seed{k}" / "im_rm" / "rewards_paraphrased_test.jsonl.gz")
        r = np.array([[x["reward_chosen"], x["reward_rejected"]] for x in rows])
        per_seed.append(np.mean(np.where(r[:, 0] > r[:, 1], 1.0, np.where(r[:, 0] == r[:, 1], 0.5, 0.0))))
    assert c["per_seed"] == pytest.approx(per_seed) and c["mean"] == pytest.approx(np.mean(per_seed))
    # the paper's gap, paired by seed: EX-RM's per-seed accuracy minus IM-RM's, each from its file
    ex_seed = [res["table"]["paraphrased"]["test"]["ex"]["per_seed"][k] for k in range(3)]
    gap = res["contrasts"]["ex_rm − im_rm"]["paraphrased_test"]
    assert gap["per_seed"] == pytest.approx(np.subtract(ex_seed, per_seed))
    assert gap["ci95"][0] <= gap["mean"] <= gap["ci95"][1] and gap["n_seeds"] == 3
    assert "ex_rm − ex_rm_mean" not in res["contrasts"]  # (only where both were run)
    assert (
        c["ci95"][0] <= c["mean"] <= c["ci95"][1] and c["min"] <= c["mean"] <= c["max"] and c["n_seeds"] == 3
    )
    ex_rewards = {
        (tmp_path / "o" / f"seed{k}" / "ex_rm" / "rewards_original_test.jsonl.gz").read_bytes()
        for k in range(3)
    }
    assert len(ex_rewards) == 3  # each seed its own head and data order
    ex = [
        json.loads((tmp_path / "o" / f"seed{k}" / "ex_rm" / "summary.json").read_text())["config"]
        for k in range(3)
    ]
    assert [e["seed"] for e in ex] == [0, 1, 2]
    assert "Mean over seeds" in (tmp_path / "o" / "table.md").read_text()
    # --resume in a fresh checkout (no checkpoints): the finished RMs are read back, not trained again
    for ckpt in (tmp_path / "o").rglob("checkpoint.pt"):
        ckpt.unlink()
    files = {f: f.read_bytes() for f in (tmp_path / "o").rglob("seed*/*/*") if f.is_file()}
    again = main([*argv, "--resume"], lm_factory=lambda: pytest.fail("a finished RM was trained again"))
    assert again["table"] == res["table"]
    # a finished RM's folder is left as it was (several pairs share a statement: never matched by it)
    assert {f: f.read_bytes() for f in files} == files


def test_contrasts_pair_each_seed_with_itself():
    """contrasts(): a − b of the same seed (the mean alone cannot tell: it is pairing-free)."""
    import numpy as np

    from lm_probes.data.pairs import Pair
    from lm_probes.rm.trainer import TrainResult
    from rmgap.experiments.persona_seeds import SETS, contrasts

    pairs = [Pair(f"x{i // 2}", "a", "b", "g", f"p{i}") for i in range(4)]
    wins = {  # per seed: how many of the 4 pairs each RM gets right
        "ex_rm": [4, 2, 1],
        "im_rm": [0, 1, 3],
        "ex_rm_mean": [3, 3, 0],
    }

    def result(n_right):
        r = np.array([[1.0, 0.0]] * n_right + [[0.0, 1.0]] * (4 - n_right))
        return TrainResult({}, {s: r for s in SETS}, {}, {s: pairs for s in SETS})

    runs = {k: {obj: result(w[k]) for obj, w in wins.items()} for k in range(3)}
    c = contrasts(runs, n_boot=200)
    assert set(c) == {"ex_rm − im_rm", "ex_rm − ex_rm_mean", "ex_rm_mean − im_rm"}
    assert c["ex_rm − im_rm"]["paraphrased_test"]["per_seed"] == [1.0, 0.25, -0.5]
    assert c["ex_rm − ex_rm_mean"]["original_train"]["per_seed"] == [0.25, -0.25, 0.25]
    assert c["ex_rm_mean − im_rm"]["original_test"]["mean"] == np.mean([0.75, 0.5, -0.75])
