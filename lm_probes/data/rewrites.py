"""How much a rewrite (paraphrase, translation) changes a response's surface: the quality measures of
``rmgap shifts``, on (original, rewrite) response pairs.

    token_overlap(ids_original, ids_rewrite)               # multiset Jaccard of token ids, 1 = same tokens
    rewrite_quality(originals, rewrites, tokenize)         # means over the responses + chrF, BLEU

Token overlap here is the multiset Jaccard index |A ∩ B| / |A ∪ B| of the two token-id bags under the
model's tokenizer: 1 for a text with itself, near 0 for texts sharing no token. The paper's authors
logged 0.023 (paraphrased), 0.019 (French), 0.021 (Spanish) and 0.048 for an original with itself, so
theirs is a different, unnormalised quantity; to calibrate ours we report beside it the overlap of
each original with an *unrelated* original response (the next pair's), the floor a rewrite with no
shared surface would reach. chrF and BLEU are sacrebleu's corpus scores (rewrites as hypotheses,
originals as the single reference); for translations they measure surface change, not meaning.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np


def token_overlap(a, b) -> float:
    """Multiset Jaccard index of two token sequences (any hashables): |A ∩ B| / |A ∪ B|, 0 if both empty."""
    ca, cb = Counter(a), Counter(b)
    union = sum((ca | cb).values())
    return sum((ca & cb).values()) / union if union else 0.0


def rewrite_quality(
    originals: list[str], rewrites: list[str], tokenize: Callable[[str], list], *, paired: bool = False
) -> dict:
    """Surface change of each rewrite from its original (same order, N ≥ 2 responses).

    → token_overlap (mean multiset Jaccard), token_overlap_unrelated (each original vs the next one),
    chrf, bleu (sacrebleu, 0–100), length_ratio_chars and length_ratio_tokens (total rewrite length /
    total original length: a few very short originals would dominate a mean of ratios), n.
    ``paired``: the responses are (chosen, rejected) of consecutive pairs, so "the next one" is the same
    prompt's other response half the time and another prompt's the other half; the two floors are then
    also reported apart: token_overlap_unrelated_same_prompt (chosen vs rejected of one pair) and
    token_overlap_unrelated_other_prompt (a pair's rejected vs the next pair's chosen).
    """
    import sacrebleu

    if len(originals) != len(rewrites) or len(originals) < 2:
        raise ValueError(f"need ≥ 2 (original, rewrite) pairs, got {len(originals)} and {len(rewrites)}")
    tok_o = [tokenize(t) for t in originals]
    tok_r = [tokenize(t) for t in rewrites]
    shifted = tok_o[1:] + tok_o[:1]
    floor = [token_overlap(o, u) for o, u in zip(tok_o, shifted, strict=True)]
    split = {}
    if paired:
        if len(originals) % 2:
            raise ValueError(
                "paired=True needs (chosen, rejected) of whole pairs: an even number of responses"
            )
        split = {
            "token_overlap_unrelated_same_prompt": float(np.mean(floor[0::2])),
            "token_overlap_unrelated_other_prompt": float(np.mean(floor[1::2])),
        }
    return {
        **split,
        "token_overlap": float(np.mean([token_overlap(o, r) for o, r in zip(tok_o, tok_r, strict=True)])),
        "token_overlap_unrelated": float(np.mean(floor)),
        "chrf": float(sacrebleu.corpus_chrf(rewrites, [originals]).score),
        "bleu": float(sacrebleu.corpus_bleu(rewrites, [originals]).score),
        "length_ratio_chars": sum(map(len, rewrites)) / sum(map(len, originals)),
        "length_ratio_tokens": sum(map(len, tok_r)) / sum(map(len, tok_o)),
        "n": len(originals),
    }
