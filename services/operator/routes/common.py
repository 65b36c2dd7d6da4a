"""What every area's routes share: the operator's ``@authed`` (shared.http.authed against
the service's registry) and the service's resources."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from services.operator.resources import RESOURCES, Resources
from shared import http


def resources(request: web.Request) -> Resources:
    return request.app[RESOURCES]


def authed(
    status: int = 200, *, write: bool | None = None, role: str | None = None
) -> Callable[[http.AuthedRoute], http.Route]:
    """A route of an account (shared.http.authed): the request's API key names it (401
    otherwise); a read-only key may call only GET routes (403 otherwise: every other method
    changes state, unless ``write`` says otherwise), and a route of ``role`` (admin: people,
    service accounts) refuses a caller below it (403); the view the route returns is answered
    as JSON with ``status``."""
    return http.authed(lambda request: request.app[RESOURCES].pool, status=status, write=write, role=role)
