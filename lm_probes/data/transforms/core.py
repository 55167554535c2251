"""The transformation registry's machinery: what a transformation is, how a strength picks its sites,
the spans prose transformations leave alone, and the meaning checks (numbers, final answers).

A transformation finds its eligible *sites* in a text (a contraction, a number, a LaTeX macro, a
variable, …) and rewrites a seeded fraction ``strength`` of them (:func:`choose_sites`: 0 is the
identity, 1 every site, and in between the share over many texts is ``strength``). Its check
compares the original with the rewrite (numbers keep their value, a math answer its value, Python
code its syntax tree); a rewrite that fails is returned unchanged and counted (``Rewrite.refused``),
never changed wrongly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lm_probes.common import Registry


@dataclass(frozen=True)
class Rewrite:
    text: str
    sites: int  # eligible places in the input
    changed: int  # places rewritten (0 when refused)
    refused: bool = False  # the meaning check failed: ``text`` is the input


@dataclass(frozen=True)
class Transform:
    """One registered transformation. Site-wise ones give ``pattern`` (one match = one site) and
    ``replace`` (the rewrite of one site), and ``skip`` (spans where matches do not count: the math and
    code of a text, for the prose ones). Whole-text ones (a consistent renaming) give ``rewrite``
    instead: (text, strength, rng, context) → (new text, sites, changed). ``context`` is the prompt the
    text answers (its variables and names are kept)."""

    name: str
    summary: str
    kinds: tuple[str, ...]  # "general", "math", "code"
    pattern: re.Pattern | None = None
    replace: Callable[[re.Match], str] | None = None
    check: Callable[[str, str], bool] | None = None  # (original, rewritten) → meaning kept?
    skip: Callable[[str], list[tuple[int, int]]] | None = None
    rewrite: Callable | None = None

    def apply(self, text: str, strength: float, seed: int, context: str = "") -> Rewrite:
        """Rewrite a seeded ``strength`` fraction of the eligible sites (:func:`choose_sites`)."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"{self.name}: strength must be in [0, 1], got {strength}")
        if self.rewrite is not None:
            rng = np.random.default_rng([seed, len(text)])
            new, sites, changed = self.rewrite(text, strength, rng, context)
        else:
            new, sites, changed = self._sitewise(text, strength, seed)
        if changed == 0:
            return Rewrite(text, sites, 0)
        if self.check is not None and not self.check(text, new):
            return Rewrite(text, sites, 0, refused=True)
        return Rewrite(new, sites, changed)

    def _sitewise(self, text: str, strength: float, seed: int) -> tuple[str, int, int]:
        matches = list(self.pattern.finditer(text))
        if self.skip is not None:
            spans = self.skip(text)
            matches = [m for m in matches if not any(a < m.end() and m.start() < b for a, b in spans)]
        rng = np.random.default_rng([seed, len(text), len(matches)])
        chosen = set(choose_sites(len(matches), strength, rng))
        if not chosen:
            return text, len(matches), 0
        out, last = [], 0
        for i, m in enumerate(matches):
            out.append(text[last : m.start()])
            out.append(self.replace(m) if i in chosen else m.group(0))
            last = m.end()
        return "".join(out) + text[last:], len(matches), len(chosen)


def choose_sites(n: int, strength: float, rng: np.random.Generator) -> list[int]:
    """A seeded choice of sites among ``n``: ⌊strength·n⌋ of them, one more with probability equal to
    the remainder (so that over many texts the share rewritten is ``strength``, also for texts with a
    single site); 0 → none, 1 → all. Sorted."""
    exact = strength * n
    k = int(np.floor(exact)) + int(rng.random() < exact - np.floor(exact))
    return sorted(rng.choice(n, size=k, replace=False).tolist()) if k else []


TRANSFORMS: Registry = Registry("transformation")


def register(t: Transform) -> Transform:
    return TRANSFORMS.add(t)


