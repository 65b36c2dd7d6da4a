"""The intake's app factory: middlewares, the resources' cleanup context, the routes."""

from __future__ import annotations

from aiohttp import web

from services.intake import routes, views
from services.intake.compat import routes as compat_routes
from services.intake.resources import SERVICE, resources_context
from services.intake.settings import IntakeSettings
from shared.client_certs import CLIENT_CERT_HEADER_NAME
from shared.http import base_app
from shared.throttle import throttle_middleware

__all__ = ["SERVICE", "create_app"]


def create_app(settings: IntakeSettings) -> web.Application:
    reference = settings.compat.prefix + "/"
    app = base_app(
        SERVICE,
        client_max_size=settings.max_body_bytes,
        answer_middlewares=(views.plain_text_answers(reference),),
        middlewares=(
            views.refusal_codes(reference),
            throttle_middleware(per_key=False, own_answers=(reference,)),
        ),
    )
    if settings.client_cert_header is not None:
        app[CLIENT_CERT_HEADER_NAME] = settings.client_cert_header
    app.cleanup_ctx.append(resources_context(settings))
    app.add_routes(routes.ROUTES)
    app.add_routes(compat_routes.routes(settings.compat.prefix))
    return app
