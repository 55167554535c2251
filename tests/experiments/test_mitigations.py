"""rmgap mitigations end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lm_probes.data import persona
from lm_probes.rm.mitigations import (
    MITIGATIONS,
)
from rmgap.experiments import mitigations as exp
from tests.conftest import make_tiny_lm

PERSONA_WORDS = tuple(
    dict.fromkeys(
        " ".join(
            [
                *persona.YES_PREFIXES,
                *persona.NO_PREFIXES,
                *persona.YES_WORDS,
                *persona.NO_WORDS,
                persona.PARA_YES_PREFIX,
                persona.PARA_NO_PREFIX,
                *persona.PARA_YES_WORDS,
                *persona.PARA_NO_WORDS,
                persona.AUG_YES_PREFIX,
                persona.AUG_NO_PREFIX,
                *persona.AUG_YES_WORDS,
                *persona.AUG_NO_WORDS,
            ]
        ).split()
    )
)


def test_rmgap_mitigations_end_to_end(tmp_path):
    topics = "people kindness matters like sure never yes no answer statement truthful reply".split()
    rows = [{"question": f"would you say ? i like {w}", "answer_matching_behavior": " Yes"} for w in topics]
    path = tmp_path / "persona.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "run"
    argv = [
        "--persona-file",
        str(path),
        "--n-train",
        "4",
        "--n-test",
        "2",
        "--probe-statements",
        "2",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    res = exp.main(
        argv,
        lm_factory=lambda: make_tiny_lm(dtype=torch.float64, max_positions=96, extra_words=PERSONA_WORDS),
    )
    table = json.loads((out / "table.json").read_text())["mitigations"]
    assert list(table) == list(MITIGATIONS)
    for name, t in table.items():
        for kind in ("original", "paraphrased"):
            assert set(t[kind]) == {"train", "test"} and all(0 <= v <= 1 for v in t[kind].values())
        assert np.isfinite(t["probe"]["paraphrase_over_original"])
        assert not (out / name / "checkpoint.pt").exists() and (out / name / "prediction.json").exists()
    # theory: at θ₀ consistency and the L2 pull step exactly as none; token dropout's prediction is the
    # undropped step by construction (its expectation identity: tests/rm/test_mitigations.py)
    for same in ("token_dropout", "consistency", "unembedding_l2"):
        assert table[same]["probe"]["moves"] == pytest.approx(table["none"]["probe"]["moves"], rel=1e-9)
    assert table["augmentation"]["probe"]["moves"] != pytest.approx(table["none"]["probe"]["moves"], rel=1e-6)
    assert (out / "mitigations.png").exists() and "| none | im_rm |" in (out / "table.md").read_text()
    # --resume reads the finished mitigations back instead of training them again
    again = exp.main([*argv, "--resume"], lm_factory=lambda: pytest.fail("a finished mitigation was rerun"))
    assert again["mitigations"]["none"]["original"] == res["mitigations"]["none"]["original"]


def test_mitigations_over_seeds_read_each_seeds_own_files(tmp_path):
    """--seeds: each seed's run under <out>/seed<k>/ (its own table.json); table_seeds.json's per-seed
    accuracies are those tables' own, the mean inside its CI; a rerun with --resume trains nothing."""
    topics = "people kindness matters like sure never yes no answer statement truthful reply".split()
    rows = [{"question": f"would you say ? i like {w}", "answer_matching_behavior": " Yes"} for w in topics]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["--persona-file", str(tmp_path / "p.jsonl"), "--n-train", "4", "--n-test", "2"]
    argv += ["--probe-statements", "2", "--epochs", "1", "--mitigations", "none,ex_rm", "--seeds", "0,1"]
    argv += ["--out", str(tmp_path / "o"), "--quiet"]
    factory = lambda: make_tiny_lm(dtype=torch.float64, max_positions=96, extra_words=PERSONA_WORDS)  # noqa: E731
    res = exp.main(argv, lm_factory=factory)
    per_seed = [
        json.loads((tmp_path / "o" / f"seed{k}" / "table.json").read_text())["mitigations"] for k in (0, 1)
    ]
    for name in ("none", "ex_rm"):
        c = res["mitigations"][name]["paraphrased"]["test"]
        assert c["per_seed"] == pytest.approx([t[name]["paraphrased"]["test"] for t in per_seed])
        assert c["ci95"][0] <= c["mean"] <= c["ci95"][1] and c["n_seeds"] == 2
    again = exp.main([*argv, "--resume"], lm_factory=lambda: pytest.fail("a finished mitigation was rerun"))
    assert again["mitigations"] == res["mitigations"] and (tmp_path / "o" / "table_seeds.md").exists()
