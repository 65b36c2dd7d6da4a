"""The operator API's app factory: the database pool opened and closed in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from services.operator import routes
from services.operator.settings import OperatorSettings
from shared.db.pool import Pool, answers, open_pool
from shared.http import READINESS, READINESS_PROBE, base_app
from shared.throttle import THROTTLE, open_throttle, throttle_middleware

SERVICE = "operator"


@dataclass(frozen=True)
class Resources:
    settings: OperatorSettings
    pool: Pool


RESOURCES = web.AppKey("resources", Resources)


def create_app(settings: OperatorSettings) -> web.Application:
    app = base_app(SERVICE, middlewares=(throttle_middleware(per_key=True),))

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await open_pool(settings.database)
            stack.push_async_callback(pool.close)
            app[THROTTLE] = await open_throttle(
                stack, settings.throttle, SERVICE, pool, settings.database.url.reveal()
            )
            app[RESOURCES] = Resources(settings, pool)
            app[READINESS]["pool"] = True
            app[READINESS_PROBE] = lambda: answers(pool)
            try:
                yield
            finally:
                app[READINESS]["pool"] = False

    app.cleanup_ctx.append(resources)
    routes.add_routes(app, RESOURCES)
    return app
