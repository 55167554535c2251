"""Transformations of Python code in responses (kinds: code): local identifiers renamed consistently,
and comment / indentation style. Sites are the fenced code blocks that parse as Python; the check
is that every block still parses and has the same syntax tree (names mapped back, comments aside)."""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import re
import tokenize

from lm_probes.data.transforms.core import Transform, choose_sites, register

_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def python_blocks(text: str) -> list[re.Match]:
    """The fenced blocks of ``text`` whose code parses as Python."""
    out = []
    for m in _BLOCK.finditer(text):
        try:
            ast.parse(m.group(1))
        except (SyntaxError, ValueError):
            continue
        out.append(m)
    return out


def _locals(tree: ast.AST) -> list[str]:
    """Names bound by assignment or a for/with/comprehension target, not functions, classes, arguments,
    globals, attributes or builtins."""
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    args = {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in [*n.args, *n.kwonlyargs]}
    glob = {x for n in ast.walk(tree) if isinstance(n, (ast.Global, ast.Nonlocal)) for x in n.names}
    keywords = {k.arg for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords if k.arg}
    banned = defined | args | glob | keywords | set(dir(builtins))
    return sorted(n for n in stored if n not in banned and not n.startswith("__"))


def _renamed_source(code: str, mapping: dict[str, str]) -> str:
    toks = list(tokenize.generate_tokens(io.StringIO(code).readline))
    out = []
    for i, t in enumerate(toks):
        after_dot = i > 0 and toks[i - 1].string == "."
        if t.type == tokenize.NAME and t.string in mapping and not after_dot:
            t = t._replace(string=mapping[t.string])
        out.append(t)
    return tokenize.untokenize(out)


def _rename_block(code: str, rng, taken: set[str]) -> tuple[str, dict[str, str]]:
    names = _locals(ast.parse(code))
    mapping = {}
    for n in names:
        for suffix in rng.permutation(list("abcdefghjkmnpqrstuvwxyz")):  # (no digits: numbers stay)
            cand = f"{n}_{suffix}"
            if cand not in taken and not keyword.iskeyword(cand):
                mapping[n] = cand
                taken.add(cand)
                break
    return _renamed_source(code, mapping), mapping


class _MapBack(ast.NodeTransformer):
    def __init__(self, inverse: dict[str, str]):
        self.inverse = inverse

    def visit_Name(self, node):
        return ast.copy_location(ast.Name(self.inverse.get(node.id, node.id), node.ctx), node)


def _same_tree(old: str, new: str, mapping: dict[str, str] | None = None) -> bool:
    try:
        back = _MapBack({v: k for k, v in (mapping or {}).items()}).visit(ast.parse(new))
        return ast.dump(ast.parse(old)) == ast.dump(back)
    except (SyntaxError, ValueError):
        return False


def _blockwise(edit):
    """A whole-text rewrite that edits a seeded ``strength`` share of the Python blocks with
    ``edit(code, rng, taken) → (new code, name mapping)`` and refuses (returns the text) unless each
    edited block has the same syntax tree."""

    def rewrite(text: str, strength: float, rng, context: str):
        blocks = python_blocks(text)
        chosen = choose_sites(len(blocks), strength, rng)
        taken = set(re.findall(r"\w+", text + context))
        out, last = [], 0
        for i in chosen:
            m = blocks[i]
            new, mapping = edit(m.group(1), rng, taken)
            if not _same_tree(m.group(1), new, mapping):
                return text, len(blocks), 0
            out.append(text[last : m.start(1)] + new)
            last = m.end(1)
        return "".join(out) + text[last:], len(blocks), len(chosen)

    return rewrite


def _blocks_parse(a: str, b: str) -> bool:
    return len(python_blocks(a)) == len(python_blocks(b))


register(
    Transform(
        "code_identifiers",
        "Python local variables renamed consistently (total → total_k), same syntax tree otherwise",
        ("code",),
        check=_blocks_parse,
        rewrite=_blockwise(_rename_block),
    )
)


def _restyle(code: str, rng, taken) -> tuple[str, dict]:
    """Indentation 4 ↔ 2 spaces per level, and '# comment' ↔ '#  comment'."""
    lines = code.split("\n")
    indents = [len(x) - len(x.lstrip(" ")) for x in lines if x.strip()]
    four = any(i % 4 == 0 and i for i in indents) and all(i % 4 == 0 for i in indents)
    out = []
    for x in lines:
        n = len(x) - len(x.lstrip(" "))
        body = x[n:]
        body = re.sub(r"(?<=\S)  # ", "  #  ", body) if "#  " not in body else body.replace("#  ", "# ")
        out.append(" " * (n // 2 if four else n * 2) + body)
    return "\n".join(out), {}


register(
    Transform(
        "code_style",
        "Python indentation 4 ↔ 2 spaces and comment spacing, same syntax tree",
        ("code",),
        check=_blocks_parse,
        rewrite=_blockwise(_restyle),
    )
)
