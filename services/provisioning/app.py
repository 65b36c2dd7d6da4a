"""Provisioning's app factory: health and metrics over HTTP, the consumer in the background."""

from __future__ import annotations

from aiohttp import web

from services.provisioning import streams
from shared.http import base_app
from shared.pipeline import consumer_context
from shared.settings import PipelineSettings

SERVICE = "provisioning"


def create_app(settings: PipelineSettings) -> web.Application:
    app = base_app(SERVICE)
    app.cleanup_ctx.append(consumer_context(SERVICE, settings, streams.subscriptions, streams.batch_handler))
    return app
