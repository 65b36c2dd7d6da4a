"""Who is calling the operator and bulk APIs: the account an API key belongs to, and the key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Account:
    """An account (a tenant): every product, registration and device belongs to one.

    When it comes from a request, it also names the API key that made the request: the
    operator audit trail records that key (``key_id``, ``key_label``), and a read-only key
    (``read_only``) may change nothing. An account read outside a request (the CLI's own
    setup) has no key: ``key_id`` is None.
    """

    id: str
    name: str
    key_id: str | None = None
    key_label: str = ""
    read_only: bool = False
