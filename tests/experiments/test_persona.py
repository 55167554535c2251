"""rmgap persona: its data split and its table."""

from __future__ import annotations

from collections import Counter

import pytest

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
