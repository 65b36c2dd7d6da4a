"""What a form's answer shows once on the page it redirects to (post/redirect/get, so a
reload never repeats the form): the value crosses the redirect in the session, tied to the
registration it belongs to, and the page that shows it removes it, so a reload no longer
has it. A secret crosses sealed (AES-256-GCM under FLEETREG_SECRET_KEY, the registration's
ID as associated data), as a webhook's secret does (pages/webhooks.py)."""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from services.operator.console.auth import Operator, resources
from shared.domain.webhooks import SecretBox

# A registration hook's signing secret just set, and the result of its test call.
HOOK_SECRET = "hook_secret"  # noqa: S105 (the session entry's name, not a secret)
HOOK_TEST = "hook_test"
_PURPOSE = b"fleetreg console secret shown once v1"


def _box(request: web.Request) -> SecretBox:
    return SecretBox(resources(request).settings.secret_key.reveal().encode(), _PURPOSE)


def hold(operator: Operator, name: str, owner_id: str, value: Any) -> None:
    """Keep ``value`` (JSON) for the next page of ``owner_id``."""
    operator.session[name] = {"id": owner_id, "value": value}


def take(operator: Operator, name: str, owner_id: str) -> Any:
    """The value held for ``owner_id`` (None: none), removed from the session."""
    held = operator.session.get(name)
    if not isinstance(held, dict) or held.get("id") != owner_id:
        return None
    del operator.session[name]
    return held.get("value")


def hold_secret(request: web.Request, operator: Operator, name: str, owner_id: str, secret: str) -> None:
    """Keep ``secret`` sealed for the next page of ``owner_id``."""
    hold(operator, name, owner_id, base64.b64encode(_box(request).seal(owner_id, secret)).decode())


def take_secret(request: web.Request, operator: Operator, name: str, owner_id: str) -> str | None:
    """The secret held for ``owner_id``, opened and removed from the session; never for a
    read-only session (which cannot set one anyway)."""
    sealed = take(operator, name, owner_id)
    if not isinstance(sealed, str) or operator.read_only:
        return None
    try:
        return _box(request).open(owner_id, base64.b64decode(sealed))
    except ValueError:
        return None  # sealed under a rotated FLEETREG_SECRET_KEY: lost, as a webhook's would be
