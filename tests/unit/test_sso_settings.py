"""What an account may configure as its single sign-on (shared.domain.sso): every refusal
names its field, domains are read as e-mail domains, groups map to roles never above admin."""

from __future__ import annotations

from typing import Any

import pytest

from shared.domain.roles import Role
from shared.domain.sso import checked_settings, domain_of, role_from_groups
from shared.errors import InvalidInput

GOOD: dict[str, Any] = {
    "issuer": "https://login.example.com/realms/fleet",
    "client_id": "fleetreg-console",
    "client_secret": "s3cret",
    "allowed_domains": ["Example.COM", "bücher.example"],
    "group_roles": {"fleet-admins": "admin", "fleet-viewers": "viewer"},
}


def test_a_good_configuration_is_read_with_its_domains_in_idna_lower_case() -> None:
    settings = checked_settings(GOOD, creating=True)

    assert settings.allowed_domains == ("example.com", "xn--bcher-kva.example")
    assert settings.group_roles == {"fleet-admins": Role.ADMIN, "fleet-viewers": Role.VIEWER}
    assert (settings.groups_claim, settings.default_role, settings.required) == ("groups", None, False)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"issuer": "ftp://login.example.com"}, "issuer"),
        ({"issuer": "https://login.example.com/realms/fleet/"}, "issuer"),
        ({"issuer": 7}, "issuer"),
        ({"client_id": ""}, "client_id"),
        ({"client_id": "a\0b"}, "client_id"),
        ({"client_secret": None}, "client_secret"),
        ({"allowed_domains": []}, "allowed_domains"),
        ({"allowed_domains": "example.com"}, "allowed_domains"),
        ({"allowed_domains": ["alice@example.com"]}, "allowed_domains"),
        ({"allowed_domains": ["not a domain"]}, "allowed_domains"),
        ({"allowed_domains": ["example.com"] * 21}, "allowed_domains"),
        ({"group_roles": {"owners": "owner"}}, "group_roles.owners"),
        ({"group_roles": {"x": "root"}}, "group_roles.x"),
        ({"group_roles": ["admin"]}, "group_roles"),
        ({"default_role": "owner"}, "default_role"),
        ({"required": "yes"}, "required"),
        ({"clientsecret": "typo"}, "clientsecret"),
    ],
)
def test_each_refusal_names_its_field(change: dict[str, Any], field: str) -> None:
    body = {k: v for k, v in (GOOD | change).items() if v is not None}

    with pytest.raises(InvalidInput) as refused:
        checked_settings(body, creating=True)

    assert refused.value.field == field
    assert "s3cret" not in str(refused.value)


def test_a_change_may_leave_the_secret_out_a_creation_may_not() -> None:
    without = {k: v for k, v in GOOD.items() if k != "client_secret"}

    assert checked_settings(without, creating=False).client_secret is None
    with pytest.raises(InvalidInput):
        checked_settings(without, creating=True)


def test_the_domain_of_an_address_picks_single_sign_on() -> None:
    assert domain_of("Alice@Example.COM") == "example.com"
    assert domain_of("jörg@bücher.example") == "xn--bcher-kva.example"
    assert domain_of("not an address") is None
    assert domain_of("a@b@c") is None


def test_the_highest_mapped_group_wins_else_the_default() -> None:
    roles = {"ops": Role.OPERATOR, "admins": Role.ADMIN, "viewers": Role.VIEWER}

    assert role_from_groups(["viewers", "admins", "ops"], roles, None) == Role.ADMIN
    assert role_from_groups(["strangers"], roles, Role.VIEWER) == Role.VIEWER
    assert role_from_groups(["strangers"], roles, None) is None
    assert role_from_groups("admins", roles, None) is None  # a claim that is no list is no group
    assert role_from_groups([{"name": "admins"}], roles, None) is None


@pytest.mark.parametrize(
    ("value", "rule"),
    [(7, "type=string"), ("a\0b", "charset=no-NUL"), ("", "max_length=200"), ("x" * 201, "max_length=200")],
)
def test_a_texts_refusal_names_the_rule_it_broke(value: object, rule: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        checked_settings(GOOD | {"client_id": value}, creating=True)

    assert (refused.value.field, refused.value.rule) == ("client_id", rule)
