"""Who is calling the operator and bulk APIs: the account an API key belongs to, and the key,
and what a read-only key is shown of a secret."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared.domain.roles import Role
from shared.errors import InvalidInput

# What a read-only API key sees instead of a code or a URL's path: it may watch a fleet,
# never enroll one (the operator API and the bulk API alike).
MASKED = "********"


@dataclass(frozen=True)
class Account:
    """An account (a tenant): every product, registration and device belongs to one.

    When it comes from a request, it also names who made the request, as the operator
    audit trail records it: the API key (``key_id``, ``key_label``) or the console session
    (``session_id``), the person (``user_id``, ``user_email``) or the service account
    (``service_account``, its name) that key belongs to, and the ``role`` the call carries
    (``shared.domain.roles``; a viewer, ``read_only``, may change nothing). An account read
    outside a request (the CLI's own setup, fleetreg itself) has no key: ``key_id`` is None,
    and its role is admin.
    """

    id: str
    name: str
    key_id: str | None = None
    key_label: str = ""
    role: str = Role.ADMIN
    user_id: str | None = None
    user_email: str | None = None
    service_account: str | None = None
    session_id: str | None = None

    @property
    def read_only(self) -> bool:
        """A viewer's call: it reads, codes and secrets masked, and changes nothing."""
        return self.role == Role.VIEWER


def checked_key_label(label: object) -> str:
    """An API key's label as a request gives it (a person's key or a service account's):
    up to 100 printable ASCII characters, not only spaces, empty allowed; InvalidInput
    naming ``label`` otherwise."""
    if not isinstance(label, str):
        raise InvalidInput("label must be a string", field="label", rule="type=string")
    if len(label) > 100 or not label.isascii() or not label.isprintable() or (label and not label.strip()):
        raise InvalidInput(
            "label must be up to 100 printable ASCII characters, not only spaces",
            field="label",
            rule="max_length=100",
        )
    return label


def actor_fields(actor: Account) -> dict[str, str | None]:
    """Who acted, as the audit trail and webhook payloads show it (``actor``): the person
    (``user_id``, ``user_email``) or the ``service_account``, the ``role`` the call carried
    and the console ``session_id``; every value None for fleetreg's own changes."""
    own = actor.key_id is None and actor.session_id is None
    return {
        "user_id": actor.user_id,
        "user_email": actor.user_email,
        "role": None if own else str(actor.role),
        "service_account": actor.service_account,
        "session_id": actor.session_id,
    }


def actor_text(event: Mapping[str, Any]) -> str:
    """Who made an audit event, in one line, from its JSON shape (``api_key_id``,
    ``api_key_label``, ``actor``): ``alice@example.com (admin, console session)``,
    ``service account default (admin, key ci-bot)``, the key alone for events recorded
    before people existed, ``fleetreg`` for fleetreg's own changes. The CLI's tables and
    the console's pages both print it."""
    actor = event.get("actor") or {}
    account = actor.get("service_account")
    who = actor.get("user_email") or (f"service account {account}" if account else None)
    key = event.get("api_key_label") or event.get("api_key_id")
    via = "console session" if actor.get("session_id") else (f"key {key}" if key else None)
    if who is None:
        return via or "fleetreg"
    details = ", ".join(part for part in (actor.get("role"), via) if part)
    return f"{who} ({details})" if details else who


def masked_url(url: str) -> str:
    """``https://hooks.example.com/********``: the scheme and host (and port) of a URL, its
    user information, path and query replaced by MASKED, as a read-only key sees a
    webhook's or a registration hook's URL (a path or query often carries a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/{MASKED}"
