"""What every area's views share: the JSON type, times, the mask a read-only key sees,
and the shape of a newest-first page (handlers.query.Page)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar
from urllib.parse import urlsplit

from services.operator.handlers.query import Page

Json = dict[str, object]
T = TypeVar("T")
# What a read-only API key sees instead of a code: it may watch a fleet, never enroll one.
MASKED = "********"


def time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def page(name: str, found: Page[T], item: Callable[[T], Json]) -> Json:
    """A newest-first page: its items under ``name``, each shaped by ``item``, then the
    cursor of the next page (``next_before``, ``next_before_id``: null on the last page)."""
    return {
        name: [item(i) for i in found.items],
        "next_before": time(found.next_before),
        "next_before_id": found.next_before_id,
    }


def masked_url(url: str) -> str:
    """``https://hooks.example.com/...``: the scheme and host (and port) of a URL, its
    user information, path and query replaced by an ellipsis."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/{MASKED}"
