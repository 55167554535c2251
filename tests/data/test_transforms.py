"""lm_probes.data.transforms: strength 0 is the identity, 1 rewrites every site, the same seed gives
the same output, the share rewritten follows the strength, both-way tables invert, and each meaning
check refuses a deliberately broken rewrite (the text is returned unchanged and counted)."""

from __future__ import annotations

import ast
import re
from dataclasses import replace

import numpy as np
import pytest

from lm_probes.data.pairs import Pair
from lm_probes.data.transforms import (
    TRANSFORMS,
    answer_of,
    applicable,
    get_transform,
    numbers_of,
    transform_pairs,
)
from lm_probes.data.transforms.core import choose_sites
from lm_probes.data.transforms.tables import BRITISH, CONTRACTIONS, SYNONYMS

PROSE = (
    "It is not what I would have said. They are here, do not worry: 1000 of them. Therefore we "
    "calculate the color at the center, and we analyze it again. There are 3 cats and two dogs.\n"
    "- first item\n- second item\n1. One step\n2) Another step\nThis is **bold** text."
)
MATH = (
    r"Let $n$ be the number of rows, so $n \cdot k = 12$ and $\frac{n}{2} \le 10000$. "
    "We need: 1. Divide 57 by 3.\n2) Then subtract.\n"
    r"Therefore, the answer is $\boxed{\frac{1}{2}}$."
)
CODE = (
    "Here:\n```python\ndef f(x):\n    total = x + 1  # add one\n    for i in range(3):\n"
    "        total += i\n    return total\n```\n"
)
EXAMPLES = {  # a text with sites, and the prompt it answers
    **{n: (PROSE, "Say it.") for n in applicable(("general",))},
    **{
        n: (MATH, "What is $k$ if $k > 0$?")
        for n in applicable(("math",))
        if "general" not in TRANSFORMS[n].kinds
    },
    "code_identifiers": (CODE, "Write f."),
    "code_style": (CODE, "Write f."),
}


def test_every_registered_transformation_has_an_example_and_at_least_eight_exist():
    assert set(EXAMPLES) == set(TRANSFORMS) and len(TRANSFORMS) >= 8
    assert all(re.fullmatch(r"[a-z_]+", n) for n in TRANSFORMS)


SINGLE = [n for n in TRANSFORMS if n != "combined"]


@pytest.mark.parametrize("name", SINGLE)
def test_strength_zero_is_the_identity_and_one_rewrites_every_site(name):
    t = get_transform(name)
    text, context = EXAMPLES[name]
    r0, r1 = t.apply(text, 0.0, seed=3, context=context), t.apply(text, 1.0, seed=3, context=context)
    assert r0.text == text and r0.changed == 0 and r0.sites > 0
    assert r1.changed == r1.sites and r1.text != text and not r1.refused
    assert numbers_of(r1.text.split("# Answer")[0]) == numbers_of(text) or name == "number_words"
    assert answer_of(r1.text) == answer_of(text) or name == "variable_renaming"


@pytest.mark.parametrize("name", SINGLE)
def test_the_same_seed_gives_the_same_output_and_the_share_follows_the_strength(name):
    t = get_transform(name)
    text, context = EXAMPLES[name]
    assert t.apply(text, 0.5, seed=7, context=context) == t.apply(text, 0.5, seed=7, context=context)
    sites = t.apply(text, 0.0, seed=7, context=context).sites
    for s in (0.25, 0.5, 0.75):  # ⌊s·n⌋ or ⌈s·n⌉, and s·n on average over seeds
        changed = [t.apply(text, s, seed=k, context=context).changed for k in range(200)]
        assert set(changed) <= {int(np.floor(s * sites)), int(np.ceil(s * sites))}
        assert abs(np.mean(changed) - s * sites) < 0.15 * max(1, s * sites)


def test_combined_applies_every_member_in_turn_and_moves_more_than_any_one():
    import difflib

    from lm_probes.data.transforms import MATH_MEMBERS

    t = get_transform("combined")
    assert set(MATH_MEMBERS) == set(applicable(("general", "math"))) - {"combined"}
    assert t.apply(MATH, 0.0, 5).text == MATH and t.apply(MATH, 1.0, 5) == t.apply(MATH, 1.0, 5)
    base = MATH + "\n" + PROSE
    moved = lambda new: 1 - difflib.SequenceMatcher(None, base, new).ratio()  # noqa: E731
    everything = moved(t.apply(base, 1.0, 5).text)
    assert all(everything > moved(get_transform(n).apply(base, 1.0, 5).text) for n in MATH_MEMBERS)


