"""The notifier's app factory: health and metrics over HTTP; the consumer, the delivery
worker and the sweep in the background."""

from __future__ import annotations

from aiohttp import web

from services.notifier import streams, worker
from services.notifier.resources import RESOURCES, resources_context
from services.notifier.settings import NotifierSettings
from shared.http import base_app
from shared.pipeline import consumer_context

SERVICE = "notifier"


def create_app(settings: NotifierSettings) -> web.Application:
    app = base_app(SERVICE)
    app.cleanup_ctx.append(resources_context(settings))
    app.cleanup_ctx.append(consumer_context(SERVICE, settings.pipeline, streams.SUBSCRIPTION, RESOURCES))
    app.cleanup_ctx.append(
        consumer_context(SERVICE, settings.pipeline, streams.HOOK_SUBSCRIPTION, RESOURCES, part="hooks")
    )
    app.cleanup_ctx.append(worker.worker_context(SERVICE))
    return app
