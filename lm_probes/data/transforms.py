"""Token-level transformations: the same meaning in other tokens, made offline (issue 22, first part).
A registry like the reward registry: each entry defined once, deterministic given a seed.

    from lm_probes.data.transforms import TRANSFORMS, get_transform
    t = get_transform("contractions")
    out = t.apply("It is not what I would have said.", strength=1.0, seed=0)
    out.text, out.sites, out.changed        # "It's not what I'd have said.", 2 sites, 2 changed

A transformation finds its eligible *sites* in a text (a contraction, a number, a LaTeX macro, …)
and rewrites a seeded fraction ``strength`` of them (0: the identity; 1: every site). Each one checks
the meaning it can check (numbers keep their value, a math text keeps its numbers): a text whose
rewrite fails the check is returned unchanged and counted (``Rewrite.refused``), never changed wrongly.

Registered so far (``kinds``: the texts it applies to):
    contractions      "it is" ↔ "it's", "do not" ↔ "don't", …      general
    number_format     1000 ↔ 1,000 (integers of 4+ digits, years included; decimals kept)   general, math
    latex_macros      \\frac ↔ \\dfrac, \\cdot ↔ \\times, \\le ↔ \\leq, …   math
    spaced_punctuation  "word," → "word ," (a reWordBench control)  general, math, code
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rewrite:
    text: str
    sites: int  # eligible places in the input
    changed: int  # places rewritten (0 when refused)
    refused: bool = False  # the meaning check failed: ``text`` is the input


@dataclass(frozen=True)
class Transform:
    name: str
    summary: str
    kinds: tuple[str, ...]  # "general", "math", "code"
    pattern: re.Pattern  # one match = one eligible site
    replace: Callable[[re.Match], str]  # the rewrite of one site
    check: Callable[[str, str], bool] | None = None  # (original, rewritten) → meaning kept?

    def apply(self, text: str, strength: float, seed: int) -> Rewrite:
        """Rewrite a seeded ``strength`` fraction of the eligible sites (rounded; 0 is the identity)."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"{self.name}: strength must be in [0, 1], got {strength}")
        matches = list(self.pattern.finditer(text))
        k = round(strength * len(matches))
        if k == 0:
            return Rewrite(text, len(matches), 0)
        rng = np.random.default_rng([seed, len(text), len(matches)])
        chosen = set(rng.choice(len(matches), size=k, replace=False).tolist())
        out, last = [], 0
        for i, m in enumerate(matches):
            out.append(text[last : m.start()])
            out.append(self.replace(m) if i in chosen else m.group(0))
            last = m.end()
        new = "".join(out) + text[last:]
        if self.check is not None and not self.check(text, new):
            return Rewrite(text, len(matches), 0, refused=True)
        return Rewrite(new, len(matches), k)


TRANSFORMS: dict[str, Transform] = {}


def register(t: Transform) -> Transform:
    if t.name in TRANSFORMS:
        raise ValueError(f"transformation {t.name!r} is already registered")
    TRANSFORMS[t.name] = t
    return t


def get_transform(name: str) -> Transform:
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transformation {name!r}; registered: {', '.join(TRANSFORMS)}")
    return TRANSFORMS[name]


def _both_ways(pairs: dict[str, str]) -> tuple[re.Pattern, Callable[[re.Match], str]]:
    """A pattern matching either side of each pair (whole words, case kept on the first letter) and
    the replacement by the other side."""
    table = {**pairs, **{v: k for k, v in pairs.items()}}
    keys = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w'])(" + "|".join(map(re.escape, keys)) + r")(?![\w'])", re.IGNORECASE)

    def replace(m: re.Match) -> str:
        word = m.group(0)
        out = table[word.lower()]
        return out[0].upper() + out[1:] if word[0].isupper() else out

    return pattern, replace


