"""The role checks every route, form and hook field goes through (docs/security.md, "Roles"),
without I/O: what passes, what is refused, and what the refusal names."""

from __future__ import annotations

from typing import Any

import pytest

from services.operator.console.auth import Operator
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.errors import Forbidden
from shared.hook_settings import require_hook_role
from shared.http import require_role


def _as(role: Role) -> Account:
    return Account("acct", "name", key_id="key", role=role)


@pytest.mark.parametrize(
    ("role", "needed", "write", "rule"),
    [
        (Role.VIEWER, Role.OPERATOR, True, "scope=read-only"),
        (Role.VIEWER, Role.ADMIN, True, "scope=read-only"),
        (Role.VIEWER, Role.ADMIN, False, "role>=admin"),  # a read above it: not "read-only"
        (Role.OPERATOR, Role.ADMIN, True, "role>=admin"),
        (Role.OPERATOR, Role.ADMIN, False, "role>=admin"),
        (Role.ADMIN, Role.OWNER, True, "role>=owner"),
    ],
)
def test_a_role_below_the_needed_one_is_refused_naming_why(
    role: Role, needed: Role, write: bool, rule: str
) -> None:
    with pytest.raises(Forbidden) as refused:
        require_role(_as(role), needed, write=write)
    assert refused.value.rule == rule
    console = Operator(_as(role), "csrf", session=None)  # type: ignore[arg-type]
    with pytest.raises(Forbidden) as refused:
        console.require(needed, write=write)
    assert refused.value.rule == rule


@pytest.mark.parametrize("role", list(Role))
def test_a_role_at_or_above_the_needed_one_passes(role: Role) -> None:
    require_role(_as(role), Role.VIEWER)
    Operator(_as(role), "csrf", session=None).require(Role.VIEWER)  # type: ignore[arg-type]
    assert Operator(_as(role), "", session=None).admin == (role in (Role.ADMIN, Role.OWNER))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hook_url": "https://example.com/h"}, "hook_url"),
        ({"hook_url": None}, "hook_url"),  # removing the hook is changing it
        ({"max_devices": 5, "hook_failure": "open"}, "hook_failure"),
        ({"hook_timeout_ms": 100, "hook_url": "https://example.com/h"}, "hook_url"),
    ],
)
def test_hook_fields_below_admin_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    for role in (Role.VIEWER, Role.OPERATOR):
        with pytest.raises(Forbidden) as refused:
            require_hook_role(_as(role), body)
        assert (refused.value.field, refused.value.rule) == (field, "role>=admin")
    for role in (Role.ADMIN, Role.OWNER):
        require_hook_role(_as(role), body)


def test_a_body_without_hook_fields_is_anyones() -> None:
    require_hook_role(_as(Role.OPERATOR), {"product_id": "p", "max_devices": 3})
    require_hook_role(_as(Role.VIEWER), {})
