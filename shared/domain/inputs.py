"""Checks every JSON body of the APIs shares."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import InvalidInput, shortened


def refuse_unknown_fields(
    body: Mapping[str, Any], known: Iterable[str], *, what: str, prefix: str = ""
) -> None:
    """InvalidInput naming the first field of ``body`` not in ``known``: a misspelt field
    (``readonly`` for ``read_only``) must not be ignored and leave its default in force.
    ``what`` names the object in the message ("an API key"), ``prefix`` its place
    (``services[0].``)."""
    allowed = tuple(known)
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        name = shortened(unknown[0])
        raise InvalidInput(
            f"unknown field {prefix}{name!r}: {what} takes {', '.join(allowed)}",
            field=f"{prefix}{name}",
            rule="known_fields",
        )


def refuse_unknown_parameters(query: Mapping[str, str], known: Iterable[str]) -> None:
    """InvalidInput (rule ``known_parameters``) naming the first query parameter not in
    ``known``: silently ignored, a filter such as ``category_a=x`` would return everything."""
    allowed = tuple(known)
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise InvalidInput(
            f"unknown query parameter {shortened(unknown[0])!r}: this listing takes {', '.join(allowed)}",
            field=shortened(unknown[0]),
            rule="known_parameters",
        )
