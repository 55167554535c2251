"""Transformations of prose (kinds: general; most apply to the prose of math solutions too): word
tables, number style, list and markdown style, and two reWordBench controls (Wu et al., EMNLP 2025).
The word-level ones leave LaTeX and code alone (core.not_prose)."""

from __future__ import annotations

import re

from lm_probes.data.transforms.core import Transform, both_ways, not_prose, numbers_of, register, same_numbers
from lm_probes.data.transforms.tables import BRITISH, CONTRACTIONS, NUMBER_WORDS, SYNONYMS

register(
    Transform(
        "contractions",
        "full forms ↔ contractions (it is ↔ it's, do not ↔ don't, …)",
        ("general",),
        *both_ways(CONTRACTIONS),
        check=same_numbers,
        skip=not_prose,
    )
)
register(
    Transform(
        "synonyms",
        f"a curated table of {len(SYNONYMS)} synonym pairs, both ways (calculate ↔ compute, …)",
        ("general",),
        *both_ways(SYNONYMS),
        check=same_numbers,
        skip=not_prose,
    )
)
register(
    Transform(
        "british_american",
        "American ↔ British spelling (color ↔ colour, analyze ↔ analyse, -ize ↔ -ise, …)",
        ("general",),
        *both_ways(BRITISH),
        check=same_numbers,
        skip=not_prose,
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
        check=same_numbers,
    )
)

_WORDS = {**NUMBER_WORDS, **{v: k for k, v in NUMBER_WORDS.items()}}


def _in_digits(text: str) -> list[float]:
    """numbers_of after the small number words are written in digits."""
    pattern = r"(?<![\w'])(" + "|".join(NUMBER_WORDS.values()) + r")(?![\w'])"
    return numbers_of(re.sub(pattern, lambda m: NUMBER_WORDS_INV[m.group(0).lower()], text, flags=re.I))


NUMBER_WORDS_INV = {v: k for k, v in NUMBER_WORDS.items()}
register(
    Transform(
        "number_words",
        "small numbers in prose: 2–12 ↔ two–twelve (not list labels, not in math or code)",
        ("general",),
        re.compile(
            r"(?<![\w'.,$^_/\\-])(?<!Step )(1[0-2]|[2-9]|"
            + "|".join(NUMBER_WORDS.values())
            + r")(?![\w'%$^_/)]|[.,:]\S|\.\s*$|\.\s)",
            re.IGNORECASE,
        ),
        lambda m: _WORDS[m.group(0).lower()],
        check=lambda a, b: _in_digits(a) == _in_digits(b),
        skip=not_prose,
    )
)

_LIST = {"-": "*", "*": "-", ".": ")", ")": "."}


def _list_site(m: re.Match) -> str:
    if m.group("bold") is not None:
        return f"__{m.group('bold')}__"
    if m.group("under") is not None:
        return f"**{m.group('under')}**"
    return m.group("indent") + m.group("num") + _LIST[m.group("mark")] + " "


register(
    Transform(
        "list_style",
        "markdown style: bullets - ↔ *, numbering 1. ↔ 1), bold **x** ↔ __x__",
        ("general",),
        re.compile(
            r"(?m)^(?P<indent>[ \t]*)(?P<num>\d{0,2})(?P<mark>(?<=\d)[.)]|(?<!\d)[-*]) (?=\S)"
            r"|\*\*(?P<bold>[^*\n]+?)\*\*|__(?P<under>[^_\n]+?)__"
        ),
        _list_site,
        check=same_numbers,
        skip=not_prose,
    )
)
register(
    Transform(
        "spaced_punctuation",
        'a space before , . ; : ! ? after a word ("word," → "word ,"; a reWordBench control)',
        ("general", "math", "code"),
        re.compile(r"(?<=\w)([,.;:!?])(?=\s|$)"),
        lambda m: " " + m.group(0),
        check=same_numbers,
    )
)
register(
    Transform(
        "added_quotes",
        'sentences of prose wrapped in quotation marks ("…"; a reWordBench control)',
        ("general", "math"),
        re.compile(r'(?m)(?:^|(?<=[.!?] ))([A-Z][^.!?\n$`\\"]{3,}[.!?])(?=\s|$)'),
        lambda m: f'"{m.group(0)}"',
        check=same_numbers,
        skip=not_prose,
    )
)
