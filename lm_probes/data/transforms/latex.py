"""Transformations of math solutions (kinds: math): equivalent LaTeX macros, a consistent renaming of
the solution's own variables, step-label style, and the final answer's format (reWordBench's
``\\boxed{…}`` → a "# Answer" section). Each keeps the numbers, and the final answer's value after
normalisation (core.answer_of)."""

from __future__ import annotations

import re

from lm_probes.data.transforms.core import (
    Transform,
    answer_of,
    boxed,
    choose_sites,
    math_spans,
    register,
    same_answer,
    same_numbers,
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
        check=same_answer,
    )
)

# --- variable renaming -------------------------------------------------------------------------------

_NAMED = re.compile(
    r"\\(?:text|mathrm|mathbb|mathcal|mathbf|operatorname|textbf|begin|end|label)\s*\{[^{}]*\}"
)
_LETTER = re.compile(r"(?<![\\A-Za-z])[A-Za-z](?![A-Za-z])")
_FIXED = set("eidoIlOaA")  # constants, differentials, look-alikes, English words: never renamed
_POOL = "uvwpqrstkmnjhgbcfyxz"


def _math_letters(text: str) -> dict[str, list[tuple[int, int]]]:
    """Single-letter identifiers in the math of ``text`` (not in \\text{…} and the like) → their spans."""
    out: dict[str, list[tuple[int, int]]] = {}
    for a, b in math_spans(text):
        span = text[a:b]
        hidden = [m.span() for m in _NAMED.finditer(span)]
        for m in _LETTER.finditer(span):
            if not any(x <= m.start() < y for x, y in hidden):
                out.setdefault(m.group(0), []).append((a + m.start(), a + m.end()))
    return out


def _entangled(text: str) -> set[str]:
    """Letters a renaming cannot follow: inside letter runs of the math ("dx", "xy", "cm"; macro names
    aside) and standing alone inside \text{…} and the like."""
    out: set[str] = set()
    for a, b in math_spans(text):
        span = text[a:b]
        for m in _NAMED.finditer(span):
            out |= set(_LETTER.findall(m.group(0)[m.group(0).index("{") + 1 : -1]))
        bare = re.sub(r"\\[A-Za-z]+", " ", _NAMED.sub(" ", span))
        out |= set("".join(re.findall(r"[A-Za-z]{2,}", bare)))
    return out


def _prose_letters(text: str) -> set[str]:
    """Single letters standing alone in the prose (a variable named outside the math)."""
    prose = text
    for a, b in reversed(math_spans(text)):
        prose = prose[:a] + " " * (b - a) + prose[b:]
    return set(re.findall(r"(?<![\w\\])[A-Za-z](?![\w])", prose))


def _rename(text: str, strength: float, rng, context: str):
    """Rename a seeded ``strength`` share of the solution's own variables (single letters in its math
    that the prompt does not use and the prose does not name), each consistently everywhere, to
    letters used nowhere in the prompt or the solution."""
    letters = _math_letters(text)
    entangled = _entangled(text)
    taken = set(letters) | _prose_letters(text) | set(re.findall(r"[A-Za-z]", context)) | entangled
    blocked = (
        _FIXED | entangled | _prose_letters(text) | set(_math_letters(context)) | _prose_letters(context)
    )
    own = sorted(v for v in letters if v not in blocked)
    chosen = choose_sites(len(own), strength, rng)
    mapping = {}
    for i in chosen:  # a letter of the same case, used nowhere
        v = own[i]
        free = [c for c in (_POOL.upper() if v.isupper() else _POOL) if c not in taken and c not in _FIXED]
        if not free:
            return text, len(own), 0
        mapping[v] = free[int(rng.integers(len(free)))]
        taken.add(mapping[v])
    spans = sorted((s, mapping[v]) for v in mapping for s in letters[v])
    out, last = [], 0
    for (a, b), new in spans:
        out.append(text[last:a] + new)
        last = b
    return "".join(out) + text[last:], len(own), len(mapping)


def _renamed_ok(a: str, b: str) -> bool:
    """Numbers kept, and the final answer kept unless it names a renamed variable."""
    if not same_numbers(a, b):
        return False
    x, y = answer_of(a), answer_of(b)
    return x == y or (
        x is not None and y is not None and re.sub(r"[A-Za-z]", "", x) == re.sub(r"[A-Za-z]", "", y)
    )


register(
    Transform(
        "variable_renaming",
        "the solution's own variables renamed consistently (n → k everywhere), never the prompt's",
        ("math",),
        check=_renamed_ok,
        rewrite=_rename,
    )
)

# --- step labels, final answer -----------------------------------------------------------------------

_STEP = re.compile(r"(?m)(?:^|(?<=: )|(?<=\n))(?:Step (\d{1,2}):|(\d{1,2})([.)]))(?= [A-Z])")


def _step(m: re.Match) -> str:
    if m.group(1) is not None:  # Step 3: → 3.
        return f"{m.group(1)}."
    return f"Step {m.group(2)}:"  # 3. / 3) → Step 3:


register(
    Transform(
        "step_labels",
        'step labels: "1." / "1)" ↔ "Step 1:" (at a line start or after a colon)',
        ("math",),
        _STEP,
        _step,
        check=same_answer,
    )
)


def _answer_section(text: str, strength: float, rng, context: str):
    """The last $…\\boxed{X}…$ keeps X without the box, and "# Answer" followed by X ends the text
    (reWordBench's math answer-format transformation); one site per solution with a box."""
    found = boxed(text)
    if not found or "# Answer" in text or not choose_sites(1, strength, rng):
        return text, int(bool(found)), 0
    x = found[-1]
    i = text.rfind("\\boxed{" + x + "}")
    new = text[:i] + x + text[i + len("\\boxed{" + x + "}") :]
    return new.rstrip() + f"\n\n# Answer\n\n{x}", 1, 1


register(
    Transform(
        "final_answer",
        r"the final \boxed{X} becomes a closing '# Answer' section (reWordBench's math format change)",
        ("math",),
        check=same_answer,
        rewrite=_answer_section,
    )
)
