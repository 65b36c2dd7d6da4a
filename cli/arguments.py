"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse

from shared.domain.identifiers import is_uuid


def object_id(text: str) -> str:
    """An ID of a product, registration, device or key, as the APIs print them.

    Checked before it goes into a URL path, so that a typo (or ``../api-keys``) is a
    usage error naming the argument, never a call to another endpoint."""
    value = text.strip()
    if not is_uuid(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not an ID (expected the form 8-4-4-4-12 hex digits)")
    return value.lower()


def positive_int(text: str) -> int:
    """A whole number of 1 or more (a count, a limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below the minimum of 1")
    return value
