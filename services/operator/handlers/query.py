"""What every listing shares: its query parameters checked the same way (unknown ones
refused, a bounded page size, the newest-first cursor) and one page type for the
newest-first listings (registration decisions, security alerts, audit events, webhook
deliveries)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from shared.domain.device_search import parse_time
from shared.domain.identifiers import is_uuid
from shared.domain.inputs import refuse_unknown_parameters
from shared.errors import InvalidInput

T = TypeVar("T")
NEWEST_FIRST_PARAMETERS = ("limit", "before", "before_id")


@dataclass(frozen=True)
class Page(Generic[T]):
    """A page of a newest-first listing: ``items`` newest first; ``next_before`` and
    ``next_before_id`` are the cursor of the next page when this one is full (None otherwise)."""

    items: list[T]
    next_before: datetime | None
    next_before_id: str | None


def newest_first_page(
    found: Sequence[T], limit: int, at: Callable[[T], datetime], item_id: Callable[[T], str]
) -> Page[T]:
    """The page of ``found`` (at most ``limit`` items, newest first): a full page names its
    last item's time (``at``) and ID (``item_id``) as the next page's cursor."""
    full = len(found) == limit
    return Page(
        list(found),
        next_before=at(found[-1]) if full else None,
        next_before_id=item_id(found[-1]) if full else None,
    )


def only(query: dict[str, str], known: tuple[str, ...]) -> None:
    """Refuse a query parameter the listing does not know (every API's rule:
    shared.domain.inputs.refuse_unknown_parameters)."""
    refuse_unknown_parameters(query, known)


def choice(query: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    """An optional query parameter that must be one of ``allowed``."""
    value = query.get(name) or None
    if value is not None and value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}", field=name, rule="enum")
    return value


def page_limit(query: dict[str, str], page_limit_max: int) -> int:
    """The page size asked for (default 100), within 1..page_limit_max."""
    try:
        limit = int(query.get("limit", str(min(100, page_limit_max))))
    except ValueError as exc:
        raise InvalidInput("limit must be a whole number", field="limit", rule="type=integer") from exc
    if not 1 <= limit <= page_limit_max:
        raise InvalidInput(
            f"limit must be 1-{page_limit_max}", field="limit", rule=f"range=1..{page_limit_max}"
        )
    return limit


def before(query: dict[str, str]) -> tuple[datetime | None, str | None]:
    """The optional cursor of a newest-first listing: ``before`` (ISO 8601 time) and
    ``before_id`` (the last ID seen at that time, from ``next_before_id``)."""
    before_id = query.get("before_id") or None
    if before_id is not None and not is_uuid(before_id):
        raise InvalidInput("before_id is not an ID", field="before_id", rule="format=uuid")
    when = time_param(query, "before")
    if when is None and before_id is not None:
        raise InvalidInput("before_id needs before", field="before_id", rule="requires=before")
    return when, before_id


def time_param(query: dict[str, str], name: str) -> datetime | None:
    """An optional ISO 8601 time parameter, in UTC (a time without an offset is UTC)."""
    raw = query.get(name)
    return parse_time(raw, name) if raw else None


def newest_first(
    query: dict[str, str], filter_name: str | None, allowed: tuple[str, ...], page_limit_max: int
) -> tuple[str | None, int, datetime | None, str | None]:
    """The query of a newest-first listing with at most one enumerated filter: (filter
    value, page size, ``before`` time, ``before_id``); unknown parameters refused."""
    only(query, (filter_name, *NEWEST_FIRST_PARAMETERS) if filter_name else NEWEST_FIRST_PARAMETERS)
    chosen = choice(query, filter_name, allowed) if filter_name else None
    limit = page_limit(query, page_limit_max)
    when, before_id = before(query)
    return chosen, limit, when, before_id
