"""The package's imports point down the layers of docs/architecture.md and make no cycle.

Every `import` and `from ... import` in the package is read, at module level or inside a function (a lazy
import is a dependency all the same); only imports of the package's own modules matter.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """Module or package name -> layer number, from the table between the `layers` markers."""
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- layers: read by tests/test_layers.py -->")[1].split("<!-- /layers -->")[0]
    found: dict[str, int] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0][:1].isdigit():
            continue
        number = int(cells[0].split()[0])
        for name in re.findall(r"`([^`]+)`", cells[2]):
            full = name if name == "steerguide" else f"steerguide.{name}"
            assert full not in found, f"{name} is listed twice"
            found[full] = number
    assert found, "no layer table found in docs/architecture.md"
    return found


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "steerguide").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports (`from steerguide import toyworld` names a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{a.name}" for a in node.names} & set(known)
            # `from steerguide import limits` imports the module limits, not the package's __init__
            targets |= submodules or {module}
            if submodules and len(submodules) < len(node.names):
                targets.add(module)
    return {t for t in targets if t in known and t != name}


def group_of(module: str, table: dict[str, int]) -> str:
    """The table's name that holds `module` (steerguide.train.toy -> steerguide.train); the package's
    own `steerguide` (its __init__) holds no module but itself."""
    name = module
    while name != "steerguide" and name not in table:
        name = name.rpartition(".")[0]
    if name == "steerguide" and module != "steerguide":
        raise AssertionError(f"{module} is in no layer of docs/architecture.md")
    return name


def layer_of(module: str, table: dict[str, int]) -> int:
    return table[group_of(module, table)]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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


def test_every_module_has_a_layer():
    table = layers()
    for module in modules():
        layer_of(module, table)


def test_no_import_points_up_a_layer():
    table = layers()
    upward = sorted(
        f"{a} (layer {layer_of(a, table)}) imports {b} (layer {layer_of(b, table)})"
        for a, targets in graph().items() for b in targets if layer_of(b, table) > layer_of(a, table)
    )
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_no_cycle_between_modules():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_cycle_between_packages():
    table = layers()
    packages: dict[str, set[str]] = {}
    for a, targets in graph().items():
        group = group_of(a, table)
        packages.setdefault(group, set()).update(g for g in (group_of(b, table) for b in targets) if g != group)
    found = cycles(packages)
    assert not found, "import cycles between packages:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_what_they_are_for():
    """The rules on made-up graphs: an upward import and a lazy loop are found, a clean stack passes."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    table = {"steerguide": 1, "steerguide.low": 0, "steerguide.high": 1}
    assert layer_of("steerguide.high.sub", table) == 1 and layer_of("steerguide", table) == 1
    with pytest.raises(AssertionError, match="steerguide.new is in no layer"):
        layer_of("steerguide.new", table)
