"""The layers of ARCHITECTURE.md, checked: no import cycle, no import that goes up, no
long function. Imports are read from the source (every ``import`` at any depth,
``TYPE_CHECKING`` blocks included), so a cycle hidden behind a lazy import counts too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sidecar"

#: Lower number = lower layer. A module may import its own package and lower layers.
LAYERS: dict[str, int] = {
    "sidecar": 0, "sidecar.errors": 0, "sidecar.secrets": 0,
    # The structured-output toolkit is pure (schemas, regexes, extraction, XML); only its
    # enforcer, which wraps the router, sits above the core.
    "sidecar.structured": 1,
    "sidecar.wire": 2, "sidecar.logs": 2,
    "sidecar.transport": 3, "sidecar.providers": 3, "sidecar.store": 3,
    "sidecar.local": 4,
    "sidecar.core": 5,
    "sidecar.structured.enforcer": 6,
    "sidecar.channels": 7,
    "sidecar.app": 8, "sidecar.cli": 9, "sidecar.__main__": 10,
}
#: Longest function allowed in sidecar/ (lines, decorators excluded).
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = modules()


def resolve(name: str) -> str | None:
    while name not in MODULES:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def imports(module: str) -> Iterator[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("sidecar") and (target := resolve(name)) and target != module:
                yield target


def layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        key = ".".join(parts[:size])
        if key in LAYERS:
            return key, LAYERS[key]
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_no_import_goes_up_a_layer() -> None:
    wrong = []
    for module in MODULES:
        own, rank = layer(module)
        for target in set(imports(module)):
            other, other_rank = layer(target)
            if other != own and other_rank >= rank:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers: " + ", ".join(sorted(wrong))


def test_no_import_cycle() -> None:
    graph = {m: set(imports(m)) for m in MODULES}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_no_long_function() -> None:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name} ({size} lines)")
    assert not long, "functions over the limit: " + ", ".join(sorted(long))

