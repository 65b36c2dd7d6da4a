"""Deduplication's app factory: health and metrics over HTTP, the consumer in the background."""

from __future__ import annotations

from aiohttp import web

from services.dedup import streams
from services.dedup.resources import RESOURCES, resources_context
from services.dedup.settings import DedupSettings
from shared.http import base_app
from shared.pipeline import consumer_context

SERVICE = "dedup"


def create_app(settings: DedupSettings) -> web.Application:
    app = base_app(SERVICE)
    app.cleanup_ctx.append(resources_context(settings))
    app.cleanup_ctx.append(consumer_context(SERVICE, settings.pipeline, streams.SUBSCRIPTION, RESOURCES))
    return app
