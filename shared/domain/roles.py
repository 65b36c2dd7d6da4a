"""What a person or a key may do in an account: four roles, ranked.

- ``viewer``: reads what an operator may read, codes and secrets masked (a read-only key).
- ``operator``: day-to-day work: products, registrations, devices, bulk files; not users,
  service accounts, API keys of others, webhooks or registration hooks.
- ``admin``: everything in the account but granting or removing ``owner``.
- ``owner``: admin, and the account's owners; an account keeps at least one once it has one.

A key never carries more than the role of whoever created it, and never ``owner``
(:data:`KEY_ROLES`): an owner's powers stay with a person, behind sign-in and
re-authentication. The ranks follow ThingsBoard's and Mender's operator roles (a linear
order is what those products' users manage in practice); the role x route matrix is
``docs/security.md``, generated from the OpenAPI documents' ``x-fleetreg-role``.
"""

from __future__ import annotations

from enum import StrEnum

from shared.errors import InvalidInput


class Role(StrEnum):
    """A role; compare with :func:`at_least`, never with ``<`` on the strings."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    OWNER = "owner"


ROLES: tuple[Role, ...] = (Role.VIEWER, Role.OPERATOR, Role.ADMIN, Role.OWNER)
# The roles a key may carry: never owner.
KEY_ROLES: tuple[Role, ...] = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
_RANK = {role: rank for rank, role in enumerate(ROLES)}


def at_least(role: str, needed: str) -> bool:
    """Whether ``role`` may do what needs ``needed``; an unknown role may do nothing
    (ValueError for an unknown ``needed``: a route's requirement is the code's, not input)."""
    if needed not in _RANK:
        raise ValueError(f"unknown role {needed!r}")
    return role in _RANK and _RANK[Role(role)] >= _RANK[Role(needed)]


def a_role(role: str) -> str:
    """The role with its article, for messages: "a viewer", "an operator", "an admin"."""
    return f"{'an' if role[:1] in 'aeiou' else 'a'} {role}"


def parse_role(value: object, *, field: str = "role", allowed: tuple[Role, ...] = ROLES) -> Role:
    """The role a request names; InvalidInput (400) for anything but one of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        names = ", ".join(allowed)
        raise InvalidInput(f"{field} must be one of {names}", field=field, rule=f"one-of={'|'.join(allowed)}")
    return Role(value)