def test_choose_sites_share_is_the_strength_also_for_single_site_texts():
    rng = np.random.default_rng(0)
    picks = [len(choose_sites(1, 0.25, rng)) for _ in range(4000)]
    assert abs(np.mean(picks) - 0.25) < 0.03
    assert choose_sites(5, 0.0, rng) == [] and choose_sites(5, 1.0, rng) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "name",
    [
        "contractions",
        "synonyms",
        "british_american",
        "number_format",
        "number_words",
        "list_style",
        "latex_macros",
    ],
)
def test_both_way_transformations_invert(name):
    t = get_transform(name)
    text, context = EXAMPLES[name]
    once = t.apply(text, 1.0, seed=0, context=context).text
    assert t.apply(once, 1.0, seed=0, context=context).text == text


def test_word_tables_are_one_to_one_and_a_few_hundred_entries():
    for table in (CONTRACTIONS, SYNONYMS, BRITISH):
        words = [*table, *table.values()]
        assert len(set(words)) == len(words)
    assert 2 * len(SYNONYMS) >= 300


def test_examples_by_hand():
    g = get_transform
    assert g("contractions").apply("I am sure it is fine.", 1.0, 0).text == "I'm sure it's fine."
    assert g("number_format").apply("1000 and 3.14159 and 10000.5", 1.0, 0).text == (
        "1,000 and 3.14159 and 10000.5"
    )
    assert g("latex_macros").apply(r"$\left( a \le b \right) \neg$", 1.0, 0).text == (
        r"$\left( a \leq b \right) \neg$"
    )
    assert g("spaced_punctuation").apply("Costs 3.5, ok.", 1.0, 0).text == "Costs 3.5 , ok ."
    assert g("synonyms").apply(r"We calculate $\begin{x}$ to begin.", 1.0, 0).text == (
        r"We compute $\begin{x}$ to start."  # (LaTeX left alone)
    )
    assert g("british_american").apply("We analyze the colour.", 1.0, 0).text == "We analyse the color."
    assert g("number_words").apply("There are 3 cats, two dogs, 2.5 kg and 2) a list.", 1.0, 0).text == (
        "There are three cats, 2 dogs, 2.5 kg and 2) a list."
    )
    assert g("step_labels").apply("Plan: 1. Add.\n2) Stop.\nStep 3: End.", 1.0, 0).text == (
        "Plan: Step 1: Add.\nStep 2: Stop.\n3. End."
    )
    assert (
        g("final_answer").apply(r"So it is $\boxed{.5}$.", 1.0, 0).text == "So it is $.5$.\n\n# Answer\n\n.5"
    )
    assert g("added_quotes").apply("First one. Then $x$ two.", 1.0, 0).text == '"First one." Then $x$ two.'
    assert g("list_style").apply("- a\n1. b\n**c**", 1.0, 0).text == "* a\n1) b\n__c__"


def test_variable_renaming_is_consistent_and_never_touches_the_prompts_names():
    t = get_transform("variable_renaming")
    text = (
        r"Let $n$ be the rows and $m$ the columns of $x$; then $n m$ and $\frac{n}{m} = x$, so $\boxed{x}$."
    )
    r = t.apply(text, 1.0, seed=1, context="Find $x$.")
    assert r.sites == 2 and r.changed == 2  # n and m, not the prompt's x; "$n m$" has spaces: still n, m
    new_n = re.search(r"Let \$(\w)\$", r.text).group(1)
    new_m = re.search(r"and \$(\w)\$ the", r.text).group(1)
    assert {new_n, new_m}.isdisjoint(set("nmx")) and new_n != new_m and new_n.islower()
    assert r.text == text.replace("$n$", f"${new_n}$").replace("$m$", f"${new_m}$").replace(
        "$n m$", f"${new_n} {new_m}$"
    ).replace(r"\frac{n}{m}", rf"\frac{{{new_n}}}{{{new_m}}}")
    assert answer_of(r.text) == "x"
    # a variable the prose names, or one inside a letter run ("dx"), is not renamed
    r = t.apply(r"Let $t$ be such that t is even; $\int f\,dt$ and $u$.", 1.0, 0)
    assert r.sites == 2 and r.text.startswith("Let $t$ be such that t is even;") and r"\,dt$" in r.text


