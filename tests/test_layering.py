"""The import graph of src/marginface held against the declared layers: no package imports one above it.

Every module is parsed with ``ast`` (nothing is imported), and every ``import`` / ``from ... import`` counts,
at any depth: a function-level import is as much a dependency as a top-level one, it is only paid later. Each
module maps to its package (``marginface.training.trainer`` -> ``training``); the top-level modules (``errors``,
``registry``, ``paths``, ``plotting``, ``files``) are the foundation. A package may import the packages it
declares and, through them, everything below: the allowed set is the transitive closure of :data:`LAYERS`.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "marginface"

#: Top-level modules that make up the foundation layer (third-party imports only, and each other).
FOUNDATION_MODULES = frozenset({"errors", "registry", "paths", "plotting", "files"})

#: package -> the packages it may import directly (what those may import is allowed too), bottom up.
LAYERS: dict[str, frozenset[str]] = {
    "foundation": frozenset(),
    "losses": frozenset({"foundation"}),
    "backbones": frozenset({"foundation"}),
    "data": frozenset({"foundation"}),
    "triplet": frozenset({"foundation"}),  # the triplet loss and its head (formerly metric/)
    "metric": frozenset({"triplet"}),  # the old name of triplet/, re-exports only (one release)
    "heads": frozenset({"losses"}),
    "align": frozenset({"data"}),
    # the run on disk (paths, steps, log, checkpoints; a checkpoint's backbone + loss rebuilt from its config)
    "runs": frozenset({"backbones", "losses", "heads", "data", "foundation"}),
    # the model card and every format's load/convert; load_model accepts a run or checkpoint folder (runs.layout)
    "models": frozenset({"backbones", "data", "runs", "foundation"}),
    "evaluation": frozenset({"models", "data", "align"}),
    "training": frozenset({"losses", "heads", "backbones", "data", "models", "runs", "evaluation", "triplet"}),
    "inference": frozenset({"models", "evaluation", "align", "data"}),
    "cleaning": frozenset({"models", "evaluation", "data"}),
    "analysis": frozenset({"runs", "evaluation", "losses", "heads", "backbones", "data", "models"}),
    "experiments": frozenset({"training", "inference", "cleaning", "analysis"}),  # search, study, demo
    "cli": frozenset({"experiments"}),  # everything; and nothing imports cli
}



def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module under src/marginface by dotted name (a package by its ``__init__``)."""
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    """``marginface.training.trainer`` -> ``training``; top-level files -> ``foundation`` (``marginface.cli``,
    a module today and a package after the cli/ work, is ``cli`` either way)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"  # marginface/__init__.py
    if parts[1] in FOUNDATION_MODULES:
        return "foundation"
    return parts[1]


@cache
def imported_modules(module: str) -> frozenset[str]:
    """The marginface modules ``module`` imports anywhere in its body (relative imports resolved)."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from marginface.training import checkpoint` imports the module marginface.training.checkpoint
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return frozenset(name for name in found if name == "marginface" or name.startswith("marginface."))


@cache
def package_edges() -> frozenset[tuple[str, str]]:
    """(importing module, imported package) for every import of another package."""
    edges = set()
    for module in modules():
        source = package_of(module)
        for target in imported_modules(module):
            if target == "marginface":
                continue  # the root package holds __version__ only
            imported = package_of(target)
            if imported != source:
                edges.add((module, imported))
    return frozenset(edges)


def allowed(package: str) -> set[str]:
    """The packages ``package`` may import: the closure of :data:`LAYERS` from it."""
    seen: set[str] = set()
    todo = list(LAYERS[package])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(LAYERS[name])
    return seen


def is_moved_path(module: str) -> bool:
    """A module left at an old path for one release: its body is a docstring, imports and plain aliases
    (``old_name = new_name``) only. Such a module may import the new home wherever it is (``training.search``
    re-exports ``experiments.search``): it holds no code, so it cannot make a layer depend on one above it."""
    return holds_no_code(modules()[module].read_text())


