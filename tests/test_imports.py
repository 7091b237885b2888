"""The import graph, built from the source: no cycle between subpackages, and the generic layers
never import the synthetic world or the scripts that train the shipped models.

Nodes are subpackages and top-level modules. Each area's ``cli.py`` belongs to the node ``cli``: the
command line is the layer above every area (it wires generators, scorers and data together), split
by area only so that each command sits next to the code it calls.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mmalign

ROOT = Path(mmalign.__file__).parent
#: the places that wire the synthetic world into the generic loop
WIRING = {"synth", "zoo", "demo", "cli"}
WORLD = {"synth", "zoo"}


MODULES = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}


def _node(path: Path) -> str:
    """``mmalign/<pkg>/cli.py`` -> cli; ``mmalign/<pkg>/...`` -> pkg; ``mmalign/<module>.py`` -> module."""
    rel = path.relative_to(ROOT).parts
    if rel[-1] == "cli.py":
        return "cli"
    return rel[0] if len(rel) > 1 else ("mmalign" if rel[0] == "__init__.py" else rel[0][:-3])


def _imported(tree: ast.AST, path: Path) -> set[str]:
    """Every ``mmalign.<x>`` a file imports, anywhere in it (also inside functions), as nodes."""
    out = set()
    package = ".".join(("mmalign", *path.relative_to(ROOT).parts[:-1]))
    for stmt in ast.walk(tree):
        names: list[str] = []
        if isinstance(stmt, ast.Import):
            names = [a.name for a in stmt.names]
        elif isinstance(stmt, ast.ImportFrom):
            if stmt.level:
                base = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                names = [".".join([*base, stmt.module] if stmt.module else base)]
            else:
                names = [stmt.module or ""]
            if names == ["mmalign"]:  # from mmalign import media
                names = [f"mmalign.{a.name}" for a in stmt.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mmalign" and len(parts) > 1 and parts[1] in MODULES:
                out.add("cli" if parts[-1] == "cli" else parts[1])
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "_shipped" in path.parts:
            continue
        node = _node(path)
        deps = _imported(ast.parse(path.read_text(encoding="utf-8")), path)
        graph.setdefault(node, set()).update(d for d in deps if d != node)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (as a path), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_known_edges():
    """The parser is not blind: known imports of the tree show up as edges."""
    graph = _graph()
    assert {"errors", "media"} <= graph["scoring"]
    assert "generators" in graph["align"] and "data" in graph["align"]
    assert "synth" in graph["demo"]


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_subpackages():
    assert _cycle(_graph()) is None


def test_generic_layers_do_not_import_the_world():
    offenders = {n: sorted(deps & WORLD) for n, deps in _graph().items() if n not in WIRING and deps & WORLD}
    assert offenders == {}
