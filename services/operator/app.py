"""The operator API's app factory."""

from __future__ import annotations

from aiohttp import web

from services.operator import routes
from services.operator.console.app import create_console
from services.operator.resources import SERVICE, resources_context
from services.operator.settings import OperatorSettings
from shared.http import base_app
from shared.throttle import throttle_middleware


def create_app(settings: OperatorSettings) -> web.Application:
    # The console's pages are counted by this middleware but refused by the console itself
    # (console/app.py), so that an address over its limit gets a 429 page, not JSON.
    app = base_app(SERVICE, middlewares=(throttle_middleware(per_key=True, own_answers=("/console/",)),))
    app.cleanup_ctx.append(resources_context(settings))
    app.add_routes(routes.ROUTES)
    app.router.add_get("/console", _to_console)
    app.add_subapp("/console/", create_console(settings.console))
    return app


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/console/")
