"""Every route of the HTTP services is a top-level coroutine of its routes module, so
it can be imported and tested alone (the import rules of the shape are checked by
Import Linter: tests/unit/test_architecture.py)."""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest
from aiohttp import web

from services.ingestion import routes as ingestion_routes
from services.intake import routes
from services.intake.compat import routes as compat_routes
from services.operator import routes as operator_routes
from services.operator.routes import access, attestation, devices, hooks, products, trail, users, webhooks


@pytest.mark.parametrize(
    ("module", "defs"),
    [
        (routes, routes.ROUTES),
        (compat_routes, compat_routes.routes("/apv/v27")),
        # The operator's routes are by area, each module with its own ROUTES.
        *(
            (area, area.ROUTES)
            for area in (access, products, hooks, attestation, devices, trail, webhooks, users)
        ),
        (ingestion_routes, ingestion_routes.ROUTES),
    ],
)
def test_every_route_is_a_top_level_coroutine_of_its_module(
    module: ModuleType, defs: list[web.RouteDef]
) -> None:
    assert defs and all(isinstance(d, web.RouteDef) for d in defs)
    for d in defs:
        assert inspect.iscoroutinefunction(d.handler), d.path
        assert inspect.getmodule(d.handler) is module, d.path
        assert getattr(module, d.handler.__name__) is d.handler, d.path


def test_the_operator_serves_every_area_s_routes_and_its_document() -> None:
    areas = (access, products, hooks, attestation, devices, trail, webhooks, users)
    assert areas == operator_routes.AREAS
    assert [
        web.get("/openapi.yaml", operator_routes.openapi),
        *(d for area in areas for d in area.ROUTES),
    ] == operator_routes.ROUTES
    assert inspect.iscoroutinefunction(operator_routes.openapi)


def test_the_compat_routes_follow_their_prefix() -> None:
    assert {d.path for d in compat_routes.routes("")} == {
        d.path.removeprefix("/apv/v27") for d in compat_routes.routes("/apv/v27")
    }