def test_code_transformations_keep_the_syntax_tree():
    for name in ("code_identifiers", "code_style"):
        text, context = EXAMPLES[name]
        r = get_transform(name).apply(text, 1.0, seed=0, context=context)
        new = re.search(r"```python\n(.*?)```", r.text, re.S).group(1)
        ast.parse(new)
        if name == "code_style":
            assert ast.dump(ast.parse(new)) == ast.dump(
                ast.parse(re.search(r"```python\n(.*?)```", text, re.S).group(1))
            )
    renamed = get_transform("code_identifiers").apply(CODE, 1.0, 0).text
    assert (
        "total" not in re.sub(r"total_[a-z]", "", renamed) and "def f(x)" in renamed and "range(3)" in renamed
    )


def test_each_meaning_check_catches_a_broken_rewrite():
    # numbers: a rewrite that drops a digit
    broken = replace(get_transform("number_format"), name="broken", replace=lambda m: m.group(0)[:-1])
    r = broken.apply("We sold 1000 units.", 1.0, seed=0)
    assert r.refused and r.text == "We sold 1000 units." and r.changed == 0 and r.sites == 1
    assert replace(broken, check=None).apply("We sold 1000 units.", 1.0, seed=0).text == "We sold 100 units."
    # numbers written in words: "three" must stay three
    nw = get_transform("number_words")
    assert replace(nw, replace=lambda m: "four").apply("I saw 3 cats.", 1.0, 0).refused
    # the final answer's value: a sign lost (the numbers alone would not see it)
    fa = get_transform("final_answer")
    lost = replace(
        fa, rewrite=lambda t, s, rng, c: (t.replace(r"\boxed{-7}", "-7") + "\n\n# Answer\n\n7", 1, 1)
    )
    assert lost.apply(r"It is $\boxed{-7}$.", 1.0, 0).refused
    assert not fa.apply(r"It is $\boxed{-7}$.", 1.0, 0).refused
    # a LaTeX macro that becomes a number
    assert (
        replace(get_transform("latex_macros"), replace=lambda m: "2").apply(r"$a \le b$", 1.0, seed=0).refused
    )
    # Python that no longer parses
    ci = get_transform("code_identifiers")
    bad = replace(ci, rewrite=lambda t, s, rng, c: (t.replace("total = x", "total = = x"), 1, 1))
    assert bad.apply(CODE, 1.0, 0).refused and not ci.apply(CODE, 1.0, 0).refused


def test_transform_pairs_rewrites_a_shared_response_the_same_way_in_every_pair():
    chosen = "It is not here, and it is not there; it is what it is."
    pairs = [Pair("Q?", chosen, f"No, it is {k}.") for k in range(5)]
    rows, counts = transform_pairs(pairs, get_transform("contractions"), 0.5, seed=3)
    assert len({r["chosen"] for r in rows}) == 1 and rows[0]["chosen"] != chosen
    assert counts["rows"] == 5 and counts["sites"] == 4 * 5 + 5


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        get_transform("contractions").apply("it is", 1.5, seed=0)
    with pytest.raises(ValueError, match="unknown transformation 'shuffle'; registered: "):
        get_transform("shuffle")


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_token_overlap_falls_as_the_strength_rises(name):
    from lm_probes.data.rewrites import token_overlap

    t = get_transform(name)
    text, context = EXAMPLES[name]

    def words(x):  # words and runs of white space (indentation counts)
        return re.findall(r"\s+|\S+", x)

    def overlap(s):  # mean over seeds
        return np.mean(
            [token_overlap(words(text), words(t.apply(text, s, k, context).text)) for k in range(30)]
        )

    o = [overlap(s) for s in (0.0, 0.25, 0.5, 1.0)]
    assert o[0] == 1.0 and o[3] < 1.0
    assert o[0] >= o[1] >= o[2] >= o[3] and o[1] > o[3]
