"""Splitting preference pairs so that no test prompt is seen in training, and the paper's length rule.

    train, test = split_by_prompt(pairs, held_out=0.3, seed=0)     # whole problems on one side
    keep, n_long, n_same = length_rule(tokenizer, pairs, max_part=512, max_length=8192)

A problem (RewardMATH) or an instruction (UltraFeedback) often has several pairs that share the prompt
and the chosen response; a split by pair would put the same chosen solution on both sides. Here every
distinct prompt goes wholly to one side.
"""

from __future__ import annotations

import numpy as np

from lm_probes.data.pairs import Pair, encode_pairs


def split_by_prompt(pairs: list[Pair], held_out: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(train, test): the distinct prompts in a seeded order, the first ``round(held_out · n)`` of them
    held out with all their pairs; each side keeps the pairs' input order."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    prompts = list(dict.fromkeys(p.prompt for p in pairs))
    order = np.random.default_rng([seed, 22]).permutation(len(prompts))
    n_test = round(held_out * len(prompts))
    if n_test in (0, len(prompts)):
        raise ValueError(f"{len(prompts)} distinct prompts cannot be split with held_out={held_out}")
    test = {prompts[i] for i in order[:n_test]}
    return [p for p in pairs if p.prompt not in test], [p for p in pairs if p.prompt in test]


def length_rule(tokenizer, pairs: list[Pair], max_part: int | None, max_length: int | None):
    """The paper's drop rule (a pair whose templated prompt or either response is over ``max_part``
    tokens is left out, never truncated) → (indices of the kept pairs, how many were too long, how many
    had identical responses)."""
    e = encode_pairs(tokenizer, pairs, max_length=max_length, max_part_length=max_part)
    kept = {id(p) for p in e.kept}
    keep = [i for i, p in enumerate(pairs) if id(p) in kept]
    return keep, len(e.dropped["too_long"]), len(e.dropped["identical"])
