"""An account's single sign-on in the registry (shared.db.sso, migration 0037): set, changed
with the secret kept, a domain belonging to one account, removed; audited without the secret."""

from __future__ import annotations

import uuid

import pytest

from shared.db import audit, sso
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.domain.sso import checked_settings, domain_of
from shared.errors import Conflict, NotFound
from tests.support import registry

pytestmark = pytest.mark.integration


def _body(domain: str, **change: object) -> dict[str, object]:
    return {
        "issuer": "https://login.example.com/realms/fleet",
        "client_id": "fleetreg-console",
        "allowed_domains": [domain],
        "client_secret": "s3cret",
        "group_roles": {"fleet-admins": "admin"},
    } | change


async def test_set_changed_with_its_secret_kept_and_removed(pool: Pool) -> None:
    actor = Account(await registry.new_account(pool), "sso", key_id=None)
    domain = f"{uuid.uuid4().hex[:8]}.example"

    created = await sso.configure(pool, actor, checked_settings(_body(domain), creating=True), b"sealed-1")
    changed = await sso.configure(
        pool,
        actor,
        checked_settings(_body(domain, required=True, default_role="viewer"), creating=False),
        None,
    )
    found = await sso.find(pool, actor.id)

    assert (created, changed) == (True, False)
    assert found is not None
    assert (found.client_secret_sealed, found.required, found.default_role) == (
        b"sealed-1",
        True,
        Role.VIEWER,
    )
    assert found.allowed_domains == (domain,) and found.group_roles == {"fleet-admins": Role.ADMIN}
    assert await sso.account_for_domain(pool, domain) == actor.id
    trail = await audit.list_events(pool, actor.id, audit.AuditFilter(action="sso.configured"), limit=5)
    assert [e.changes["client_secret"] for e in trail] == ["kept", "set"]
    assert "sealed" not in str([e.changes for e in trail])

    await sso.remove(pool, actor)
    assert await sso.find(pool, actor.id) is None
    assert await sso.account_for_domain(pool, domain) is None
    with pytest.raises(NotFound):
        await sso.remove(pool, actor)


async def test_a_domain_signs_in_to_one_account_only(pool: Pool) -> None:
    one = Account(await registry.new_account(pool), "one")
    two = Account(await registry.new_account(pool), "two")
    domain = f"{uuid.uuid4().hex[:8]}.example"
    await sso.configure(pool, one, checked_settings(_body(domain), creating=True), b"s")

    with pytest.raises(Conflict) as refused:
        await sso.configure(pool, two, checked_settings(_body(domain), creating=True), b"s")

    assert refused.value.field == "allowed_domains"
    assert await sso.find(pool, two.id) is None  # nothing half-written
    assert await sso.account_for_domain(pool, domain) == one.id


async def test_a_domain_of_another_accounts_people_is_refused(pool: Pool) -> None:
    """Sign-in is e-mail first: an account claiming the domain of another account's people
    would send them to its own provider (and away from their password)."""
    one = Account(await registry.new_account(pool), "one")
    two = Account(await registry.new_account(pool), "two")
    stem = uuid.uuid4().hex[:8]
    ascii_domain, unicode_domain = f"{stem}.example", f"b\u00fccher-{stem}.example"
    for email in (f"ada@{ascii_domain}", f"bob@{unicode_domain}"):  # as invitations store them
        await pool.execute(
            "INSERT INTO users (id, account_id, email, role, password_hash) VALUES ($1, $2, $3, 'viewer', 'x')",
            uuid.uuid4(),
            uuid.UUID(one.id),
            email,
        )

    for domain in (ascii_domain.upper(), unicode_domain, domain_of(f"x@{unicode_domain}")):
        with pytest.raises(Conflict) as refused:
            await sso.configure(pool, two, checked_settings(_body(domain), creating=True), b"s")
        assert (refused.value.field, refused.value.rule) == ("allowed_domains", "domain-people")
        assert await sso.find(pool, two.id) is None  # nothing half-written
    # The account of those people may.
    await sso.configure(pool, one, checked_settings(_body(ascii_domain), creating=True), b"s")
    assert await sso.account_for_domain(pool, ascii_domain) == one.id


async def test_a_change_without_a_secret_needs_one_stored(pool: Pool) -> None:
    actor = Account(await registry.new_account(pool), "nosecret")

    with pytest.raises(NotFound) as refused:
        await sso.configure(pool, actor, checked_settings(_body("x.example"), creating=False), None)

    assert refused.value.field == "client_secret"
    assert await sso.find(pool, actor.id) is None
