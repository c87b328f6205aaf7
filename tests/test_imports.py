"""No import circle inside the package: every import between ``gpoa`` modules, at module level or inside
a function, is an edge; the graph must have no cycle. A package's ``__init__`` importing its own
submodules is not an edge (that is how a package offers its door)."""

from __future__ import annotations

import ast
from pathlib import Path

import gpoa

ROOT = Path(gpoa.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (ROOT.parent / relative).with_suffix(".py").is_file() or (ROOT.parent / relative / "__init__.py").is_file()


def imported_modules(path: Path) -> set:
    """The gpoa modules that the file at ``path`` imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names if alias.name.split(".")[0] == "gpoa"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "gpoa":
                continue
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                targets.add(candidate if is_module(candidate) else source)
    own = name + "."
    if path.name == "__init__.py":  # a package importing its own submodules
        targets = {t for t in targets if not t.startswith(own)}
    return targets - {name}


def import_graph() -> dict:
    return {module_name(path): imported_modules(path) for path in sorted(ROOT.rglob("*.py"))}


def cycles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_finds_imports_inside_functions_and_would_see_a_circle():
    graph = import_graph()
    # cli imports its commands' modules inside the command functions
    assert "gpoa.stages.train" in graph["gpoa.cli"]
    assert "gpoa.commandline" in graph["gpoa.synth.corpus"]
    assert cycles({**graph, "gpoa.commandline": graph["gpoa.commandline"] | {"gpoa.cli"}})
    # a submodule importing its package's door is an edge; the door importing its submodules is not
    assert "gpoa.features.keys" in graph["gpoa.features.handcrafted"]
    assert cycles({**graph, "gpoa.features.keys": graph["gpoa.features.keys"] | {"gpoa.features"},
                   "gpoa.features": graph["gpoa.features"] | {"gpoa.features.keys"}})


def test_no_import_circle_in_the_package():
    assert cycles(import_graph()) == []


def test_nothing_imports_the_command_line():
    importers = [name for name, targets in import_graph().items() if "gpoa.cli" in targets]
    assert importers == []
