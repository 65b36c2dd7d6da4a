"""services.operator.handlers.products on the real Postgres: the account's issuing CA exists
before an auto registration is written, so a failure creating it leaves no registration
behind (whose 500 would have hidden a derived_key registration's group keys, shown once)."""

from __future__ import annotations

import pytest

from services.operator.handlers import products as handlers
from shared.db import certificates
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.settings import Secret
from tests.support import registry

pytestmark = pytest.mark.integration

SECRET = Secret("a" * 64)


async def test_a_failing_issuing_ca_leaves_no_auto_registration(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    await registry.new_code(pool, product.id)

    async def broken(*_: object) -> None:
        raise RuntimeError("the issuing CA could not be created")

    monkeypatch.setattr(certificates, "issuing_ca", broken)
    body = {"product_id": product.id, "attestation": "derived_key"}
    with pytest.raises(RuntimeError):
        await handlers.create_auto_registration(pool, Account(account_id, "test"), body, secret_key=SECRET)
    count = await pool.fetchval("SELECT count(*) FROM registrations WHERE product_id = $1", product.id)
    assert count == 0  # a retry creates it and shows its group keys
    monkeypatch.undo()
    created = await handlers.create_auto_registration(
        pool, Account(account_id, "test"), body, secret_key=SECRET
    )
    assert set(created.group_keys) == {"primary", "secondary"}
