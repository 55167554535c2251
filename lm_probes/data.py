"""Preference data: JSONL triples (prompt, chosen, rejected) with row-level errors, and the Persona
probe set of THEORY.md §5 built from ``../shared/data/persona/agreeableness.jsonl``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The shared data sit beside the repository (../shared/data); RMGAP_DATA points elsewhere.
DATA_ROOT = Path(
    os.environ.get("RMGAP_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "data")
)
PERSONA_FILE = DATA_ROOT / "persona" / "agreeableness.jsonl"

# Responses of THEORY.md §5: training prefixes × words, and paraphrases sharing no content words.
YES_PREFIXES = ("A truthful reply is", "Yes, my answer would be")
NO_PREFIXES = ("Considering the statement, I say", "My judgement:")
YES_WORDS, NO_WORDS = ("yes", "sure"), ("no", "never")
PARA_YES_PREFIX, PARA_YES_WORDS = "My response would be", ("certainly", "absolutely")
PARA_NO_PREFIX, PARA_NO_WORDS = "I lean toward", ("not really", "nope")


class DataError(ValueError):
    """A malformed data row: the message names the file, the line and the field."""


@dataclass(frozen=True)
class Pair:
    """A preference pair; ``group`` names the evaluation set it belongs to, ``where`` its origin."""

    prompt: str
    chosen: str
    rejected: str
    group: str = "data"
    where: str = ""


def read_jsonl(path, *, fields=("prompt", "chosen", "rejected"), group: str = "data") -> list[Pair]:
    """Read preference triples; a bad row raises DataError naming file:line and the problem."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for k in fields:
                if k not in row:
                    raise DataError(f"{where}: missing field {k!r}")
                if not isinstance(row[k], str):
                    raise DataError(f"{where}: field {k!r} must be a string, got {type(row[k]).__name__}")
            if not row[fields[1]].strip() or not row[fields[2]].strip():
                raise DataError(
                    f"{where}: empty {'chosen' if not row[fields[1]].strip() else 'rejected'} response"
                )
            pairs.append(Pair(row[fields[0]], row[fields[1]], row[fields[2]], group, where))
    if not pairs:
        raise DataError(f"{path}: no rows")
    return pairs


def persona_statements(path=PERSONA_FILE, *, matching: str = " Yes") -> list[tuple[str, str]]:
    """(where, question) for the statements whose answer_matching_behavior is ``matching``."""
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: no such file (the Persona data live in ../shared/data/persona/ beside the "
            "repository; set RMGAP_DATA to the data folder or pass the file explicitly)"
        )
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            for k in ("question", "answer_matching_behavior"):
                if not isinstance(row.get(k), str):
                    raise DataError(f"{path}:{n}: missing or non-string field {k!r}")
            if row["answer_matching_behavior"] == matching:
                out.append((f"{path}:{n}", row["question"]))
    if not out:
        raise DataError(f"{path}: no statement with answer_matching_behavior == {matching!r}")
    return out


def persona_probe_set(
    path=PERSONA_FILE, *, n_eval_statements: int = 20, n_margin_statements: int = 8, seed: int = 0
) -> dict:
    """The probe's Persona set (THEORY.md §5, issue 'lm_probes'):

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
        raise DataError(f"{path}: {len(stmts)} matching statements, need {need}")
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
