"""The package's shape: data flows one way, so no module needs one that needs it back."""

from __future__ import annotations

import ast
from pathlib import Path

import moderncnn

PACKAGE = Path(moderncnn.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["moderncnn", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules ``path`` imports, at its top or inside a function (a late import still ties two
    modules together)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from . import models` names a module, `from .x import f` a module's name
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def test_no_module_imports_one_that_imports_it_back():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in files}
    graph = {_module_name(p): _imports(p, modules) for p in files}
    # a package's __init__ gathers its own modules for the user: the package's face, not a dependency of them
    faces = {m for m in modules if (PACKAGE / Path(*m.split(".")[1:]) / "__init__.py").exists() or m == "moderncnn"}
    graph = {m: {d for d in deps if d not in faces} for m, deps in graph.items()}
    cycles = []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in path:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles[:5])
