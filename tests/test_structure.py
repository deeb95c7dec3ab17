"""The package's shape: the core trains without Ray, MLflow or Optuna, and imports flow one way.

Both read the source with ``ast``, function-level imports included: an import hidden inside a
function still runs, and still closes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tunedml"
CORE = (
    "data",
    "losses",
    "epo",
    "model",
    "train",
    "evaluate",
    "config",
    "hparams",
    "space",
    "adversarial",
    "metrics",
    "errors",
    "progress",
    "sampling",
    "stages",
    "timing",
)
SEARCH_AND_TRACKING = ("ray", "mlflow", "optuna")


def modules() -> dict[str, Path]:
    """Dotted module name -> file, packages by their __init__.py."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in the file, absolute and resolved relative names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import tracking`
    return found


def graph() -> dict[str, set[str]]:
    """Import edges between tunedml modules. Importing a.b.c also runs the __init__ of a.b (and a),
    except the packages the importer itself lives in, which are initialised already."""
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets = set()
        for target in imported(name, path):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in mods and candidate not in own and candidate != name:
                    targets.add(candidate)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("name", [m for m in CORE if (PACKAGE / f"{m}.py").exists()])
def test_core_modules_import_no_search_or_tracking_library(name):
    libraries = {m.split(".")[0] for m in imported(f"tunedml.{name}", PACKAGE / f"{name}.py")}
    assert not libraries & set(SEARCH_AND_TRACKING), f"tunedml/{name}.py imports {libraries & set(SEARCH_AND_TRACKING)}"


def test_the_core_imports_nothing_above_it():
    above = {m for m in modules() if m.split(".")[1:2] and m.split(".")[1] not in CORE}
    for name in CORE:
        if (PACKAGE / f"{name}.py").exists():
            reached = graph()[f"tunedml.{name}"] & above
            assert not reached, f"core module {name} imports {sorted(reached)}"


def test_the_command_line_reaches_search_retrain_and_tracking_only_through_the_api():
    """cli parses and calls: preparing, checking and running a search or a retrain live beside
    them (tunedml.search, tunedml.retrain) and are called through tunedml.api, as from Python."""
    reached = imported("tunedml.cli", PACKAGE / "cli.py")
    inside = sorted(
        m
        for m in reached & set(modules())
        if m.startswith(("tunedml.search", "tunedml.retrain", "tunedml.tracking.", "tunedml.train"))
    )
    assert inside == [], f"tunedml/cli.py imports {inside}"  # tunedml.tracking (its facade) serves `tunedml ui`
    assert not {m.split(".")[0] for m in reached} & {*SEARCH_AND_TRACKING, "torch", "transformers"}
    assert "tunedml.api" in reached


def test_each_command_checks_beside_itself():
    """The probes in checks.py; a command's checks in its own package; one tracking-store check."""
    mods = modules()
    assert {"tunedml.search.checks", "tunedml.retrain.checks", "tunedml.search.prepare"} <= set(mods)
    probes = (PACKAGE / "checks.py").read_text()
    for moved in ("def check_search", "def check_retrain", "def check_tracking"):
        assert moved not in probes, moved
    defined = [name for name, path in mods.items() if "def check_tracking(" in path.read_text()]
    assert defined == ["tunedml.tracking.uri"]


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


def test_a_cycle_is_found_where_there_is_one():
    """The checker itself: a hidden function-level import back is a cycle."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_function_level_imports_are_seen(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import ray\n    from ..tracking import store\n")
    assert {"ray", "tunedml.tracking", "tunedml.tracking.store"} <= imported("tunedml.retrain.m", module)
