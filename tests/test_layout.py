"""The house's rules, read from the code's own imports: no import circle; the library (lm_probes/) and
theory/ import no argparse and no command; simulations/ stand on theory/ alone; the library's wings
import downward only (lm → data → rm → probe); functions and files stay readable in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("theory", "simulations", "lm_probes", "rmgap")
WING_ORDER = ("lm", "data", "rm", "probe")  # lm_probes' wings, bottom up


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function (a lazy import is an arrow)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def project_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles (Tarjan's strongly connected components of more than one module)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    assert cycles(project_graph()) == []


@pytest.mark.parametrize("package", ["lm_probes", "theory"])
def test_the_library_and_the_theory_import_no_command_line(package):
    for path in (ROOT / package).rglob("*.py"):
        bad = {i for i in imports_of(path) if i == "argparse" or i.split(".")[0] == "rmgap"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_simulations_stand_on_the_theory_alone():
    for path in (ROOT / "simulations").rglob("*.py"):
        bad = {i for i in imports_of(path) if i.split(".")[0] in ("lm_probes", "rmgap")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_library_wings_import_downward_only():
    for m, targets in project_graph().items():
        parts = m.split(".")
        if parts[0] != "lm_probes" or len(parts) < 3 or parts[1] not in WING_ORDER:
            continue
        for t in targets:
            tp = t.split(".")
            if tp[0] == "lm_probes" and len(tp) > 2 and tp[1] in WING_ORDER:
                assert WING_ORDER.index(tp[1]) <= WING_ORDER.index(parts[1]), f"{m} imports {t} (upward)"


def test_functions_and_files_read_in_one_sitting():
    for pkg in ("theory", "lm_probes", "rmgap"):
        for path in (ROOT / pkg).rglob("*.py"):
            src = path.read_text()
            assert len(src.splitlines()) <= 420, f"{path.relative_to(ROOT)}: {len(src.splitlines())} lines"
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = node.end_lineno - node.lineno + 1
                    assert n <= 85, f"{path.relative_to(ROOT)}:{node.name} is {n} lines"
