"""The modules of superflow_lite/ import each other without a cycle.

Every `import` and `from ... import` statement of every module is an edge, those inside
functions included (a lazy import runs all the same, only later); relative imports are
resolved against the importing module's package, and `from . import x` is an edge to the
submodule x when x is one. Only the imports under `if TYPE_CHECKING:` are no edge: they
never run, and name types for annotations alone. The graph of edges between the package's
own modules must be acyclic: each module can then be read, tested and changed knowing only
what it imports.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "superflow_lite"


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> source file of every module under `package_dir`; a package's
    __init__.py carries the package's own name."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def containing_package(module: str, path: Path) -> str:
    """The package a module's relative imports start from: itself for an __init__.py."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def absolute_base(package: str, node: ast.ImportFrom) -> str:
    """The absolute dotted name a `from ... import` statement imports from."""
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING`, the condition of an annotations-only block."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside the body of an `if TYPE_CHECKING:` (its else branch runs)."""
    return {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
            for statement in node.body for inner in ast.walk(statement)}


def requested_names(tree: ast.Module, package: str) -> list[str]:
    """Every dotted name the module's import statements ask for, wherever they stand, but
    for those under `if TYPE_CHECKING:`."""
    names, annotations_only = [], type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute_base(package, node)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def owning_module(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of the dotted `name` that is one of `modules` (None: not ours).
    `pkg.mod.func` belongs to pkg.mod, `pkg.sub` (a submodule) to itself."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = module_files(package_dir)
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = {owning_module(name, modules) for name in requested_names(tree, containing_package(module, path))}
        graph[module] = targets - {None, module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None when the graph is acyclic."""
    finished: set[str] = set()
    for start in sorted(graph):
        cycle = _cycle_from(start, graph, [], finished)
        if cycle:
            return cycle
    return None


def _cycle_from(node: str, graph: dict[str, set[str]], path: list[str], finished: set[str]) -> list[str] | None:
    """Depth-first from `node`, `path` being the modules above it: a cycle closes where an
    edge leads back onto the path."""
    if node in finished:
        return None
    if node in path:
        return path[path.index(node):] + [node]
    path.append(node)
    for target in sorted(graph.get(node, ())):
        cycle = _cycle_from(target, graph, path, finished)
        if cycle:
            return cycle
    path.pop()
    finished.add(node)
    return None


def test_the_package_imports_form_no_cycle():
    cycle = find_cycle(import_graph(PACKAGE_DIR))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_holds_the_package_edges():
    graph = import_graph(PACKAGE_DIR)
    assert "superflow_lite.config" in graph["superflow_lite.memory"]
    assert "superflow_lite.rewards.aesthetic" in graph["superflow_lite.rewards.registry"]  # a lazy `from . import`
    assert "superflow_lite.rewards" not in graph["superflow_lite.rewards.registry"]


def _write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    (package / "sub").mkdir(parents=True)
    for name, text in {"__init__.py": "", "sub/__init__.py": "", **files}.items():
        (package / name).write_text(text)
    return package


def test_a_lazy_relative_import_closes_a_cycle(tmp_path):
    package = _write_package(tmp_path, {
        "a.py": "from .sub.b import helper\n",
        "sub/b.py": "import json\n\ndef helper():\n    from .. import a\n    return a\n",
    })
    assert import_graph(package)["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(import_graph(package)) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_type_checking_imports_are_no_edge(tmp_path):
    package = _write_package(tmp_path, {
        "a.py": "from .sub.b import helper\n",
        "sub/b.py": "import typing\nif typing.TYPE_CHECKING:\n    from ..a import Thing\nelse:\n    from .. import a\n",
    })
    assert import_graph(package)["pkg.sub.b"] == {"pkg.a"}  # the else branch runs
    annotations_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import Thing\n"
    package.joinpath("sub/b.py").write_text(annotations_only)
    assert import_graph(package)["pkg.sub.b"] == set()
    assert find_cycle(import_graph(package)) is None


def test_names_of_a_module_are_edges_to_that_module(tmp_path):
    package = _write_package(tmp_path, {
        "a.py": "import pkg.sub.b\nfrom .sub import b, c\nfrom .sub.c import VALUE\n",
        "sub/b.py": "",
        "sub/c.py": "from . import VALUE_FROM_INIT\nVALUE = 1\n",
    })
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.sub.b", "pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.sub"}
    assert find_cycle(graph) is None
