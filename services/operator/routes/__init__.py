"""The operator API's HTTP routes by area, as the handlers and views are: each route
authenticates (``routes.common.authed``), parses the request, calls one handler of its area
and shapes its answer with its area's view. Each area's module lists its own ``ROUTES``;
``ROUTES`` here is all of them for the app, with the API's own description."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.operator.routes import (
    access,
    attestation,
    devices,
    hooks,
    products,
    sso,
    trail,
    users,
    webhooks,
)

OPENAPI = Path(__file__).parents[1] / "openapi.yaml"
AREAS = (access, products, hooks, attestation, devices, trail, webhooks, users, sso)


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=OPENAPI.read_text(encoding="utf-8"), content_type="application/yaml")


ROUTES: list[web.RouteDef] = [web.get("/openapi.yaml", openapi), *(d for area in AREAS for d in area.ROUTES)]
