"""Ingestion's app factory: the bulk routes, and the publish consumer in the background."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from services.ingestion import routes, streams
from services.ingestion.settings import IngestionSettings
from shared.db import bulk
from shared.http import base_app
from shared.pipeline import PIPELINE, consumer_context
from shared.throttle import THROTTLE, open_throttle, throttle_middleware

SERVICE = "ingestion"
log = logging.getLogger(__name__)


def create_app(settings: IngestionSettings) -> web.Application:
    app = base_app(SERVICE, middlewares=(throttle_middleware(per_key=True),))
    app.cleanup_ctx.append(
        consumer_context(
            SERVICE,
            settings.pipeline,
            streams.subscriptions,
            streams.batch_handler(settings.limits.publish_chunk_rows),
        )
    )

    async def discard_abandoned_uploads(app: web.Application) -> AsyncIterator[None]:
        discarded = await bulk.discard_stale_uploads(app[PIPELINE].pool, settings.limits.stale_upload_seconds)
        if discarded:
            log.warning("discarded uploads abandoned by a crash", extra={"count": discarded})
        yield

    app.cleanup_ctx.append(discard_abandoned_uploads)

    async def throttling(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            app[THROTTLE] = await open_throttle(
                stack, settings.throttle, SERVICE, app[PIPELINE].pool, settings.pipeline.database.url.reveal()
            )
            yield

    app.cleanup_ctx.append(throttling)
    routes.add_routes(app, settings.limits)
    return app
