"""What the operator API's handlers may use, opened and closed in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from services.operator.settings import OperatorSettings
from shared.db.pool import Pool, answers, open_pool
from shared.http import READINESS, READINESS_PROBE
from shared.throttle import THROTTLE, open_throttle

SERVICE = "operator"


@dataclass(frozen=True)
class Resources:
    settings: OperatorSettings
    pool: Pool


RESOURCES: web.AppKey[Resources] = web.AppKey("resources", Resources)


def resources_context(settings: OperatorSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup context: opens the pool and the throttle, sets ``app[RESOURCES]``
    and readiness, and closes everything on shutdown."""

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

    return resources
