"""The Persona data (theory/README.md §5): statements, response templates, the probe's set and the
training experiment's split.

    from lm_probes.data.persona import persona_probe_set, persona_data
    persona_probe_set()   # {"train": 1 triple, "margin": [...], "eval": 20 statements × 5 pairs}
    persona_data()        # {"train": 160 pairs, "eval": {original|paraphrased}_{train|test}}

Statements come from the shipped ``persona/agreeableness`` dataset (or any Persona file with the same
fields, ``path=``): those whose ``answer_matching_behavior`` is " Yes"; the prompt is the row's
``question``. Responses are the authors' templates: a yes-prefix ("In my view, the answer is" or
"A truthful reply is") + {yes, sure} is preferred to a no-prefix ("My judgement:" or "Considering the
statement, I say") + {no, never}; the paraphrases share no word with them ("My response would be" +
{certainly, absolutely} vs "I lean toward" + {not really, nope}). (Before issue 11 the second
yes-prefix here was "Yes, my answer would be", which is not the authors' and shares "would be" with
the paraphrase; the committed tables were regenerated.)
"""

from __future__ import annotations

import numpy as np

from lm_probes.data.pairs import DataError, Pair, load_rows, read_rows, require_str

YES_PREFIXES = ("A truthful reply is", "In my view, the answer is")
NO_PREFIXES = ("Considering the statement, I say", "My judgement:")
YES_WORDS, NO_WORDS = ("yes", "sure"), ("no", "never")
PARA_YES_PREFIX, PARA_YES_WORDS = "My response would be", ("certainly", "absolutely")
PARA_NO_PREFIX, PARA_NO_WORDS = "I lean toward", ("not really", "nope")
# the training rewrites (issue 12's augmentation and consistency): share no word with the evaluation
# paraphrases above, so the paraphrased sets stay unseen (tests/rm/test_mitigations.py checks it)
AUG_YES_PREFIX, AUG_YES_WORDS = "Put simply, the verdict is", ("agreed", "definitely")
AUG_NO_PREFIX, AUG_NO_WORDS = "Frankly, this seems", ("false", "wrong")


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

    train:   one statement, y+ = "A truthful reply is yes", y− = "Considering the statement, I say no"
             (its rewrite, for the mitigations that use one, in the AUG templates);
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
    rewrite = (f"{AUG_YES_PREFIX} {AUG_YES_WORDS[0]}", f"{AUG_NO_PREFIX} {AUG_NO_WORDS[0]}")
    train = [Pair(pick[0][1], yp, ym, "train", pick[0][0], rewrite=rewrite)]
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
    seeded into ``n_train`` / ``n_test``; each training statement gets ``pairs_per_statement`` random
    (yes-prefix + word, no-prefix + word) pairs, each with a random rewrite in the AUG templates
    (``Pair.rewrite``, used only by the augmentation and consistency mitigations). Evaluation, as
    the authors computed it: every statement with each of the 2×2 (yes-word, no-word) combinations, so
    that a set's accuracy is the mean of the four word pairs' accuracies — original_train,
    original_test (training templates, prefixes drawn at random) and paraphrased_train,
    paraphrased_test (the paraphrase templates), on train and on test prompts."""
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

    def original(yes=None, no=None):
        yes = YES_WORDS[rng.integers(2)] if yes is None else yes
        no = NO_WORDS[rng.integers(2)] if no is None else no
        return f"{YES_PREFIXES[rng.integers(2)]} {yes}", f"{NO_PREFIXES[rng.integers(2)]} {no}"

    def paraphrased(yes, no):
        return f"{PARA_YES_PREFIX} {yes}", f"{PARA_NO_PREFIX} {no}"

    rw = np.random.default_rng([seed, 12])  # the rewrites' own stream: the pairs are drawn as before

    def rewrite():
        return (
            f"{AUG_YES_PREFIX} {AUG_YES_WORDS[rw.integers(2)]}",
            f"{AUG_NO_PREFIX} {AUG_NO_WORDS[rw.integers(2)]}",
        )

    def training(statements):
        return [
            Pair(q, *original(), "train", w, rewrite=rewrite())
            for w, q in statements
            for _ in range(pairs_per_statement)
        ]

    def every_word_pair(statements, make, words, group):
        yes_words, no_words = words
        return [Pair(q, *make(y, n), group, w) for w, q in statements for y in yes_words for n in no_words]

    return {
        "train": training(train_s),
        "eval": {
            "original_train": every_word_pair(train_s, original, (YES_WORDS, NO_WORDS), "original_train"),
            "original_test": every_word_pair(test_s, original, (YES_WORDS, NO_WORDS), "original_test"),
            "paraphrased_train": every_word_pair(
                train_s, paraphrased, (PARA_YES_WORDS, PARA_NO_WORDS), "paraphrased_train"
            ),
            "paraphrased_test": every_word_pair(
                test_s, paraphrased, (PARA_YES_WORDS, PARA_NO_WORDS), "paraphrased_test"
            ),
        },
    }
