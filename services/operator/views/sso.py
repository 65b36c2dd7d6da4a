"""Single sign-on's JSON: never the client secret, only that one is set."""

from __future__ import annotations

from services.operator.views.common import Json, time
from shared.db.sso import SsoProvider


def sso(found: SsoProvider, *, redirect_uri: str) -> Json:
    """The configuration, and the ``redirect_uri`` to register at the provider."""
    return {
        "issuer": found.issuer,
        "client_id": found.client_id,
        "client_secret": "set",
        "allowed_domains": list(found.allowed_domains),
        "groups_claim": found.groups_claim,
        "group_roles": {name: str(role) for name, role in found.group_roles.items()},
        "default_role": found.default_role,
        "required": found.required,
        "redirect_uri": redirect_uri,
        "created_at": time(found.created_at),
        "updated_at": time(found.updated_at),
    }


def removed() -> Json:
    return {"removed": "sso"}