def numbers_of(text: str) -> list[float]:
    """The numbers a text states, thousands separators ignored (the meaning check of numbers)."""
    found = re.findall(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", text)
    return [float(x.replace(",", "")) for x in found]


def _same_numbers(a: str, b: str) -> bool:
    return numbers_of(a) == numbers_of(b)


CONTRACTIONS = {
    "it is": "it's", "do not": "don't", "does not": "doesn't", "did not": "didn't", "is not": "isn't",
    "are not": "aren't", "was not": "wasn't", "were not": "weren't", "can not": "can't",
    "will not": "won't", "would not": "wouldn't", "should not": "shouldn't",
    "could not": "couldn't", "i am": "i'm", "i would": "i'd", "i will": "i'll", "i have": "i've",
    "you are": "you're", "we are": "we're", "they are": "they're", "that is": "that's",
    "there is": "there's", "let us": "let's", "have not": "haven't", "has not": "hasn't",
}
register(
    Transform(
        "contractions",
        "full forms ↔ contractions (it is ↔ it's, do not ↔ don't, …)",
        ("general",),
        *_both_ways(CONTRACTIONS),
        check=_same_numbers,
    )
)


def _thousands(m: re.Match) -> str:
    s = m.group(0)
    return s.replace(",", "") if "," in s else f"{int(s):,}"


register(
    Transform(
        "number_format",
        "integers of 4+ digits ↔ with thousands separators (1000 ↔ 1,000)",
        ("general", "math"),
        re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d{4,})(?![\d,]|\.\d)"),
        _thousands,
        check=_same_numbers,
    )
)

LATEX = {r"\frac": r"\dfrac", r"\cdot": r"\times", r"\le": r"\leq", r"\ge": r"\geq", r"\ne": r"\neq"}
_LATEX_BOTH = {**LATEX, **{v: k for k, v in LATEX.items()}}
_LATEX_NAMES = "|".join(map(re.escape, sorted(_LATEX_BOTH, key=len, reverse=True)))
register(
    Transform(
        "latex_macros",
        r"equivalent LaTeX macros (\frac ↔ \dfrac, \cdot ↔ \times, \le ↔ \leq, \ge ↔ \geq, \ne ↔ \neq)",
        ("math",),
        re.compile(f"({_LATEX_NAMES})(?![A-Za-z])"),  # (not \\left, \\neg, ...)
        lambda m: _LATEX_BOTH[m.group(0)],
        check=_same_numbers,
    )
)
register(
    Transform(
        "spaced_punctuation",
        'a space before , . ; : ! ? after a word ("word," → "word ,"; a reWordBench control)',
        ("general", "math", "code"),
        re.compile(r"(?<=\w)([,.;:!?])(?=\s|$)"),
        lambda m: " " + m.group(0),
        check=_same_numbers,
    )
)


def transform_pairs(pairs: list, t: Transform, strength: float, seed: int) -> tuple[list[dict], dict]:
    """Both responses of every pair rewritten by ``t`` (each with its own seed drawn from ``seed``, the
    row and the side; prompts kept) → (rows in the shipped rewrites' schema: prompt, chosen, rejected,
    orig_chosen, orig_rejected; counts: rows, rows_changed, responses_refused, sites, sites_changed)."""
    rows, counts = [], dict(rows=len(pairs), rows_changed=0, responses_refused=0, sites=0, sites_changed=0)
    for i, p in enumerate(pairs):
        out = []
        for side, text in enumerate((p.chosen, p.rejected)):
            s = int(np.random.SeedSequence([seed, i, side]).generate_state(1)[0])
            r = t.apply(text, strength, s)
            counts["sites"] += r.sites
            counts["sites_changed"] += r.changed
            counts["responses_refused"] += r.refused
            out.append(r.text)
        counts["rows_changed"] += out != [p.chosen, p.rejected]
        rows.append(dict(prompt=p.prompt, chosen=out[0], rejected=out[1]))
        rows[-1].update(orig_chosen=p.chosen, orig_rejected=p.rejected)
    return rows, counts
