"""Who is calling the operator and bulk APIs: the account an API key belongs to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Account:
    """An account (a tenant): every product, registration and device belongs to one."""

    id: str
    name: str
