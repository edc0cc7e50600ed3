"""The architecture holds: no import cycle in pyruntime/ (module-level and
function-level imports alike), the bundle package's layers import only
downward, the backend layer knows nothing above it, and no two C units of
csrc/ depend on each other.

These read the sources (ast for Python, the definitions and calls of the
C files), so they need neither the C core built nor Triton installed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "pyruntime"
CSRC = ROOT / "csrc"

# The bundle package's layers, lowest first: each may import only those
# before it (modules not listed, such as an optional lazy reader, sit above all).
BUNDLE_LAYERS = ["rules", "model", "compat", "format", "restore", "collect"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(current: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the pyruntime modules it imports anywhere (top level, in
    functions, under TYPE_CHECKING)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in modules else base)
            for t in targets:
                # the longest pyruntime module the name falls in
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None (iterative DFS)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph.get(nxt, ())))))
                path.append(nxt)
    return None


def test_the_python_import_graph_has_no_cycle():
    graph = import_graph()
    # a package's __init__ that re-exports its submodules is above them:
    # an edge from a submodule to its own package would be a cycle too
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_bundle_layers_import_only_downward():
    graph = import_graph()
    for i, layer in enumerate(BUNDLE_LAYERS):
        name = f"pyruntime.bundle.{layer}"
        above = {f"pyruntime.bundle.{x}" for x in BUNDLE_LAYERS[i + 1:]} | {"pyruntime.bundle"}
        wrong = sorted(graph[name] & above)
        assert not wrong, f"{name} imports {wrong}, which sit above it"


def test_the_backend_layer_knows_nothing_above_it():
    graph = import_graph()
    allowed = {"pyruntime.config", "pyruntime.errors", "pyruntime._version"}
    for name in graph:
        if name == "pyruntime.core" or name.startswith("pyruntime.core."):
            outside = {t for t in graph[name] if not t.startswith("pyruntime.core")} - allowed
            assert not outside, f"{name} imports {sorted(outside)}"


def test_import_pyruntime_is_light():
    """The package root imports only errors and the version at import time."""
    tree = ast.parse((PKG / "__init__.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    mods = {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert mods <= {"__future__", "importlib", "typing", "_version", "errors"}, mods


# --------------------------------------------------------------------------
# C

_DEF_RE = re.compile(r"^[A-Za-z_][\w \*]*?\b(prt_\w+)\s*\(", re.M)
_CALL_RE = re.compile(r"\b(prt_\w+)\s*\(")


def c_unit_graph() -> dict[str, set[str]]:
    """C unit -> the units whose non-static functions it calls."""
    defs: dict[str, str] = {}
    texts = {p.name: p.read_text() for p in CSRC.glob("*.c")}
    for unit, text in texts.items():
        for m in _DEF_RE.finditer(text):
            line = text[m.start():text.find("\n", m.start())]
            if not line.startswith("static") and not line.rstrip().endswith(";"):
                defs[m.group(1)] = unit
    graph = {}
    for unit, text in texts.items():
        graph[unit] = {defs[c] for c in _CALL_RE.findall(text) if c in defs and defs[c] != unit}
    return graph


def test_no_two_c_units_depend_on_each_other():
    graph = c_unit_graph()
    assert "core.c" in graph
    assert graph["core.c"] <= {"xxh_avx2.c"}, graph["core.c"]  # core.c picks the XXH3 build, nothing more
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    for unit, deps in graph.items():
        assert not any(unit in graph[d] for d in deps), f"{unit} and one of {sorted(deps)} use each other"


def test_no_c_unit_includes_another():
    for p in CSRC.glob("*.c"):
        assert not re.search(r'#include\s+"[^"]+\.c"', p.read_text()), p.name
