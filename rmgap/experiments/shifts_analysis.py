"""The results of ``rmgap shifts``, computed from its finished cells (computation only; shifts_report
writes them): per evaluation set the EX-RM's and IM-RM's accuracy and normalised margin, their paired
difference with a bootstrap CI and the winner (lm_probes.stats), win rates per shift type, the rewrite
sets' quality (lm_probes.data.rewrites), the pairs the IM-RM loses under a token-level shift while the EX-RM
wins them ("flips", with the per-token IM rewards that decided them), and several runs combined.

With several seeds, a pair's outcome is its mean over seeds (so accuracies are seed means) and the
bootstrap resamples pairs: the CI covers the evaluation pairs' sampling, with the seeds held fixed.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from lm_probes.data.pairs import load_rows
from lm_probes.data.rewrites import rewrite_quality
from lm_probes.stats import MODELS, paired_bootstrap_ci, pairs_needed, plain_winner, win_rates, winner
from theory import accuracy, pair_outcomes

SHIFT_TYPES = ("token_level", "domain")
TOP_TOKENS = 8  # tokens shown per response of a flip


def set_comparison(
    rew_ex: list[np.ndarray], rew_im: list[np.ndarray], *, n_boot: int, seed: int, names=MODELS
) -> dict:
    """EX vs IM on one evaluation set; rew_*: per seed, (N, 2) rewards (chosen, rejected), same pairs.
    ``names`` keys the two RMs (and names the winners); the difference is first − second."""
    o_ex = np.mean([pair_outcomes(r[:, 0], r[:, 1]) for r in rew_ex], 0)
    o_im = np.mean([pair_outcomes(r[:, 0], r[:, 1]) for r in rew_im], 0)
    diff, lo, hi = paired_bootstrap_ci(o_ex, o_im, n_boot=n_boot, seed=seed)
    out = {}
    for name, rews in zip(names, (rew_ex, rew_im), strict=True):
        accs = [accuracy(r[:, 0], r[:, 1]) for r in rews]
        out[name] = {
            "accuracy": float(np.mean([a.half_ties for a in accs])),
            "accuracy_per_seed": [a.half_ties for a in accs],
            "tie_rate": float(np.mean([a.tie_rate for a in accs])),
            "normalized_abs_margin": float(np.mean([a.normalized_abs_margin for a in accs])),
        }
    acc_ex, acc_im = (out[n]["accuracy"] for n in names)
    return {
        **out,
        "diff": diff,
        "diff_ci95": [lo, hi],
        "winner": winner(lo, hi, names),
        "winner_plain": plain_winner(acc_ex, acc_im, names),
        "pairs_needed": pairs_needed(o_ex - o_im) if o_ex.size > 1 else None,
        "n_pairs": int(o_ex.size),
    }


def rewrite_set_quality(name: str, tokenize) -> dict:
    """Quality of one shipped rewrite test set: both responses of all its pairs vs their originals."""
    rows = [r for _, r in load_rows(name, "test")]
    originals = [r[k] for r in rows for k in ("orig_chosen", "orig_rejected")]
    rewrites = [r[k] for r in rows for k in ("chosen", "rejected")]
    return rewrite_quality(originals, rewrites, tokenize, paired=True)


def _line(where: str) -> int | None:
    m = re.search(r":(\d+)$", where)
    return int(m.group(1)) if m else None


def _top(tokens: list[str], terms: list[float], k: int = TOP_TOKENS) -> list[list]:
    order = np.argsort(-np.abs(np.asarray(terms)))[:k]
    return [[tokens[i], float(terms[i]), int(i)] for i in order]


def flips(cell_ex: dict, cell_im: dict, shift_map: dict, original: str = "ultrafeedback") -> list[dict]:
    """Token-level pairs the IM-RM gets wrong (r+ < r−) and the EX-RM right (r+ > r−), in one seed's cells,
    each with its per-token IM rewards β(ln π_θ − ln π_ref), their largest terms, and how both RMs did
    on the same pair before the rewrite (the ``original`` set's pair on the same row, if evaluated)."""
    orig_rows = {_line(w): i for i, w in enumerate(cell_im["where"].get(original, []))}
    out = []
    for name, shift in shift_map.items():
        if shift != "token_level" or name not in cell_im["rewards"]:
            continue
        r_ex, r_im = cell_ex["rewards"][name], cell_im["rewards"][name]
        toks = cell_im["tokens"].get(name)  # (None: a reward type with no per-token terms, the hybrid)
        for i in range(len(r_im)):
            if not (r_im[i, 0] < r_im[i, 1] and r_ex[i, 0] > r_ex[i, 1]):
                continue
            tok = toks[i] if toks else {"where": cell_im["where"][name][i]}
            j = orig_rows.get(_line(tok["where"]))
            before = None
            if j is not None:
                oi, oe = cell_im["rewards"][original][j], cell_ex["rewards"][original][j]
                before = {"where": cell_im["where"][original][j], "im_rm": oi.tolist(), "ex_rm": oe.tolist()}
                before["im_rm_correct"], before["ex_rm_correct"] = bool(oi[0] > oi[1]), bool(oe[0] > oe[1])
            tops = {
                "chosen_top": _top(tok["chosen_tokens"], tok["chosen_terms"]) if toks else None,
                "rejected_top": _top(tok["rejected_tokens"], tok["rejected_terms"]) if toks else None,
            }
            out.append(
                {"set": name, "where": tok["where"], "im_rm": r_im[i].tolist(), "ex_rm": r_ex[i].tolist(),
                 **tops, "original": before, **tok}
            )  # fmt: skip
    return out


def training_overlap(train, evaluated) -> dict:
    """How many evaluated pairs share the prompt, or the prompt and the chosen response, with a
    training pair (the RewardMATH splits share problems; a shared chosen solution is a seen answer)."""
    prompts = {p.prompt for p in train}
    chosen = {(p.prompt, p.chosen) for p in train}
    return {
        "n": len(evaluated),
        "same_prompt": sum(p.prompt in prompts for p in evaluated),
        "same_prompt_and_chosen": sum((p.prompt, p.chosen) in chosen for p in evaluated),
    }


def mean_by_shift(eval_: dict) -> dict:
    """Mean accuracy of each RM over the sets of each shift type."""
    out = {}
    for shift in ("in_distribution", *SHIFT_TYPES):
        sets = [e for e in eval_.values() if e["shift"] == shift]
        if sets:
            out[shift] = {m: float(np.mean([e[m]["accuracy"] for e in sets])) for m in ("ex_rm", "im_rm")}
    return out


def analyze(cells: dict, datas: dict, shift_map: dict, objectives, config: dict, *, n_boot: int, tokenize):
    """cells[seed][objective] = shifts_report.load_cell(...); datas[seed] = ShiftData → results dict."""
    ex, im = objectives
    seeds = list(cells)
    eval_ = {}
    for name, shift in shift_map.items():
        for s in seeds:
            if cells[s][ex]["where"][name] != cells[s][im]["where"][name]:
                raise ValueError(f"seed {s}, set {name}: the two RMs were evaluated on different pairs")
        comp = set_comparison(
            [cells[s][ex]["rewards"][name] for s in seeds],
            [cells[s][im]["rewards"][name] for s in seeds],
            n_boot=n_boot,
            seed=zlib.crc32(name.encode()),
        )
        d = datas[seeds[0]]
        eval_[name] = {
            "shift": shift,
            **comp,
            "n_available": d.n_available.get(name),
            "dropped_too_long": d.dropped_too_long.get(name),
            "overlap_with_training": training_overlap(d.train, d.eval.get(name, [])),
        }
    cells_by_shift = {t: [e for e in eval_.values() if e["shift"] == t] for t in SHIFT_TYPES}
    flip_rows = flips(cells[seeds[0]][ex], cells[seeds[0]][im], shift_map)
    return {
        "config": {**config, "objectives": list(objectives)},
        "eval": eval_,
        "win_rate": {t: win_rates([e["winner"] for e in c]) for t, c in cells_by_shift.items()},
        "win_rate_plain": {t: win_rates([e["winner_plain"] for e in c]) for t, c in cells_by_shift.items()},
        "mean_accuracy": mean_by_shift(eval_),
        "dropped_too_long": {n: e["dropped_too_long"] for n, e in eval_.items()},
        "rewrite_quality": {
            n: rewrite_set_quality(n, tokenize) for n, t in shift_map.items() if t == "token_level"
        },
        "flips": {
            "n": {
                n: sum(f["set"] == n for f in flip_rows) for n, t in shift_map.items() if t == "token_level"
            },
            "im_rm_correct_before_rewrite": sum(
                bool(f["original"] and f["original"]["im_rm_correct"]) for f in flip_rows
            ),
            "rows": flip_rows,
        },
        "models": {m: cells[seeds[0]][m]["summary"]["model"] for m in objectives},
        "seconds": {m: sum(cells[s][m]["summary"]["seconds"] for s in seeds) for m in objectives},
    }


def mitigation_effect(plain: list[dict], mitigated: list[dict], shift_map: dict, *, n_boot: int) -> dict:
    """The implicit RM trained with a mitigation against the plain one (per seed, cells of
    shifts_report.load_cell, evaluated on the same pairs): per set, both accuracies and the paired
    difference mitigated − plain with its 95 % bootstrap CI; per shift type, the mean difference (the
    in-distribution cost against the token-level gain)."""
    names = ("mitigated", "plain")
    sets = {}
    for name, shift in shift_map.items():
        if any(m["where"][name] != p["where"][name] for m, p in zip(mitigated, plain, strict=True)):
            raise ValueError(
                f"set {name}: the plain and the mitigated IM-RM were evaluated on different pairs"
            )
        comp = set_comparison(
            [m["rewards"][name] for m in mitigated],
            [p["rewards"][name] for p in plain],
            n_boot=n_boot,
            seed=zlib.crc32(name.encode()),
            names=names,
        )
        sets[name] = {"shift": shift, **{k: comp[k] for k in (*names, "diff", "diff_ci95", "winner")}}
    by_shift = {
        t: float(np.mean([e["diff"] for e in sets.values() if e["shift"] == t]))
        for t in ("in_distribution", *SHIFT_TYPES)
        if any(e["shift"] == t for e in sets.values())
    }
    return {"sets": sets, "mean_diff_by_shift": by_shift}


def combine(runs: list[dict], labels: list[str], command: str = "") -> dict:
    """Several finished runs (results.json dicts) → win rates over all their (run, set) cells, pooled
    and per training set (``by_train_set``: the like-for-like numbers beside the paper's, which are
    per training set)."""
    cells = []
    for label, res in zip(labels, runs, strict=True):
        model = res.get("models", {}).get("ex_rm", {}).get("model", "?")
        for name, e in res["eval"].items():
            if e["shift"] in SHIFT_TYPES:
                cells.append(
                    {
                        "run": label,
                        "model": model,
                        "train_set": res["config"].get("train_set"),
                        "set": name,
                        "shift": e["shift"],
                        "ex_rm": e["ex_rm"]["accuracy"],
                        "im_rm": e["im_rm"]["accuracy"],
                        "diff_ci95": e["diff_ci95"],
                        "winner": e["winner"],
                        "winner_plain": e["winner_plain"],
                    }
                )
    by = {t: [c for c in cells if c["shift"] == t] for t in SHIFT_TYPES}
    train_sets = list(dict.fromkeys(c["train_set"] for c in cells))
    return {
        "runs": labels,
        "command": command,
        "cells": cells,
        "win_rate": {t: win_rates([c["winner"] for c in cs]) for t, cs in by.items()},
        "win_rate_plain": {t: win_rates([c["winner_plain"] for c in cs]) for t, cs in by.items()},
        # like for like: the paper reports its win rates per training set
        "by_train_set": {
            ts: {
                rule: {t: win_rates([c[key] for c in cs if c["train_set"] == ts]) for t, cs in by.items()}
                for rule, key in (("win_rate", "winner"), ("win_rate_plain", "winner_plain"))
            }
            for ts in train_sets
        },
    }
