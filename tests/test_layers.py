"""The package's layers (docs/architecture.md): every module imports only its own layer and the layers below it, and
no two modules import each other, directly or through others.

Every ``import`` / ``from ... import`` statement of every module counts, at module level or inside a function or an
``if TYPE_CHECKING:`` block: a lazy import is still an import. An upward import is a failure unless
:data:`ALLOWED_UPWARD` names it with its reason. Not seen: ``importlib.import_module`` of a computed name (the
package's and ``models``' lazy public names, the family registry's discovery of the adapter modules: each a package
reaching down into its own modules). ``benchmarks/`` and ``tests/`` may import the package, never the reverse.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "detrdistill"

# bottom to top: (layer, the modules and packages in it). A module belongs to the entry naming it or its closest
# enclosing package.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("detrdistill.errors", "detrdistill.os_errors", "detrdistill.io_atomic", "detrdistill.config",
              "detrdistill.config_origins", "detrdistill.config_show", "detrdistill.output_folder",
              "detrdistill.progress", "detrdistill.profiling", "detrdistill.state_loading",
              "detrdistill.demo_reference")),
    ("ops", ("detrdistill.ops",)),
    ("data", ("detrdistill.data",)),
    ("models", ("detrdistill.models",)),
    ("export", ("detrdistill.export",)),
    ("distillation", ("detrdistill.distillation",)),
    ("engine", ("detrdistill.engine",)),
    ("app", ("detrdistill", "detrdistill.cli", "detrdistill.predict", "detrdistill.predict_scoring",
             "detrdistill.demo", "detrdistill.viz", "detrdistill.integrations")),
)

# (importer, imported): why this upward import is allowed. Keep it short; each entry is a debt.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


# ----------------------------------------------------------------------------------------------- the graph
def module_files(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every module of ``package`` under ``root`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules an import statement of ``module`` names (its ``from`` part, or each imported submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: resolved against the importing module's package
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    names = [f"{source}.{alias.name}" for alias in node.names]
    return [n if n in known else source for n in names]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports} (every import statement anywhere in the file)."""
    files = module_files(root, package)
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported(node, module, path.name == "__init__.py", known):
                    while name not in known and "." in name:  # `import pkg.mod.attr`: the module part
                        name = name.rsplit(".", 1)[0]
                    if name in known and name != module:
                        targets.add(name)
        graph[module] = targets
    return graph


def layer_of(module: str, layers=LAYERS) -> str | None:
    """The layer of the closest entry naming ``module`` or a package enclosing it."""
    best = None
    for rank, (layer, names) in enumerate(layers):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (layer, name)
    return best[0] if best else None


def upward_imports(graph: dict[str, set[str]], layers=LAYERS, allowed=ALLOWED_UPWARD) -> list[str]:
    """``importer (layer) -> imported (layer)`` for each import of a higher layer not in ``allowed``."""
    rank = {layer: i for i, (layer, _) in enumerate(layers)}
    return sorted(f"{a} ({layer_of(a, layers)}) -> {b} ({layer_of(b, layers)})"
                  for a, targets in graph.items() for b in targets
                  if rank[layer_of(b, layers)] > rank[layer_of(a, layers)] and (a, b) not in allowed)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other (strongly connected components of more than one module, or
    one importing itself), each sorted (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph.get(node, ()):
                    found.append(sorted(group))
    return sorted(found)


# ----------------------------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, PACKAGE)


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer_of(m) is None] == [], "add the module to LAYERS (and docs/architecture.md)"


def test_no_module_imports_a_higher_layer(graph):
    assert upward_imports(graph) == []


def test_no_modules_import_each_other(graph):
    assert cycles(graph) == []


def test_every_allowed_upward_import_exists_and_says_why(graph):
    for (a, b), why in ALLOWED_UPWARD.items():
        assert b in graph.get(a, ()) and len(why) > 20, (a, b)


def test_the_package_never_imports_the_benchmarks_or_the_tests():
    for path in (ROOT / PACKAGE).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            assert not [n for n in names if n.split(".")[0] in ("benchmarks", "tests")], path


def test_the_engine_never_imports_distillation(graph):
    """The engine trains the task class it is given (docs/architecture.md: it never sees a teacher)."""
    assert [(a, b) for a, targets in graph.items() for b in targets
            if layer_of(a) == "engine" and layer_of(b) == "distillation"] == []


def test_the_layer_table_is_the_one_the_docs_describe(graph):
    """docs/architecture.md's layer block: one entry per layer, top to bottom, naming each module or package."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = doc.split("```")[1]
    entries, current = {}, None
    for line in block.strip().splitlines():
        if not line.startswith(" "):
            current = line.split()[0]
        entries[current] = entries.get(current, "") + " " + line
    assert list(entries) == [layer for layer, _ in reversed(LAYERS)]
    packages = {m for m, path in module_files(ROOT, PACKAGE).items() if path.name == "__init__.py"}
    for layer, names in LAYERS:
        for name in names:
            short = "__init__" if name == PACKAGE else name.removeprefix(f"{PACKAGE}.").replace(".", "/")
            word = f"{short}/" if name in packages and name != PACKAGE else short
            assert f" {word}" in entries[layer], (layer, word)


# ----------------------------------------------------------------------------------------------- the check itself
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_finds_an_upward_import_and_a_cycle_in_a_tiny_package(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": "def f():\n    from pkg.high import g  # lazy, still an import\n    return g\n",
        "pkg/high.py": "from . import low\n\ndef g():\n    return low\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/a.py": "from .b import x\ny = 1\n",
        "pkg/sub/b.py": "import pkg.sub.a\nx = 2\n",
        "pkg/sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import a\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.low"] == {"pkg.high"} and graph["pkg.high"] == {"pkg.low"}
    assert graph["pkg.sub.a"] == {"pkg.sub.b"} and graph["pkg.sub.c"] == {"pkg.sub.a"}
    layers = (("bottom", ("pkg.low", "pkg.sub")), ("top", ("pkg",)))
    assert layer_of("pkg.sub.b", layers) == "bottom" and layer_of("pkg.high", layers) == "top"
    assert upward_imports(graph, layers, {}) == ["pkg.low (bottom) -> pkg.high (top)"]
    assert upward_imports(graph, layers, {("pkg.low", "pkg.high"): "a named exception"}) == []
    assert cycles(graph) == [["pkg.high", "pkg.low"], ["pkg.sub.a", "pkg.sub.b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
