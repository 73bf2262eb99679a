"""The layering of the packages, read from the source: who may import whom, and no import cycles.

Every import of every module of every first-party package (a top-level folder with an ``__init__.py``) is read with
``ast``: at module level and inside functions, relative imports resolved. The imports inside an
``if __name__ == "__main__":`` block belong to the module run as a script (``python -m graphs.inner``), which is
another module object than the one other modules import: they count as an entry point of their own.

The rule (docs/architecture.md):

- entry points (the command lines, ``__main__`` modules and blocks, the Studio's graphs) may import anything, and
  nothing but another entry point imports them;
- otherwise a package imports only packages of its own layer or of a lower one (LAYERS): ``ablation`` and
  ``dashboard`` above ``graphs``, above ``nodes``, above the services (``llm``, ``trials``, ``checkpoints``), above
  ``mechanisms``, above ``gpt``;
- no cycle between packages (entry points left out), none between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A package not listed here fails the test until it is placed in a layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("gpt",),  # the benchmark: imports only gpt
    ("mechanisms",),  # the contract, the space, the built-ins, the sandbox
    ("checkpoints", "llm", "trials"),  # the services the steps use
    ("nodes",),  # the graph steps
    ("graphs",),  # the graphs and the run wiring
    ("ablation", "dashboard"),  # what runs or reads whole runs
)
ENTRY_MODULES = frozenset({"cli", "bilevel", "studio", "__main__"})  # by the module's own name, in any package


@dataclass
class ImportGraph:
    modules: dict[str, Path]  # module -> its file
    edges: dict[str, set[str]] = field(default_factory=dict)  # importer -> first-party modules it imports

    def package(self, module: str) -> str:
        return module.split(".")[0]


def is_entry(module: str) -> bool:
    return module.split(".")[-1] in ENTRY_MODULES


def packages(root: Path) -> list[str]:
    return sorted(p.parent.name for p in root.glob("*/__init__.py"))


def module_files(root: Path, package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if all((root / Path(*rel.parts[:i]) / "__init__.py").exists() for i in range(1, len(rel.parts))):
            yield ".".join(parts), path


def is_main_block(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module name an import statement below `tree` names (`from a import b` names a.b and a)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The first-party module `name` is, or is in (a.b.func -> a.b); None for a third-party one."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def read_graph(root: Path) -> ImportGraph:
    modules = {name: path for package in packages(root) for name, path in module_files(root, package)}
    graph = ImportGraph(modules)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        main_blocks = [node for node in tree.body if is_main_block(node)]
        body = ast.Module(body=[node for node in tree.body if node not in main_blocks], type_ignores=[])
        for owner, part in [(module, body)] + [(f"{module}.__main__", block) for block in main_blocks]:
            targets = {resolve(name, modules) for name in imported_names(part, module, is_package)}
            graph.edges.setdefault(owner, set()).update(t for t in targets if t and t != module)
    return graph


def layer_of(package: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if package in layer), None)


def problems(graph: ImportGraph) -> list[str]:
    """Every breach of the rule, as a sentence naming the modules."""
    found = []
    for package in sorted({graph.package(m) for m in graph.modules}):
        if layer_of(package) is None:
            found.append(f"package {package} is in no layer (place it in LAYERS)")
    for importer, targets in sorted(graph.edges.items()):
        for target in sorted(targets):
            if is_entry(target) and not is_entry(importer):
                found.append(f"{importer} imports the entry point {target}")
            if is_entry(importer):
                continue
            have, want = layer_of(graph.package(importer)), layer_of(graph.package(target))
            if have is not None and want is not None and want > have:
                found.append(f"{importer} imports {target}: {graph.package(target)} is above {graph.package(importer)}")
    modules = nx.DiGraph([(a, b) for a, targets in graph.edges.items() for b in targets])
    for cycle in sorted(sorted(c) for c in nx.strongly_connected_components(modules) if len(c) > 1):
        found.append(f"module cycle: {', '.join(cycle)}")
    inner = [(graph.package(a), graph.package(b)) for a, ts in graph.edges.items() if not is_entry(a) for b in ts]
    packages_graph = nx.DiGraph([(a, b) for a, b in inner if a != b])
    for cycle in sorted(sorted(c) for c in nx.strongly_connected_components(packages_graph) if len(c) > 1):
        found.append(f"package cycle: {', '.join(cycle)}")
    return found


def test_the_packages_import_down_the_layers_without_cycles() -> None:
    graph = read_graph(ROOT)
    assert {"gpt", "mechanisms", "nodes", "graphs"} <= {graph.package(m) for m in graph.modules}
    assert len(graph.modules) > 100 and sum(map(len, graph.edges.values())) > 200  # the reader reads
    assert problems(graph) == []


def test_function_level_and_relative_imports_are_read(tmp_path: Path) -> None:
    write(tmp_path / "low" / "__init__.py", "")
    write(tmp_path / "low" / "a.py", "def f():\n    from .b import g\n    return g\n")
    write(tmp_path / "low" / "b.py", "import os\n\ndef g():\n    import low.a\n")
    graph = read_graph(tmp_path)
    assert graph.edges == {"low": set(), "low.a": {"low.b"}, "low.b": {"low.a"}}


def test_the_checker_reports_a_breach_a_cycle_and_an_unplaced_package(tmp_path: Path) -> None:
    """A synthetic tree: gpt imports nodes (up the layers, inside a function) and nodes imports gpt, two nodes
    modules import each other, a package no layer names, and a command line and a __main__ block that may import
    anything."""
    write(tmp_path / "gpt" / "__init__.py", "")
    write(tmp_path / "gpt" / "train.py", "def f():\n    from nodes.a import x\n")
    write(tmp_path / "nodes" / "__init__.py", "")
    write(tmp_path / "nodes" / "a.py", "from . import b\nimport gpt\nx = 1\n")
    write(tmp_path / "nodes" / "b.py", "from nodes.a import x\n\nif __name__ == '__main__':\n    import graphs.cli\n")
    write(tmp_path / "graphs" / "__init__.py", "")
    write(tmp_path / "graphs" / "cli.py", "import nodes.b\nimport gpt.train\n")
    write(tmp_path / "extra" / "__init__.py", "")
    found = problems(read_graph(tmp_path))
    assert found == [
        "package extra is in no layer (place it in LAYERS)",
        "gpt.train imports nodes.a: nodes is above gpt",
        "module cycle: nodes.a, nodes.b",
        "package cycle: gpt, nodes",
    ], found
    write(tmp_path / "nodes" / "c.py", "import graphs.cli\n")
    assert "nodes.c imports the entry point graphs.cli" in problems(read_graph(tmp_path))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
