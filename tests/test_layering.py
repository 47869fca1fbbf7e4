"""The package's import graph, read from the sources with ``ast`` (imports inside functions
count: a deferred import is still a dependency): no cycle, and no module imports a higher
layer (data < models, ops < methods < evaluate / export / recognize / synthesize < train;
those four may use train.options, the option tables they share with training)."""
from __future__ import annotations

import ast
from pathlib import Path

import seqclr_ext

ROOT = Path(seqclr_ext.__file__).parent
PACKAGE = "seqclr_ext"
LAYERS = {"data": 0, "models": 1, "ops": 1, "methods": 2, "evaluate": 3, "export": 3,
          "recognize": 3, "synthesize": 3, "train": 4}
ALLOWED_UP = {"seqclr_ext.train.options"}


def _module_name(path: Path) -> str:
    parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (``from . import x`` names the submodule x
    when there is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules
                       else module for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _with_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: edges to those too, but
    for the packages that hold the importer (already being imported when it runs)."""
    out = {}
    for name, targets in graph.items():
        out[name] = set(targets)
        for t in targets:
            parts = t.split(".")
            out[name] |= {p for p in (".".join(parts[:i]) for i in range(2, len(parts)))
                          if not (name + ".").startswith(p + ".")}
    return out


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_the_graph_is_read():
    graph = _graph()
    assert "seqclr_ext.models" in graph["seqclr_ext.methods.seqclr"]
    assert "seqclr_ext.train.trainer" in graph["seqclr_ext.train"]


def test_no_import_cycle():
    graph = _with_packages(_graph())
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_module_imports_a_higher_layer():
    wrong = [f"{name} -> {target}" for name, targets in sorted(_graph().items())
             for target in sorted(targets)
             if _layer(name) is not None and _layer(target) is not None
             and _layer(target) > _layer(name) and target not in ALLOWED_UP]
    assert wrong == []
