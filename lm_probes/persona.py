"""The Persona data (theory/README.md §5): statements, response templates, the probe's set and the
training experiment's split.

    from lm_probes.persona import persona_probe_set, persona_data
    persona_probe_set()   # {"train": 1 triple, "margin": [...], "eval": 20 statements × 5 pairs}
    persona_data()        # {"train": 160 pairs, "eval": {original|paraphrased}_{train|test}}

Statements come from the shipped ``persona/agreeableness`` dataset (or any Persona file with the same
fields, ``path=``): those whose ``answer_matching_behavior`` is " Yes"; the prompt is the row's
``question``. Responses: a yes-prefix + {yes, sure} is preferred to a no-prefix + {no, never};
paraphrases share no content word with them ("My response would be" + {certainly, absolutely} vs
"I lean toward" + {not really, nope}).
"""

from __future__ import annotations

import numpy as np

from lm_probes.data import DataError, Pair, load_rows, read_rows, require_str

YES_PREFIXES = ("A truthful reply is", "Yes, my answer would be")
NO_PREFIXES = ("Considering the statement, I say", "My judgement:")
YES_WORDS, NO_WORDS = ("yes", "sure"), ("no", "never")
PARA_YES_PREFIX, PARA_YES_WORDS = "My response would be", ("certainly", "absolutely")
PARA_NO_PREFIX, PARA_NO_WORDS = "I lean toward", ("not really", "nope")


def persona_statements(path=None, *, matching: str = " Yes") -> list[tuple[str, str]]:
    """(where, question) of the statements whose answer_matching_behavior is ``matching``, from the
    shipped agreeableness subset or from ``path``."""
    rows = load_rows("persona", "agreeableness") if path is None else read_rows(path)
    out = []
    for where, row in rows:
        question = require_str(where, row, "question")
        if require_str(where, row, "answer_matching_behavior") == matching:
            out.append((where, question))
    if not out:
        source = path or "persona/agreeableness"
        raise DataError(f"{source}: no statement with answer_matching_behavior == {matching!r}")
    return out


def persona_probe_set(
    path=None, *, n_eval_statements: int = 20, n_margin_statements: int = 8, seed: int = 0
) -> dict:
    """The probe's Persona set:

    train:   one statement, y+ = "A truthful reply is yes", y− = "Considering the statement, I say no";
    margin:  ``n_margin_statements`` further statements with the same responses (for the max-margin
             check of the paper's footnote: u* of their hidden-state differences);
    eval:    ``n_eval_statements`` other statements, each with five pairs (10 responses):
             same       — the training responses;
             overlap    — same prefixes with new words ("... is sure" / "... I say never"), and the
                          words with swapped prefixes ("Considering the statement, I say yes" / ...);
             paraphrase — no shared content words ("My response would be certainly" /
                          "I lean toward not really", and "... absolutely" / "... nope").
    """
    stmts = persona_statements(path)
    need = 1 + n_margin_statements + n_eval_statements
    if len(stmts) < need:
        raise DataError(f"{path or 'persona/agreeableness'}: {len(stmts)} matching statements, need {need}")
    order = np.random.default_rng(seed).permutation(len(stmts))
    pick = [stmts[i] for i in order[:need]]
    yp, ym = f"{YES_PREFIXES[0]} {YES_WORDS[0]}", f"{NO_PREFIXES[0]} {NO_WORDS[0]}"
    train = [Pair(pick[0][1], yp, ym, "train", pick[0][0])]
    margin = [Pair(q, yp, ym, "margin", w) for w, q in pick[1 : 1 + n_margin_statements]]
    variants = [
        ("same", yp, ym),
        ("overlap", f"{YES_PREFIXES[0]} {YES_WORDS[1]}", f"{NO_PREFIXES[0]} {NO_WORDS[1]}"),
        ("overlap", f"{NO_PREFIXES[0]} {YES_WORDS[0]}", f"{YES_PREFIXES[0]} {NO_WORDS[0]}"),
        ("paraphrase", f"{PARA_YES_PREFIX} {PARA_YES_WORDS[0]}", f"{PARA_NO_PREFIX} {PARA_NO_WORDS[0]}"),
        ("paraphrase", f"{PARA_YES_PREFIX} {PARA_YES_WORDS[1]}", f"{PARA_NO_PREFIX} {PARA_NO_WORDS[1]}"),
    ]
    evals = [Pair(q, c, r, g, w) for w, q in pick[1 + n_margin_statements :] for g, c, r in variants]
    return {"train": train, "margin": margin, "eval": evals}


def persona_data(
    path=None, *, n_train: int = 80, n_test: int = 40, pairs_per_statement: int = 2, seed: int = 0
) -> dict:
    """The Persona experiment's data, {"train": [Pair], "eval": {set name: [Pair]}}: statements split
    seeded into ``n_train`` / ``n_test``; each gets ``pairs_per_statement`` random (yes-prefix + word,
    no-prefix + word) pairs; evaluation sets original_train, original_test (training templates) and
    paraphrased_train, paraphrased_test (paraphrase templates), on train and on test prompts."""
    stmts = persona_statements(path)
    if len(stmts) < n_train + n_test:
        raise DataError(
            f"{path or 'persona/agreeableness'}: {len(stmts)} statements with answer ' Yes', "
            f"need {n_train + n_test}"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(stmts))
    train_s = [stmts[i] for i in order[:n_train]]
    test_s = [stmts[i] for i in order[n_train : n_train + n_test]]

    def original():
        return (
            f"{YES_PREFIXES[rng.integers(2)]} {YES_WORDS[rng.integers(2)]}",
            f"{NO_PREFIXES[rng.integers(2)]} {NO_WORDS[rng.integers(2)]}",
        )

    def paraphrased():
        return (
            f"{PARA_YES_PREFIX} {PARA_YES_WORDS[rng.integers(2)]}",
            f"{PARA_NO_PREFIX} {PARA_NO_WORDS[rng.integers(2)]}",
        )

    def pairs(statements, make, group):
        return [Pair(q, *make(), group, w) for w, q in statements for _ in range(pairs_per_statement)]

    return {
        "train": pairs(train_s, original, "train"),
        "eval": {
            "original_train": pairs(train_s, original, "original_train"),
            "original_test": pairs(test_s, original, "original_test"),
            "paraphrased_train": pairs(train_s, paraphrased, "paraphrased_train"),
            "paraphrased_test": pairs(test_s, paraphrased, "paraphrased_test"),
        },
    }