def holds_no_code(source: str) -> bool:
    """Whether a module's text is a docstring, imports and plain aliases only (see :func:`is_moved_path`)."""
    tree = ast.parse(source)

    def inert(node: ast.stmt) -> bool:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return True
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return True  # the docstring
        return isinstance(node, ast.Assign) and isinstance(node.value, (ast.Name, ast.Attribute))
    return bool(tree.body) and all(inert(node) for node in tree.body)


def violations() -> set[tuple[str, str]]:
    out = set()
    for module, imported in package_edges():
        source = package_of(module)
        if source == "root" or is_moved_path(module):
            continue
        if source not in LAYERS:
            out.add((module, f"{imported} (package {source!r} is not in LAYERS: declare its layer)"))
        elif imported not in allowed(source):
            out.add((module, imported))
    return out


def test_declared_layers_are_acyclic():
    for package in LAYERS:
        assert package not in allowed(package), f"{package} can reach itself through LAYERS"
    assert set().union(*LAYERS.values()) <= set(LAYERS), "LAYERS names a package it does not declare"


def test_every_package_has_a_declared_layer():
    packages = {package_of(m) for m in modules()} - {"root"}
    assert packages <= set(LAYERS), f"declare the layer of {sorted(packages - set(LAYERS))} in LAYERS"


def test_nothing_imports_the_cli():
    importers = sorted(m for m, imported in package_edges() if imported == "cli")
    assert not importers, f"{importers} import marginface.cli: the CLI is the top; move the shared code down"


def test_no_package_imports_one_above_it():
    new = sorted(violations())
    assert not new, "imports against the layers (importing module, imported package):\n" + "\n".join(
        f"  {module} -> {imported}" for module, imported in new)


def private_imports_across_packages() -> set[tuple[str, str]]:
    """(module, imported name) where a module imports a ``_private`` name from another package."""
    found = set()
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("marginface."):
                if package_of(node.module) == package_of(module):
                    continue
                found |= {(module, f"{node.module}.{a.name}") for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")}
    return found


def test_no_package_imports_a_private_name_of_another():
    """A name another package needs is part of its owner's surface: make it public rather than reach in."""
    assert not sorted(private_imports_across_packages())


def test_a_moved_path_holds_no_code():
    """Only a pure re-export is exempt: one function beside the imports makes it an ordinary module."""
    shim = '"""Moved."""\nfrom marginface.experiments.search import run_search  # noqa: F401\nold = run_search\n'
    assert holds_no_code(shim)
    assert not holds_no_code(shim + "def helper():\n    return 1\n")
    assert not holds_no_code(shim + "run_search()\n")


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The parser itself: a function-level import and a relative one are found, a string is not."""
    pkg = tmp_path / "marginface"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "x.py").write_text(
        "def f():\n    from marginface.training import trainer\n    from ..errors import UserError\n"
        "s = 'import marginface.cli'\n")
    (pkg / "training").mkdir()
    (pkg / "training" / "__init__.py").write_text("")
    (pkg / "training" / "trainer.py").write_text("")
    monkeypatch.setattr(__import__(__name__, fromlist=["_"]), "SRC", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["_"]), "PACKAGE", pkg)
    _clear_caches()
    try:
        assert imported_modules("marginface.data.x") == {
            "marginface.training", "marginface.training.trainer", "marginface.errors", "marginface.errors.UserError"}
        assert violations() == {("marginface.data.x", "training")}
        (pkg / "training" / "y.py").write_text("from marginface.data.x import _helper, f\nfrom .trainer import _own\n")
        _clear_caches()
        assert private_imports_across_packages() == {("marginface.training.y", "marginface.data.x._helper")}
    finally:
        _clear_caches()


def _clear_caches() -> None:
    for cached in (modules, imported_modules, package_edges):
        cached.cache_clear()
