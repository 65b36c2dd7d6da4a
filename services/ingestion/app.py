"""Ingestion's app factory: the bulk routes, and the publish consumer in the background."""

from __future__ import annotations

from aiohttp import web

from services.ingestion import routes, streams
from services.ingestion.resources import RESOURCES, SERVICE, resources_context
from services.ingestion.settings import IngestionSettings
from shared.http import CONSOLE_ASSERTION_KEY, base_app
from shared.pipeline import consumer_context
from shared.throttle import throttle_middleware


def create_app(settings: IngestionSettings) -> web.Application:
    app = base_app(SERVICE, middlewares=(throttle_middleware(per_key=True),))
    secret = settings.pipeline.secret_key.reveal().encode()
    if secret:
        # The console forwards a person's session as an assertion sealed with this key
        # (shared.domain.console_assertions), checked against the live session per call.
        app[CONSOLE_ASSERTION_KEY] = secret
    app.cleanup_ctx.append(resources_context(settings))
    app.cleanup_ctx.append(consumer_context(SERVICE, settings.pipeline, streams.SUBSCRIPTION, RESOURCES))
    app.add_routes(routes.ROUTES)
    return app
