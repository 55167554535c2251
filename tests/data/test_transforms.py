"""lm_probes.data.transforms: strength 0 is the identity, the same seed gives the same output, the
rewritten share follows the strength, both-way tables invert, and the meaning check refuses a broken
rewrite (the text is returned unchanged and counted)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from lm_probes.data.transforms import TRANSFORMS, Transform, get_transform, numbers_of

TEXTS = {
    "general": "It is not what I would have said. They are here, do not worry: 1000 of them, 12,500 in all.",
    "math": r"We have $\frac{1}{2} \cdot 3 \le 4$ and $x \ne y$, so 10000 \ge 2,500.",
    "code": "def f(x):\n    return x, x + 1. # done; ok!\n",
}


def texts_for(t: Transform) -> list[str]:
    return [TEXTS[k] for k in t.kinds]


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_strength_zero_is_the_identity_and_one_rewrites_every_site(name):
    t = get_transform(name)
    for text in texts_for(t):
        r0, r1 = t.apply(text, 0.0, seed=3), t.apply(text, 1.0, seed=3)
        assert r0.text == text and r0.changed == 0 and r0.sites > 0
        assert r1.changed == r1.sites and r1.text != text and not r1.refused
        assert numbers_of(r1.text) == numbers_of(text)


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_the_same_seed_gives_the_same_output_and_the_share_follows_the_strength(name):
    t = get_transform(name)
    for text in texts_for(t):
        assert t.apply(text, 0.5, seed=7) == t.apply(text, 0.5, seed=7)
        changed = [t.apply(text, s, seed=7).changed for s in (0.0, 0.25, 0.5, 0.75, 1.0)]
        sites = t.apply(text, 0.0, seed=7).sites
        assert changed == [round(s * sites) for s in (0.0, 0.25, 0.5, 0.75, 1.0)]


@pytest.mark.parametrize("name", ["contractions", "number_format", "latex_macros"])
def test_both_way_tables_invert(name):
    t = get_transform(name)
    for text in texts_for(t):
        once = t.apply(text, 1.0, seed=0).text
        assert t.apply(once, 1.0, seed=0).text == text


def test_examples_by_hand():
    assert get_transform("contractions").apply("I am sure it is fine.", 1.0, 0).text == "I'm sure it's fine."
    assert get_transform("number_format").apply("1000 and 3.14159 and 10000.5", 1.0, 0).text == (
        "1,000 and 3.14159 and 10000.5"
    )
    assert get_transform("latex_macros").apply(r"\left( a \le b \right) \neg", 1.0, 0).text == (
        r"\left( a \leq b \right) \neg"
    )
    assert get_transform("spaced_punctuation").apply("Costs 3.5, ok.", 1.0, 0).text == "Costs 3.5 , ok ."


def test_the_meaning_check_refuses_a_broken_rewrite():
    good = get_transform("number_format")
    broken = replace(good, name="broken_numbers", replace=lambda m: m.group(0)[:-1])  # drops a digit
    r = broken.apply("We sold 1000 units.", 1.0, seed=0)
    assert r.refused and r.text == "We sold 1000 units." and r.changed == 0 and r.sites == 1
    lossy = replace(get_transform("latex_macros"), replace=lambda m: "2")  # a macro becomes a number
    assert lossy.apply(r"$a \le b$", 1.0, seed=0).refused
    no_check = replace(broken, check=None)  # without the check the broken rewrite goes through
    assert no_check.apply("We sold 1000 units.", 1.0, seed=0).text == "We sold 100 units."


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        get_transform("contractions").apply("it is", 1.5, seed=0)
    with pytest.raises(ValueError, match="unknown transformation 'synonyms'; registered: contractions"):
        get_transform("synonyms")
    assert all(re.fullmatch(r"[a-z_]+", n) for n in TRANSFORMS)
