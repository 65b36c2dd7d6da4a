"""Who is calling the operator and bulk APIs: the account an API key belongs to, and the key,
and what a read-only key is shown of a secret."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

# What a read-only API key sees instead of a code or a URL's path: it may watch a fleet,
# never enroll one (the operator API and the bulk API alike).
MASKED = "********"


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
