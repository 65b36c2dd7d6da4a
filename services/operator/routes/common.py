"""What every area's routes share: the operator's ``@authed`` (shared.http.authed against
the service's registry) and the service's resources."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from services.operator.resources import RESOURCES, Resources
from shared import http
from shared.domain.accounts import Account
from shared.domain.roles import Role, at_least


def resources(request: web.Request) -> Resources:
    return request.app[RESOURCES]


def authed(
    status: int = 200, *, write: bool | None = None, role: str | None = None
) -> Callable[[http.AuthedRoute], http.Route]:
    """A route of an account (shared.http.authed): the request's API key names it (401
    otherwise); the key's role must be at least ``role`` (403 otherwise), by default viewer
    for a GET route and operator for every other method (they change state, unless ``write``
    says otherwise). ``role`` is the route's OpenAPI ``x-fleetreg-role`` (docs/security.md,
    "Roles"). The view the route returns is answered as JSON with ``status``."""
    return http.authed(lambda request: request.app[RESOURCES].pool, status=status, write=write, role=role)


def hook_masked(account: Account) -> bool:
    """Whether a registration hook's URL is shown as its scheme and host only: below admin,
    as the hook is an admin's (docs/security.md, "Roles"; a path or query often carries the
    receiver's token)."""
    return not at_least(account.role, Role.ADMIN)
