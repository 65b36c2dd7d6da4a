"""What every area's views share: the JSON type, times and the shape of a newest-first
page (handlers.query.Page). The mask a read-only key sees: shared.domain.accounts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from services.operator.handlers.query import Page

Json = dict[str, object]
T = TypeVar("T")


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