def get_transform(name: str) -> Transform:
    return TRANSFORMS.lookup(name)


def both_ways(pairs: dict[str, str]) -> tuple[re.Pattern, Callable[[re.Match], str]]:
    """A pattern matching either side of each pair (whole words, not after a backslash; case kept on
    the first letter) and the replacement by the other side. Each word may appear once in the table."""
    table = {**pairs, **{v: k for k, v in pairs.items()}}
    if len(table) != 2 * len(pairs):
        seen = [w for w in [*pairs, *pairs.values()] if [*pairs, *pairs.values()].count(w) > 1]
        raise ValueError(f"a both-way table names a word twice: {sorted(set(seen))[:5]}")
    keys = sorted(table, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w'\\])(" + "|".join(map(re.escape, keys)) + r")(?![\w'])", re.IGNORECASE)

    def replace(m: re.Match) -> str:
        word = m.group(0)
        out = table[word.lower()]
        return out[0].upper() + out[1:] if word[0].isupper() else out

    return pattern, replace


# --- spans prose transformations leave alone ---------------------------------------------------------

_MATH = re.compile(
    r"\$\$.+?\$\$|\$.+?\$|\\\(.+?\\\)|\\\[.+?\\\]|\\begin\{(\w+\*?)\}.+?\\end\{\1\}", re.DOTALL
)
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`", re.DOTALL)


def math_spans(text: str) -> list[tuple[int, int]]:
    """Where a text is LaTeX: $…$, $$…$$, \\(…\\), \\[…\\], \\begin{env}…\\end{env}."""
    return [m.span() for m in _MATH.finditer(text)]


def code_spans(text: str) -> list[tuple[int, int]]:
    """Where a text is code: fenced blocks (``` … ```) and inline `code`."""
    return [m.span() for m in _CODE.finditer(text)]


def not_prose(text: str) -> list[tuple[int, int]]:
    return [*code_spans(text), *math_spans(text)]


# --- meaning checks ----------------------------------------------------------------------------------


def numbers_of(text: str) -> list[float]:
    """The numbers a text states, thousands separators ignored (the meaning check of numbers)."""
    found = re.findall(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", text)
    return [float(x.replace(",", "")) for x in found]


def same_numbers(a: str, b: str) -> bool:
    return numbers_of(a) == numbers_of(b)


def boxed(text: str) -> list[str]:
    """The contents of every \\boxed{…} (balanced braces), in order."""
    out, i = [], 0
    while (i := text.find("\\boxed{", i)) != -1:
        depth, start = 0, i + len("\\boxed")
        j = start
        for j in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
        out.append(text[start + 1 : j])
        i = j
    return out


def answer_of(text: str) -> str | None:
    """A math solution's final answer: the last \\boxed{…}, else what follows a "# Answer" header, else
    None; normalised (spaces, \\dfrac/\\tfrac → \\frac, \\left/\\right, a leading-zero decimal)."""
    found = boxed(text)
    if found:
        ans = found[-1]
    else:
        m = re.search(r"^# Answer\s*\n+(.+?)\s*$", text, re.MULTILINE | re.DOTALL)
        if not m:
            return None
        ans = m.group(1).strip().strip("$")
    ans = re.sub(r"\\[dt]frac", r"\\frac", ans)
    ans = re.sub(r"\\left|\\right|\s+", "", ans)
    return re.sub(r"(?<![\d.])\.(\d)", r"0.\1", ans)


def same_answer(a: str, b: str) -> bool:
    """The final answer (:func:`answer_of`) and the numbers are unchanged."""
    return answer_of(a) == answer_of(b) and same_numbers(_no_answer_header(a), _no_answer_header(b))


def _no_answer_header(text: str) -> str:
    """The text less a trailing "# Answer" section (whose value :func:`answer_of` compares)."""
    return re.sub(r"\n+# Answer\s*\n.*\Z", "", text, flags=re.DOTALL)
