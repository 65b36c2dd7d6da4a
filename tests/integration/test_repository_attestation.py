"""shared.db.attestation on the real Postgres: a derived_key registration's sealed group
keys (created, read by code, rotated one at a time, refused for a code registration), and
the nonces of accepted proofs (once each, in any case of the hardware ID, forgotten after
their proof expired)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from services.intake.attestation import NonceBook
from shared.db import attestation, registrations
from shared.db.attestation import ProofNonce
from shared.db.pool import Pool
from shared.db.registrations import GroupKeys
from shared.domain.accounts import Account
from shared.domain.derived_keys import GroupKeyBox, new_group_key
from shared.errors import Conflict, NotFound
from tests.support import registry

pytestmark = pytest.mark.integration

BOX = GroupKeyBox(b"integration-secret-key")


async def _derived(pool: Pool) -> tuple[Account, str, str, dict[str, str]]:
    """A derived_key auto registration: (actor, its ID, its product's code, its keys)."""
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    code = await registry.new_code(pool, product.id)
    actor = Account(account_id, "test")
    registration_id = str(uuid.uuid4())
    keys = {"primary": new_group_key(), "secondary": new_group_key()}
    sealed = GroupKeys(
        registration_id,
        BOX.seal(registration_id, "primary", keys["primary"]),
        BOX.seal(registration_id, "secondary", keys["secondary"]),
    )
    await registrations.create_registration(pool, actor, product.id, "auto", "active", group_keys=sealed)
    return actor, registration_id, code, keys


async def test_group_keys_are_kept_sealed_read_by_code_and_rotated_one_at_a_time(pool: Pool) -> None:
    actor, registration_id, code, keys = await _derived(pool)
    found = await registrations.get_registration(pool, actor.id, "auto", registration_id)
    assert found.attestation == "derived_key"
    by_code = await attestation.group_keys_of_code(pool, code)
    assert by_code is not None and by_code.registration_id == registration_id
    assert BOX.open(registration_id, "primary", by_code.primary_sealed) == keys["primary"]
    assert keys["primary"].encode() not in by_code.primary_sealed

    new = new_group_key()
    await attestation.rotate_group_key(
        pool, actor, registration_id, "secondary", BOX.seal(registration_id, "secondary", new)
    )
    after = await attestation.sealed_group_keys(pool, actor.id, registration_id)
    assert BOX.open(registration_id, "secondary", after.secondary_sealed) == new
    assert BOX.open(registration_id, "primary", after.primary_sealed) == keys["primary"]
    with pytest.raises(NotFound):
        await attestation.sealed_group_keys(pool, str(uuid.uuid4()), registration_id)


async def test_a_code_registration_has_no_group_keys(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    code = await registry.new_code(pool, product.id)
    actor = Account(account_id, "test")
    registration_id = await registrations.create_registration(pool, actor, product.id, "auto", "active")
    assert (
        await registrations.get_registration(pool, account_id, "auto", registration_id)
    ).attestation == "code"
    found = await attestation.group_keys_of_code(pool, code)
    assert found is not None and found.attestation == "code"
    with pytest.raises(Conflict):
        await attestation.sealed_group_keys(pool, account_id, registration_id)
    with pytest.raises(Conflict):
        await attestation.rotate_group_key(pool, actor, registration_id, "primary", b"x")
    assert await attestation.group_keys_of_code(pool, str(uuid.uuid4()).upper()) is None


async def test_a_nonce_is_accepted_once_and_forgotten_after_its_proof_expired(pool: Pool) -> None:
    _, registration_id, _, _ = await _derived(pool)
    later = int(time.time()) + 300
    assert await attestation.accept_nonce(pool, registration_id, "Hw-1", "ab" * 8, later)
    assert not await attestation.accept_nonce(pool, registration_id, "hw-1", "ab" * 8, later)
    assert await attestation.accept_nonce(pool, registration_id, "hw-2", "ab" * 8, later)
    assert await attestation.accept_nonce(pool, registration_id, "hw-3", "cd" * 8, int(time.time()) - 120)
    await attestation.forget_expired_nonces(pool)
    left = await pool.fetch(
        "SELECT hardware_id FROM proof_nonces WHERE registration_id = $1", registration_id
    )
    assert sorted(r["hardware_id"] for r in left) == ["hw-1", "hw-2"]


async def test_a_batch_of_nonces_accepts_each_key_once_in_any_case_and_order(pool: Pool) -> None:
    """The intake records concurrent proofs in one statement (NonceBook): a key recorded
    before, or already in the batch (the same hardware ID in another case), is a replay;
    only the first of the batch is accepted; another registration's key is its own."""
    _, registration_id, _, _ = await _derived(pool)
    _, other_id, _, _ = await _derived(pool)
    later = int(time.time()) + 300
    assert await attestation.accept_nonce(pool, registration_id, "hw-old", "ee" * 8, later)
    proofs = [
        ProofNonce(registration_id, "HW-A", "ab" * 8, later),
        ProofNonce(registration_id, "hw-old", "ee" * 8, later),  # recorded before
        ProofNonce(registration_id, "hw-a", "ab" * 8, later),  # the first one again, in another case
        ProofNonce(registration_id, "hw-b", "ab" * 8, later),
        ProofNonce(other_id, "hw-a", "ab" * 8, later),
        ProofNonce(registration_id, "HW-A", "ab" * 8, later),  # and again
    ]
    assert await attestation.accept_nonces(pool, proofs) == [True, False, False, True, True, False]
    assert await attestation.accept_nonces(pool, proofs) == [False] * 6
    assert await attestation.accept_nonces(pool, []) == []


async def test_the_intakes_nonce_book_refuses_a_replay_sent_at_the_same_time(pool: Pool) -> None:
    _, registration_id, _, _ = await _derived(pool)
    later = int(time.time()) + 300
    book = NonceBook(pool)
    answers = await asyncio.gather(
        *(book.accept(registration_id, f"hw-{n % 5}", "cd" * 8, later) for n in range(20))
    )
    assert answers == [True] * 5 + [False] * 15
