"""The house's rooms: imports go one way, and no module imports itself in a circle.

Read from the source with ``ast`` (every import, at any depth, ``TYPE_CHECKING``
ones too), so a new module that points up fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Bottom to top: each room may import only rooms at or below its own floor.
PROXY_ROOMS = ["timing", "config", "routing", "wire", "telemetry", "upstream", "http",
               "control", "cluster", "runtime", "workers"]
ADMIN_ROOMS = ["requests", "wire_errors", "openapi", "views", "metrics", "routes", "server",
               "main", "demo", "cli"]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("proxy", "admin"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The veer modules ``module`` imports (``from a import b`` counts ``a.b`` when that
    is a module, else ``a``)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES
                     else node.module for a in node.names]
        else:
            continue
        found.update(n for n in names if n in MODULES and n != module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _floor(module: str) -> tuple[str, int]:
    parts = module.split(".")
    rooms = PROXY_ROOMS if parts[0] == "proxy" else ADMIN_ROOMS
    if len(parts) == 1:
        return parts[0], -1  # a package's face
    return parts[0], rooms.index(parts[1])


def test_every_module_is_in_a_room() -> None:
    for module in MODULES:
        parts = module.split(".")
        rooms = PROXY_ROOMS if parts[0] == "proxy" else ADMIN_ROOMS
        assert len(parts) == 1 or parts[1] in rooms, f"{module} is in no known room"


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points to a room above the importer's, or from proxy to admin."""
    out = []
    for module, targets in sorted(graph.items()):
        pkg, floor = _floor(module)
        for target in sorted(targets):
            target_pkg, target_floor = _floor(target)
            if pkg == "proxy" and target_pkg != "proxy":
                out.append(f"{module} imports {target}: proxy never imports admin")
            elif target_pkg == pkg and target_floor > floor:
                out.append(f"{module} imports {target}, a room above its own")
    return out


def circles(graph: dict[str, set[str]]) -> list[str]:
    """Import circles among modules, each as ``a -> b -> a``."""
    found: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                found.append(" -> ".join([*path[path.index(t):], t]))
            elif t not in state:
                visit(t)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_imports_point_down() -> None:
    assert upward(GRAPH) == []


def test_no_module_imports_itself_in_a_circle() -> None:
    assert circles(GRAPH) == []


def test_the_guards_see_what_they_guard_against() -> None:
    bad = {"proxy.config.model": {"proxy.runtime.server"},
           "proxy.http.exchange": {"admin.views"},
           "proxy.http.inbound": {"proxy.http.exchange"},
           "proxy.runtime.server": {"proxy.http.inbound"}}
    assert upward(bad) == [
        "proxy.config.model imports proxy.runtime.server, a room above its own",
        "proxy.http.exchange imports admin.views: proxy never imports admin"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert circles(bad) == []
