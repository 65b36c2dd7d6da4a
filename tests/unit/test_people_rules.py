"""shared.domain.people: e-mail addresses, invitation lifetimes, service account names,
and who may grant, change or remove which role (the last owner's rule is the registry's:
tests/integration/test_repository_users.py)."""

from __future__ import annotations

import pytest

from services.operator.handlers.users import invitation_url
from shared.domain import people
from shared.errors import Forbidden, InvalidInput


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("Ada@Example.COM", "Ada@example.com"),  # the domain in lower case; the local part kept
        ("bob@bücher.example.com", "bob@bücher.example.com"),
        ("x.y+tag@sub.example.org", "x.y+tag@sub.example.org"),
    ],
)
def test_an_address_is_normalised(given: str, normalised: str) -> None:
    assert people.checked_email(given) == normalised


@pytest.mark.parametrize(
    ("given", "rule"),
    [
        (None, "required"),
        (42, "type=string"),
        (["a@example.com"], "type=string"),
        ("a" * 250 + "@example.com", "max_length=254"),
        ("ada\x00@example.com", "format=email"),
        ("ada@exam\nple.com", "format=email"),
        ("not-an-address", "format=email"),
        ("ada@", "format=email"),
        ("@example.com", "format=email"),
        ("ada@localhost", "format=email"),
        ("", "format=email"),
    ],
)
def test_a_bad_address_is_refused_naming_the_field(given: object, rule: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        people.checked_email(given)
    assert (refused.value.field, refused.value.rule) == ("email", rule)


def test_an_invitation_lasts_72_hours_by_default_and_1_to_720() -> None:
    assert people.checked_hours(None) == 72
    assert (people.checked_hours(1), people.checked_hours(720)) == (1, 720)
    for bad in (0, 721, -1, 1.5, "24", True):
        with pytest.raises(InvalidInput) as refused:
            people.checked_hours(bad)
        assert refused.value.field == "expires_in_hours"


def test_a_service_account_name() -> None:
    assert people.checked_service_account_name("ci deploy-bot_2.0") == "ci deploy-bot_2.0"
    for bad in ("", " lead", "trail ", "a" * 65, "nul\x00", "slash/", 7):
        with pytest.raises(InvalidInput) as refused:
            people.checked_service_account_name(bad)
        assert refused.value.field == "name"


def test_tokens_are_random_and_kept_as_digests() -> None:
    one, two = people.new_invitation_token(), people.new_invitation_token()
    assert one != two and len(one) >= 43
    assert people.invitation_digest(one) != people.invitation_digest(two)
    assert len(people.invitation_digest(one)) == 32
    assert invitation_url("https://fleet.example.com/", one) == (
        f"https://fleet.example.com/console/invitations/{one}"
    )


def test_only_an_owner_grants_owner_but_an_ownerless_account_lets_an_admin() -> None:
    for role in ("admin", "operator", "viewer"):
        people.check_may_grant("admin", role, account_has_owner=True)
    people.check_may_grant("owner", "owner", account_has_owner=True)
    people.check_may_grant("admin", "owner", account_has_owner=False)  # the first owner
    with pytest.raises(Forbidden) as refused:
        people.check_may_grant("admin", "owner", account_has_owner=True)
    assert refused.value.rule == "role>=owner"
    with pytest.raises(Forbidden) as refused:
        people.check_may_grant("operator", "viewer", account_has_owner=False)
    assert refused.value.rule == "role>=admin"
    with pytest.raises(Forbidden) as refused:
        people.check_may_grant("viewer", "viewer", account_has_owner=False)
    assert refused.value.rule == "scope=read-only"


def test_nobody_changes_their_own_role_and_an_admin_never_touches_an_owner() -> None:
    def change(actor_role: str, target_role: str, new: str | None, *, me: bool = False) -> None:
        people.check_may_change(
            actor_role, "u1" if me else "u0", "u1", target_role, new, account_has_owner=True
        )

    change("admin", "operator", "viewer")
    change("admin", "viewer", None)
    change("owner", "owner", "admin")
    change("owner", "admin", "owner")
    for actor_role, target_role, new, me, rule in (
        ("owner", "owner", "admin", True, "not-self"),
        ("admin", "admin", None, True, "not-self"),
        ("admin", "owner", "admin", False, "role>=owner"),
        ("admin", "owner", None, False, "role>=owner"),
        ("admin", "admin", "owner", False, "role>=owner"),
        ("operator", "viewer", "viewer", False, "role>=admin"),
    ):
        with pytest.raises(Forbidden) as refused:
            change(actor_role, target_role, new, me=me)
        assert refused.value.rule == rule, (actor_role, target_role, new, me)
    # A key (no person) is never "yourself".
    people.check_may_change("admin", None, "u1", "admin", "viewer", account_has_owner=True)


def test_the_key_roles_above_a_role() -> None:
    assert people.roles_above("viewer") == ["operator", "admin"]
    assert people.roles_above("operator") == ["admin"]
    assert people.roles_above("admin") == people.roles_above("owner") == []
