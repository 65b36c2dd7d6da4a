"""shared.db.devices, the functions deduplication uses, on the real Postgres: the family of a
claimed hardware ID (by its lower-case stem), the device count a quota is checked against,
and confirmations and heartbeats, idempotent whatever the redelivery."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from shared.db import devices
from shared.db.pool import Pool
from shared.domain.identifiers import family_stems
from tests.support import registry

pytestmark = pytest.mark.integration


@pytest.fixture
async def product(pool: Pool) -> registry.Product:
    return await registry.new_product(pool, await registry.new_account(pool), kind="auto")


@pytest.fixture
async def registration_id(pool: Pool, product: registry.Product) -> str:
    return await registry.new_registration(pool, product)


async def _decision(pool: Pool, device_id: str, decision: str, source: str | None, age_s: int) -> None:
    """A decision about the device from ``source``, ``age_s`` seconds old."""
    await pool.execute(
        """INSERT INTO registration_decisions (request_id, device_id, claimed_hardware_id, decision,
                                              source, status, received_at, decided_at)
           SELECT $1, $2, hardware_id, $3, $4, 'decided', now(), now() - make_interval(secs => $5)
           FROM devices WHERE id = $2""",
        uuid.uuid4(),
        device_id,
        decision,
        source,
        age_s,
    )


async def test_load_family_finds_every_id_of_the_stem_in_the_account(
    pool: Pool, product: registry.Product, registration_id: str
) -> None:
    base = await registry.new_device(
        pool, product, registration_id, "Fam", key_digest=bytes.fromhex("0a0b"), fingerprint="fp"
    )
    clone = await registry.new_device(pool, product, registration_id, "fam-1")
    upper = await registry.new_device(
        pool,
        product,
        registration_id,
        "FAM-2",
        lifecycle="provisioned",
        disabled=True,
        credential_generation=3,
    )
    grandchild = await registry.new_device(pool, product, registration_id, "Fam-1-1")
    await registry.new_device(pool, product, registration_id, "Famous")
    stranger = await registry.new_product(pool, await registry.new_account(pool))
    await registry.new_device(pool, stranger, await registry.new_registration(pool, stranger), "Fam")

    async with pool.acquire() as conn:
        family = await devices.load_family(conn, product.account_id, family_stems("FAM"))
        of_clone = await devices.load_family(conn, product.account_id, family_stems("FAM-1"))
        assert await devices.load_family(conn, product.account_id, family_stems("nobody")) == []

    assert {d.id for d in family} == {base, clone, upper}
    assert {d.id for d in of_clone} == {base, clone, upper, grandchild}
    by_id = {d.id: d for d in family}
    assert (by_id[base].hardware_id, by_id[base].fingerprint, by_id[base].registration_key_digest) == (
        "Fam",
        "fp",
        "0a0b",
    )
    assert by_id[base].registration_id == registration_id
    assert abs(by_id[base].created_at - time.time()) < 60
    assert (by_id[upper].lifecycle, by_id[upper].disabled, by_id[upper].credential_generation) == (
        "provisioned",
        True,
        3,
    )
    assert by_id[clone].registration_key_digest == ""


async def test_claim_sources_are_those_of_the_claims_answered_since_the_device_was_last_registered(
    pool: Pool, product: registry.Product, registration_id: str
) -> None:
    """What the alert of two sources reclaiming one device before "ready" reads: the sources
    of its decisions that were not refusals, since its (latest) registration, while it is
    registered; none for a device that confirmed or is preregistered."""
    reclaimed = await registry.new_device(pool, product, registration_id, "Src1")
    await pool.execute(
        "UPDATE devices SET registered_at = now() - interval '7 seconds' WHERE id = $1", reclaimed
    )
    await _decision(pool, reclaimed, "new", "10.0.0.9", age_s=20)  # before a reset: not counted
    await _decision(pool, reclaimed, "new", "10.0.0.1", age_s=5)
    await _decision(pool, reclaimed, "same", "10.0.0.2", age_s=4)
    await _decision(pool, reclaimed, "same", "10.0.0.2", age_s=3)
    await _decision(pool, reclaimed, "refused", "10.0.0.3", age_s=2)
    await _decision(pool, reclaimed, "same", None, age_s=1)
    confirmed = await registry.new_device(pool, product, registration_id, "Src2", lifecycle="provisioned")
    await _decision(pool, confirmed, "new", "10.0.0.1", age_s=5)

    async with pool.acquire() as conn:
        family = await devices.load_family(conn, product.account_id, ["src1", "src2"])

    assert {d.id: d.claim_sources for d in family} == {
        reclaimed: {"10.0.0.1", "10.0.0.2"},
        confirmed: frozenset(),
    }
    assert {d.product_id for d in family} == {product.id}


async def test_count_registration_devices_answers_for_every_registration_asked(
    pool: Pool, product: registry.Product, registration_id: str
) -> None:
    for i in range(3):
        await registry.new_device(pool, product, registration_id, f"count{i}")
    other = await registry.new_product(pool, product.account_id, kind="auto")
    empty = await registry.new_registration(pool, other)

    async with pool.acquire() as conn:
        counts = await devices.count_registration_devices(conn, [registration_id, empty, registration_id])
        assert await devices.count_registration_devices(conn, []) == {}

    assert counts == {registration_id: 3, empty: 0}


async def _state(pool: Pool, device_id: str) -> tuple[str, datetime | None, datetime | None, int]:
    row = await pool.fetchrow(
        """SELECT lifecycle, provisioned_at, last_seen_at,
                  (SELECT count(*) FROM device_events e WHERE e.device_id = d.id AND e.kind = 'ready') AS ready
           FROM devices d WHERE id = $1""",
        device_id,
    )
    assert row is not None
    return row["lifecycle"], row["provisioned_at"], row["last_seen_at"], row["ready"]


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


async def test_ready_provisions_only_registered_devices_not_disabled(
    pool: Pool, product: registry.Product, registration_id: str
) -> None:
    registered = await registry.new_device(pool, product, registration_id, "sig1")
    preregistered = await registry.new_device(
        pool, product, registration_id, "sig2", lifecycle="preregistered"
    )
    disabled = await registry.new_device(pool, product, registration_id, "sig3", disabled=True)
    unknown = str(uuid.uuid4())
    t = 1_700_000_000.0
    ready = [(d, t, 1) for d in (registered, preregistered, disabled, unknown)]

    await devices.apply_signals(pool, ready, [])
    assert await _state(pool, registered) == ("provisioned", _at(t), _at(t), 1)
    assert await _state(pool, preregistered) == ("preregistered", None, None, 0)
    assert await _state(pool, disabled) == ("registered", None, None, 0)

    # Redelivered, and a later confirmation of the same device: still provisioned once.
    await devices.apply_signals(pool, ready, [])
    await devices.apply_signals(pool, [(registered, t + 60, 0)], [])
    lifecycle, provisioned_at, _, events = await _state(pool, registered)
    assert (lifecycle, provisioned_at, events) == ("provisioned", _at(t), 1)


async def test_ready_applies_only_to_the_credential_generation_it_was_sent_with(
    pool: Pool, product: registry.Product, registration_id: str
) -> None:
    """A "ready" accepted for generation 1 and applied after a reclaim before "ready" gave
    the device generation 2 confirms revoked credentials: dropped (attack2 F3). 0 (a record
    of the previous release) applies as before."""
    reclaimed = await registry.new_device(pool, product, registration_id, "gen1")
    legacy = await registry.new_device(pool, product, registration_id, "gen2")
    await pool.execute(
        "UPDATE devices SET credential_generation = 2 WHERE id = ANY($1::uuid[])", [reclaimed, legacy]
    )
    t = 1_700_000_000.0

    await devices.apply_signals(pool, [(reclaimed, t, 1), (legacy, t, 0)], [])
    assert await _state(pool, reclaimed) == ("registered", None, None, 0)
    assert await _state(pool, legacy) == ("provisioned", _at(t), _at(t), 1)
    # The holder of the new credentials confirms, also in a batch with the stale one.
    await devices.apply_signals(pool, [(reclaimed, t + 1, 1), (reclaimed, t + 2, 2)], [])
    assert await _state(pool, reclaimed) == ("provisioned", _at(t + 2), _at(t + 2), 1)


async def test_heartbeats_only_move_last_seen_forward(
    pool: Pool, product: registry.Product, registration_id: str
) -> None:
    device_id = await registry.new_device(pool, product, registration_id, "beat1")
    t = 1_700_000_000.0

    await devices.apply_signals(pool, [], [(device_id, t + 10)])
    await devices.apply_signals(pool, [], [(device_id, t)])  # late delivery of an older heartbeat
    await devices.apply_signals(pool, [], [(device_id, t + 10), (str(uuid.uuid4()), t)])  # redelivered
    assert (await _state(pool, device_id))[2] == _at(t + 10)

    await devices.apply_signals(pool, [(device_id, t + 5, 1)], [])  # a confirmation is a sign of life too
    assert await _state(pool, device_id) == ("provisioned", _at(t + 5), _at(t + 10), 1)
    await devices.apply_signals(pool, [], [(device_id, t + 20)])
    assert (await _state(pool, device_id))[2] == _at(t + 20)


async def test_the_newest_heartbeat_of_a_batch_wins(
    pool: Pool, product: registry.Product, registration_id: str
) -> None:
    device_id = await registry.new_device(pool, product, registration_id, "beat2")
    t = 1_700_000_000.0

    await devices.apply_signals(pool, [], [(device_id, t), (device_id, t + 30)])  # in the order sent

    assert (await _state(pool, device_id))[2] == _at(t + 30)
