"""Deduplication's app factory: health and metrics over HTTP, the consumer in the background."""

from __future__ import annotations

from aiohttp import web

from services.dedup import handlers, streams
from shared.http import base_app
from shared.pipeline import consumer_context
from shared.settings import PipelineSettings

SERVICE = "dedup"


def create_app(settings: PipelineSettings) -> web.Application:
    app = base_app(SERVICE)
    policy = handlers.Policy(
        alert_threshold=settings.max_failed_claims,
        alert_window_s=settings.failed_claims_window_s,
        clone_limit=settings.clone_limit,
        clone_window_s=settings.clone_window_s,
    )
    app.cleanup_ctx.append(
        consumer_context(SERVICE, settings, streams.subscriptions, streams.batch_handler(policy))
    )
    return app
