"""Token-level transformations: the same meaning in other tokens, made offline (issue 22). A registry
like the reward registry: each entry defined once, deterministic given a seed.

    from lm_probes.data.transforms import TRANSFORMS, get_transform, transform_pairs
    t = get_transform("contractions")
    out = t.apply("It is not what I would have said.", strength=1.0, seed=0)
    out.text, out.sites, out.changed        # "It's not what I'd have said.", 2 sites, 2 changed

``strength`` is the share of a text's eligible sites rewritten (0: the identity; 1: every site); a
rewrite that fails the transformation's meaning check is returned unchanged and counted
(``Rewrite.refused``). Registered (``kinds``: the texts it applies to; ``rmgap transform --list``):

    contractions        it is ↔ it's, do not ↔ don't, …                          general
    synonyms            a curated table (calculate ↔ compute, begin ↔ start, …)   general
    british_american    color ↔ colour, analyze ↔ analyse, -ize ↔ -ise            general
    number_format       1000 ↔ 1,000                                              general, math
    number_words        2–12 ↔ two–twelve in prose                                general
    list_style          bullets - ↔ *, 1. ↔ 1), **bold** ↔ __bold__               general
    spaced_punctuation  "word," → "word ,"  (reWordBench control)                 general, math, code
    added_quotes        sentences wrapped in "…"  (reWordBench control)           general, math
    latex_macros        \\frac ↔ \\dfrac, \\cdot ↔ \\times, \\le ↔ \\leq, …          math
    variable_renaming   the solution's own variables, consistently               math
    step_labels         "1." / "1)" ↔ "Step 1:"                                   math
    final_answer        \\boxed{X} → a closing "# Answer" section (reWordBench)    math
    code_identifiers    Python locals renamed consistently                        code
    code_style          Python indentation 4 ↔ 2 and comment spacing              code
    combined            all of the general and math ones in turn (a larger dose)  general, math

Prose transformations leave LaTeX and code alone; the word tables are in ``tables.py``.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np

import lm_probes.data.transforms.code
import lm_probes.data.transforms.latex
import lm_probes.data.transforms.text  # noqa: F401
from lm_probes.data.pairs import prompt_text
from lm_probes.data.transforms.core import (
    TRANSFORMS,
    Rewrite,
    Transform,
    answer_of,
    get_transform,
    numbers_of,
    register,
)

KINDS = ("general", "math", "code")
__all__ = ["KINDS", "TRANSFORMS", "Rewrite", "Transform", "answer_of", "get_transform", "numbers_of"]
__all__ += ["applicable", "register", "transform_pairs"]


def applicable(kinds) -> list[str]:
    """The registered transformations for texts of these kinds (a math solution is general and math)."""
    return [n for n, t in TRANSFORMS.items() if set(t.kinds) & set(kinds)]


def _combined(members: tuple[str, ...]):
    """A whole-text rewrite applying every member in turn at the same strength (each with its own
    seed, each checking its own meaning: a member that refuses leaves its part unchanged)."""

    def rewrite(text: str, strength: float, rng, context: str):
        sites = changed = 0
        for n in members:
            r = TRANSFORMS[n].apply(text, strength, int(rng.integers(2**31)), context)
            text, sites, changed = r.text, sites + r.sites, changed + r.changed
        return text, sites, changed

    return rewrite


MATH_MEMBERS = tuple(applicable(("general", "math")))
register(
    Transform(
        "combined",
        "every transformation that applies to math solutions, in turn, at the same strength",
        ("general", "math"),
        rewrite=_combined(MATH_MEMBERS),
    )
)


def response_seed(seed: int, text: str) -> int:
    """The seed of one response's rewrite: from ``seed`` and the text itself, so that the same response
    in several pairs (a problem's chosen solution) is rewritten the same way."""
    return int(np.random.SeedSequence([seed, zlib.crc32(text.encode())]).generate_state(1)[0])


def transform_pairs(pairs: list, t: Transform, strength: float, seed: int) -> tuple[list[dict], dict]:
    """Both responses of every pair rewritten by ``t`` (prompts kept; each response seeded by
    :func:`response_seed`; the prompt is the context whose variables are kept) → (rows in the shipped
    rewrites' schema: prompt, chosen, rejected, orig_chosen, orig_rejected; counts: rows,
    rows_changed, responses_refused, sites, sites_changed)."""
    rows, counts = [], dict(rows=len(pairs), rows_changed=0, responses_refused=0, sites=0, sites_changed=0)
    for p in pairs:
        out = []
        for text in (p.chosen, p.rejected):
            r = t.apply(text, strength, response_seed(seed, text), context=prompt_text(p.prompt))
            counts["sites"] += r.sites
            counts["sites_changed"] += r.changed
            counts["responses_refused"] += r.refused
            out.append(r.text)
        counts["rows_changed"] += out != [p.chosen, p.rejected]
        prompt = p.prompt if isinstance(p.prompt, str) else [dict(role=r, content=c) for r, c in p.prompt]
        rows.append(dict(prompt=prompt, chosen=out[0], rejected=out[1]))
        rows[-1].update(orig_chosen=p.chosen, orig_rejected=p.rejected)
    return rows, counts


def transformed_pairs(pairs: list, t: Transform, strength: float, seed: int) -> tuple[list, dict]:
    """The pairs themselves with both responses rewritten (:func:`transform_pairs`; every other field,
    ``where`` included, kept) → (pairs, counts)."""
    rows, counts = transform_pairs(pairs, t, strength, seed)
    return [
        replace(p, chosen=r["chosen"], rejected=r["rejected"]) for p, r in zip(pairs, rows, strict=True)
    ], counts
