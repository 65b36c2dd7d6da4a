"""Jinja2 filters of the console's templates: times and counts as an operator reads them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shared.domain.accounts import actor_text


def when(value: datetime | str | None) -> str:
    """A time in UTC to the second (``2026-12-01 09:42:49 UTC``), or an em dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def count(value: int | None) -> str:
    """A count with thousands separators (``12,345``)."""
    return "—" if value is None else f"{value:,}"


FILTERS: dict[str, Callable[..., Any]] = {"when": when, "count": count, "actor": actor_text}
