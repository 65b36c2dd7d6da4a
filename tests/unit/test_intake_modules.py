"""The intake keeps the shape every service has (docs/architecture.md): resources.py
opens what the routes use, routes are top-level functions that never reach the
registry themselves, app.py only assembles, and no module imports another in a cycle."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from aiohttp import web

from services.intake import routes
from services.intake.compat import routes as compat_routes

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "services" / "intake"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The modules ``path`` imports (``from a import b`` counts as a.b when a.b is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_only_the_entry_point_imports_the_app() -> None:
    assert {name for name, deps in GRAPH.items() if "services.intake.app" in deps} == {
        "services.intake.__main__"
    }


def test_resources_import_no_routes_and_routes_no_repository() -> None:
    assert not {m for m in GRAPH["services.intake.resources"] if m.endswith(("routes", "app"))}
    for name in ("services.intake.routes", "services.intake.compat.routes"):
        assert not {m for m in imports(MODULES[name]) if m.startswith("shared.db")}, name


def test_no_import_cycle() -> None:
    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        for dep in GRAPH[name]:
            visit(dep, (*path, name))

    for name in GRAPH:
        visit(name, ())


def test_every_route_is_a_top_level_coroutine_of_its_module() -> None:
    defs = [*routes.ROUTES, *compat_routes.routes("/apv/v27")]
    assert all(isinstance(d, web.RouteDef) for d in defs)
    for d in defs:
        module = inspect.getmodule(d.handler)
        assert module in (routes, compat_routes), d.path
        assert inspect.iscoroutinefunction(d.handler), d.path
        assert getattr(module, d.handler.__name__) is d.handler, d.path
    assert {d.path for d in compat_routes.routes("")} == {
        d.path.removeprefix("/apv/v27") for d in compat_routes.routes("/apv/v27")
    }
