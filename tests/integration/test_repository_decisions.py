"""shared.db.decisions on the real Postgres: deduplication's writes (new devices, claimed
preregistered devices, the decision trail), the guards that hold across instances, and
what the intake, provisioning and the operator API read back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest

from shared.db import decisions
from shared.db.decisions import DecisionRecord, Outcome, RegistryConflict
from shared.db.pool import Pool
from shared.domain.dedup import (
    REASON_BULK_ALREADY_CLAIMED,
    REASON_BULK_NOT_LISTED,
    Claim,
    KnownDevice,
    Verdict,
)
from tests.support import registry

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Setup:
    account_id: str
    product: registry.Product
    registration_id: str


@pytest.fixture
async def auto(pool: Pool) -> Setup:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    return Setup(account_id, product, await registry.new_registration(pool, product))


def _device(
    setup: Setup, hardware_id: str, *, claimed: str | None = None, fingerprint: str = "fp"
) -> KnownDevice:
    return KnownDevice(
        id=str(uuid.uuid4()),
        hardware_id=hardware_id,
        claimed_hardware_id=claimed or hardware_id,
        name=f"name of {hardware_id}",
        fingerprint=fingerprint,
        lifecycle="registered",
        disabled=False,
        credential_generation=1,
        registration_id=setup.registration_id,
    )


def _record(
    setup: Setup,
    verdict: Verdict,
    hardware_id: str,
    *,
    key: str = "",
    fingerprint: str = "fp",
    request_id: str | None = None,
    received_at: float | None = None,
) -> DecisionRecord:
    return DecisionRecord(
        claim=Claim(request_id or str(uuid.uuid4()), hardware_id, fingerprint, idempotency_key=key),
        verdict=verdict,
        account_id=setup.account_id,
        product_id=setup.product.id,
        received_at=received_at if received_at is not None else time.time(),
        protocol="native",
    )


def _new(setup: Setup, hardware_id: str, *, key: str = "", fingerprint: str = "fp") -> DecisionRecord:
    device = _device(setup, hardware_id, fingerprint=fingerprint)
    verdict = Verdict("new", device, created=True, reason="first")
    return _record(setup, verdict, hardware_id, key=key, fingerprint=fingerprint)


def _refused(
    setup: Setup, hardware_id: str, reason: str = REASON_BULK_NOT_LISTED, *, key: str = ""
) -> DecisionRecord:
    return _record(setup, Verdict("refused", reason=reason), hardware_id, key=key)


def _device_id(record: DecisionRecord) -> str:
    assert record.verdict.device is not None
    return record.verdict.device.id


async def _write(pool: Pool, records: list[DecisionRecord]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await decisions.record_decisions(conn, records)


async def test_new_clone_claimed_and_refused_are_written_in_one_transaction(pool: Pool, auto: Setup) -> None:
    preregistered = await registry.new_device(
        pool, auto.product, auto.registration_id, "PRE1", lifecycle="preregistered"
    )
    first = _new(auto, "Hw1", fingerprint="fp-a")
    clone_device = _device(auto, "Hw1-1", claimed="Hw1", fingerprint="fp-b")
    clone = _record(auto, Verdict("clone", clone_device, created=True), "Hw1", fingerprint="fp-b")
    taken = replace(_device(auto, "PRE1", fingerprint="fp-c"), id=preregistered)
    claim = _record(auto, Verdict("new", taken, claimed_preregistered=True), "PRE1", fingerprint="fp-c")
    refused = _refused(auto, "nope")

    await _write(pool, [first, clone, claim, refused])

    rows = {
        r["hardware_id"]: r
        for r in await pool.fetch(
            "SELECT hardware_id, claimed_hardware_id, lifecycle, fingerprint, registered_at, id::text "
            "FROM devices WHERE account_id = $1",
            auto.account_id,
        )
    }
    assert set(rows) == {"Hw1", "Hw1-1", "PRE1"}
    assert rows["Hw1-1"]["claimed_hardware_id"] == "Hw1"
    assert {h: (r["lifecycle"], r["fingerprint"]) for h, r in rows.items()} == {
        "Hw1": ("registered", "fp-a"),
        "Hw1-1": ("registered", "fp-b"),
        "PRE1": ("registered", "fp-c"),
    }
    assert all(r["registered_at"] is not None for r in rows.values())

    stored = await decisions.decided(
        pool, [first.claim.request_id, clone.claim.request_id, refused.claim.request_id]
    )
    assert stored[first.claim.request_id] == decisions.StoredDecision(
        request_id=first.claim.request_id,
        account_id=auto.account_id,
        product_id=auto.product.id,
        device_id=rows["Hw1"]["id"],
        hardware_id="Hw1",
        decision="new",
        reason="first",
        status="decided",
        credential_generation=1,
    )
    assert stored[clone.claim.request_id].hardware_id == "Hw1-1"
    assert stored[clone.claim.request_id].decision == "clone"
    assert stored[refused.claim.request_id].device_id is None
    assert stored[refused.claim.request_id].hardware_id == ""
    assert stored[refused.claim.request_id].status == "refused"
    assert stored[refused.claim.request_id].credential_generation == 0


async def test_decided_replays_stored_decisions_with_their_own_generation(pool: Pool, auto: Setup) -> None:
    """A redelivered decision is answered with the generation it decided (so a replay after
    a later reclaim or reset is superseded, never the device's newer secret); a decision
    recorded before decisions kept their generation (migration 0011) falls back to the
    device's current one."""
    record = _new(auto, "gen1")
    older = _new(auto, "gen0")
    await _write(pool, [record, older])
    for decided in (record, older):
        await pool.execute("UPDATE devices SET credential_generation = 3 WHERE id = $1", _device_id(decided))
    await pool.execute(
        "UPDATE registration_decisions SET credential_generation = NULL WHERE request_id = $1",
        older.claim.request_id,
    )
    unknown = str(uuid.uuid4())

    stored = await decisions.decided(pool, [record.claim.request_id, older.claim.request_id, unknown])

    assert set(stored) == {record.claim.request_id, older.claim.request_id}
    assert stored[record.claim.request_id].credential_generation == 1
    assert stored[older.claim.request_id].credential_generation == 3


async def test_a_hardware_id_taken_by_a_concurrent_transaction_raises_registry_conflict(
    pool: Pool, auto: Setup
) -> None:
    """Two instances decide "new" for the same hardware ID (in different case) on the same
    state: the second waits for the first, then must decide again, and leaves nothing."""
    winner, loser = _new(auto, "RaceHW", fingerprint="w"), _new(auto, "racehw", fingerprint="l")
    async with pool.acquire() as first, pool.acquire() as second:
        async with first.transaction():
            await decisions.record_decisions(first, [winner])

            async def write_second() -> None:
                async with second.transaction():
                    await decisions.record_decisions(second, [loser])

            racing = asyncio.create_task(write_second())
            await registry.wait_until_blocked(pool, second.get_server_pid(), racing)
            assert not racing.done(), "the second transaction never waited for the first"
        with pytest.raises(RegistryConflict):
            await asyncio.wait_for(racing, 10)

    devices = await pool.fetch(
        "SELECT hardware_id, fingerprint FROM devices WHERE account_id = $1", auto.account_id
    )
    assert [(r["hardware_id"], r["fingerprint"]) for r in devices] == [("RaceHW", "w")]
    stored = await decisions.decided(pool, [winner.claim.request_id, loser.claim.request_id])
    assert set(stored) == {winner.claim.request_id}


async def test_a_hardware_id_committed_before_raises_registry_conflict(pool: Pool, auto: Setup) -> None:
    await _write(pool, [_new(auto, "Taken-1")])
    with pytest.raises(RegistryConflict):
        await _write(pool, [_new(auto, "TAKEN-1")])


async def test_a_preregistered_device_claimed_concurrently_raises_registry_conflict(
    pool: Pool, auto: Setup
) -> None:
    device_id = await registry.new_device(
        pool, auto.product, auto.registration_id, "PreRace", lifecycle="preregistered"
    )

    def claim(fingerprint: str) -> DecisionRecord:
        taken = replace(_device(auto, "PreRace", fingerprint=fingerprint), id=device_id)
        return _record(
            auto, Verdict("new", taken, claimed_preregistered=True), "PreRace", fingerprint=fingerprint
        )

    winner, loser = claim("w"), claim("l")
    async with pool.acquire() as first, pool.acquire() as second:
        async with first.transaction():
            await decisions.record_decisions(first, [winner])

            async def write_second() -> None:
                async with second.transaction():
                    await decisions.record_decisions(second, [loser])

            racing = asyncio.create_task(write_second())
            await registry.wait_until_blocked(pool, second.get_server_pid(), racing)
            assert not racing.done(), "the second transaction never waited for the first"
        outcome = await asyncio.gather(asyncio.wait_for(racing, 10), return_exceptions=True)

    assert await pool.fetchval("SELECT fingerprint FROM devices WHERE id = $1", device_id) == "w"
    assert isinstance(outcome[0], RegistryConflict)
    assert set(await decisions.decided(pool, [winner.claim.request_id, loser.claim.request_id])) == {
        winner.claim.request_id
    }


async def test_a_redelivered_decision_is_a_no_op(pool: Pool, auto: Setup) -> None:
    """A batch decided again after a rebalance: the decision stored first stands."""
    first = _new(auto, "redeliver")
    await _write(pool, [first])
    device = first.verdict.device
    assert device is not None
    again = replace(first, verdict=Verdict("same", device, reason="retry"))
    refused = _refused(auto, "other")
    await _write(pool, [refused])

    await _write(pool, [again, replace(refused, verdict=Verdict("refused", reason="something else"))])

    stored = await decisions.decided(pool, [first.claim.request_id, refused.claim.request_id])
    assert (stored[first.claim.request_id].decision, stored[first.claim.request_id].reason) == (
        "new",
        "first",
    )
    assert stored[refused.claim.request_id].reason == REASON_BULK_NOT_LISTED
    assert await pool.fetchval("SELECT count(*) FROM devices WHERE account_id = $1", auto.account_id) == 1


async def test_load_idempotent_maps_each_key_of_the_product_to_its_first_device(
    pool: Pool, auto: Setup
) -> None:
    first = _new(auto, "idem1", key="k1")
    await _write(pool, [first])
    later = _new(auto, "idem2", key="k1")  # a later decision under the same key (another transaction)
    await _write(pool, [later, _refused(auto, "idem3", key="k2"), _new(auto, "idem4")])
    other = await registry.new_product(pool, auto.account_id, kind="auto")
    other_setup = Setup(auto.account_id, other, await registry.new_registration(pool, other))
    await _write(pool, [_new(other_setup, "idem5", key="k3")])

    async with pool.acquire() as conn:
        found = await decisions.load_idempotent(conn, auto.product.id, ["k1", "k2", "k3", "k1", "k4"])
        assert await decisions.load_idempotent(conn, auto.product.id, []) == {}

    assert found == {"k1": _device_id(first)}


async def test_a_refused_claim_never_makes_its_key_an_idempotency_match(pool: Pool) -> None:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="bulk")
    bulk = Setup(
        account_id,
        product,
        await registry.new_registration(pool, product, kind="bulk", status="preregistered"),
    )
    device_id = await registry.new_device(pool, product, bulk.registration_id, "listed", key_digest=b"\x01")
    taken = replace(_device(bulk, "listed"), id=device_id)
    await _write(
        pool,
        [
            _record(
                bulk, Verdict("refused", taken, reason=REASON_BULK_ALREADY_CLAIMED), "listed", key="intruder"
            )
        ],
    )

    async with pool.acquire() as conn:
        assert await decisions.load_idempotent(conn, product.id, ["intruder"]) == {}


async def test_failed_claims_counts_refusals_with_the_reason_within_the_window(
    pool: Pool, auto: Setup
) -> None:
    await _write(
        pool,
        [
            _refused(auto, "guess"),
            _refused(auto, "guess"),
            _refused(auto, "guess", reason="some other refusal"),
            _refused(auto, "elsewhere"),
            _new(auto, "guess"),
        ],
    )
    old = _refused(auto, "guess")
    await _write(pool, [old])
    await pool.execute(
        "UPDATE registration_decisions SET decided_at = now() - interval '2 hours' WHERE request_id = $1",
        old.claim.request_id,
    )

    async with pool.acquire() as conn:
        found = await decisions.failed_claims(
            conn, auto.product.id, ["guess", "unknown"], REASON_BULK_NOT_LISTED, 3600
        )
        longer = await decisions.failed_claims(
            conn, auto.product.id, ["guess"], REASON_BULK_NOT_LISTED, 3 * 3600
        )

    assert found == {"guess": 2}
    assert longer == {"guess": 3}


async def test_failed_claims_counts_one_hardware_id_whatever_its_case(pool: Pool, auto: Setup) -> None:
    await _write(pool, [_refused(auto, "B827EB"), _refused(auto, "b827eb"), _refused(auto, "B827eb")])
    async with pool.acquire() as conn:
        found = await decisions.failed_claims(conn, auto.product.id, ["b827eb"], REASON_BULK_NOT_LISTED, 3600)
    assert found == {"b827eb": 3}


async def test_mark_ready_moves_only_decided_requests(pool: Pool, auto: Setup) -> None:
    new, refused = _new(auto, "ready1"), _refused(auto, "ready2")
    await _write(pool, [new, refused])
    ids = [new.claim.request_id, refused.claim.request_id]

    async with pool.acquire() as conn:
        await decisions.mark_ready(conn, ids)
        first_ready_at = await conn.fetchval(
            "SELECT ready_at FROM registration_decisions WHERE request_id = $1", new.claim.request_id
        )
        await decisions.mark_ready(conn, ids)  # a redelivered batch
        await decisions.mark_ready(conn, [])

    stored = await decisions.decided(pool, ids)
    assert (stored[new.claim.request_id].status, stored[refused.claim.request_id].status) == (
        "ready",
        "refused",
    )
    rows = await pool.fetch(
        "SELECT request_id::text, ready_at FROM registration_decisions WHERE request_id = ANY($1::uuid[])",
        ids,
    )
    assert {r["request_id"]: r["ready_at"] for r in rows} == {
        new.claim.request_id: first_ready_at,
        refused.claim.request_id: None,
    }
    assert first_ready_at is not None


async def test_outcome_is_typed_and_follows_the_devices_state(pool: Pool, auto: Setup) -> None:
    new, refused = _new(auto, "out1"), _refused(auto, "out2")
    assert await decisions.outcome(pool, new.claim.request_id) is None  # not decided yet
    await _write(pool, [new, refused])
    device_id = _device_id(new)

    decided = await decisions.outcome(pool, new.claim.request_id)
    assert decided == Outcome(
        request_id=new.claim.request_id,
        status="decided",
        decision="new",
        reason="first",
        claimed_hardware_id="out1",
        assigned_hardware_id="out1",
        device_id=device_id,
        device_lifecycle="registered",
        device_disabled=False,
        credential_generation=1,
        decided_generation=1,
    )
    assert not decided.superseded
    async with pool.acquire() as conn:
        await decisions.mark_ready(conn, [new.claim.request_id])
    await pool.execute(
        "UPDATE devices SET lifecycle = 'provisioned', disabled = true, credential_generation = 2 WHERE id = $1",
        device_id,
    )
    later = await decisions.outcome(pool, new.claim.request_id)
    assert later is not None
    assert (later.status, later.device_lifecycle, later.device_disabled, later.credential_generation) == (
        "ready",
        "provisioned",
        True,
        2,
    )
    assert later.decided_generation == 1 and later.superseded  # a reset came after the decision

    assert await decisions.outcome(pool, refused.claim.request_id) == Outcome(
        request_id=refused.claim.request_id,
        status="refused",
        decision="refused",
        reason=REASON_BULK_NOT_LISTED,
        claimed_hardware_id="out2",
        assigned_hardware_id=None,
        device_id=None,
        device_lifecycle=None,
        device_disabled=False,
        credential_generation=0,
        decided_generation=1,
    )


async def test_list_decisions_pages_newest_first_through_shared_timestamps(pool: Pool, auto: Setup) -> None:
    older = [_new(auto, f"older{i}") for i in range(3)]
    await _write(pool, older)
    # One transaction: these seven share one decided_at (now() is the transaction's time).
    newer = [_new(auto, f"newer{i}") for i in range(4)] + [_refused(auto, f"refused{i}") for i in range(3)]
    await _write(pool, newer)
    stranger = await registry.new_account(pool)
    await _write(pool, [replace(_refused(auto, "stranger"), account_id=stranger)])

    newer_ids = sorted((r.claim.request_id for r in newer), key=uuid.UUID, reverse=True)
    older_ids = sorted((r.claim.request_id for r in older), key=uuid.UUID, reverse=True)

    async def walk(decision: str | None, limit: int) -> list[str]:
        seen: list[str] = []
        before, before_id = None, None
        while True:
            page = await decisions.list_decisions(
                pool, auto.account_id, decision=decision, before=before, before_id=before_id, limit=limit
            )
            seen.extend(e.request_id for e in page)
            if len(page) < limit:
                return seen
            before, before_id = page[-1].decided_at, page[-1].request_id

    assert await walk(None, 3) == newer_ids + older_ids
    assert await walk(None, 1) == newer_ids + older_ids
    refused_ids = sorted((r.claim.request_id for r in newer[4:]), key=uuid.UUID, reverse=True)
    assert await walk("refused", 2) == refused_ids

    (entry,) = await decisions.list_decisions(pool, auto.account_id, decision="refused", before=None, limit=1)
    assert entry == decisions.DecisionEntry(
        request_id=refused_ids[0],
        decided_at=entry.decided_at,
        decision="refused",
        reason=REASON_BULK_NOT_LISTED,
        claimed_hardware_id=next(r.claim.hardware_id for r in newer if r.claim.request_id == refused_ids[0]),
        assigned_hardware_id=None,
        device_id=None,
        product_id=auto.product.id,
        protocol="native",
    )


async def test_a_revoked_code_s_claims_keep_one_row_per_hardware_id_and_hour(pool: Pool, auto: Setup) -> None:
    """A stale board retrying a rotated code: one audit row per hardware ID (any case) and
    UTC hour, whatever the batches; other refusals keep one row each."""
    from shared.domain.admission import REASON_REVOKED_CODE

    hour = (time.time() // 3600) * 3600 + 60.0  # a minute into this hour: later claims stay in it

    def revoked(hardware_id: str, at: float = hour) -> DecisionRecord:
        return _record(auto, Verdict("refused", reason=REASON_REVOKED_CODE), hardware_id, received_at=at)

    first = revoked("Stale")
    await _write(pool, [first, revoked("stale"), revoked("STALE", hour + 10), revoked("other")])
    await _write(pool, [revoked("stale", hour + 600), _refused(auto, "stale"), _refused(auto, "stale")])
    await _write(pool, [revoked("stale", hour + 3600), revoked("stale", hour + 3700)])  # the next hour

    rows = await pool.fetch(
        """SELECT lower(claimed_hardware_id) AS hardware_id, reason, revoked_hour FROM registration_decisions
           WHERE product_id = $1 ORDER BY received_at, reason""",
        auto.product.id,
    )
    kept = Counter((r["hardware_id"], r["reason"]) for r in rows)
    assert kept == {
        ("stale", REASON_REVOKED_CODE): 2,  # this hour and the next
        ("other", REASON_REVOKED_CODE): 1,
        ("stale", REASON_BULK_NOT_LISTED): 2,  # counted for the key-guessing alert: each kept
    }
    assert {r["revoked_hour"] for r in rows if r["reason"] == REASON_REVOKED_CODE} == {
        datetime.fromtimestamp(hour - 60, UTC),
        datetime.fromtimestamp(hour - 60 + 3600, UTC),
    }
    # The kept claim answers its poll; the others were answered when they were decided.
    assert set(await decisions.decided(pool, [first.claim.request_id])) == {first.claim.request_id}


async def test_a_device_reclaimed_before_ready_gets_its_last_generation_and_the_intake_hears_of_it(
    pool: Pool, auto: Setup
) -> None:
    """Two reclaims of one device in one batch (a board's retries queued during an outage):
    the device ends at the last one's generation, each decision row keeps its own, and the
    intake is told to drop its cached copy (docs/security.md, "The window before ready")."""
    first = _new(auto, "Reclaim1", fingerprint="fp-r")
    device = first.verdict.device
    assert device is not None

    def reclaim(generation: int) -> DecisionRecord:
        regenerated = replace(device, credential_generation=generation)
        verdict = Verdict("same", regenerated, regenerated=True, reason="claimed again")
        return _record(auto, verdict, "Reclaim1", fingerprint="fp-r")

    heard: list[str] = []

    def hear(*args: object) -> None:
        heard.append(str(args[3]))

    async with pool.acquire() as conn:  # a session hears its own notifications too
        await conn.add_listener("fleetreg_invalidate", hear)
        async with conn.transaction():
            await decisions.record_decisions(conn, [first, reclaim(2), reclaim(3)])
        async with asyncio.timeout(5):
            while f"device:{device.id}" not in heard:
                await asyncio.sleep(0.01)
        await conn.remove_listener("fleetreg_invalidate", hear)

    assert await pool.fetchval("SELECT credential_generation FROM devices WHERE id = $1", device.id) == 3
    rows = await pool.fetch(
        "SELECT credential_generation FROM registration_decisions WHERE device_id = $1 ORDER BY credential_generation",
        device.id,
    )
    assert [r["credential_generation"] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("change", ["ready", "reset", "disable", "stale"])
async def test_a_reclaim_of_a_device_changed_since_it_was_read_raises_registry_conflict(
    pool: Pool, auto: Setup, change: str
) -> None:
    """A "ready", an operator's reset or disable, or another instance's reclaim between the
    read and the write: the batch is decided again, on the device as it is now."""
    device_id = await registry.new_device(pool, auto.product, auto.registration_id, f"Changed-{change}")
    statement = {
        "ready": "UPDATE devices SET lifecycle = 'provisioned' WHERE id = $1",
        "reset": "UPDATE devices SET lifecycle = 'preregistered', credential_generation = 2 WHERE id = $1",
        "disable": "UPDATE devices SET disabled = true WHERE id = $1",
        "stale": "UPDATE devices SET credential_generation = 2 WHERE id = $1",
    }[change]
    await pool.execute(statement, device_id)
    regenerated = replace(_device(auto, f"Changed-{change}"), id=device_id, credential_generation=2)
    record = _record(auto, Verdict("same", regenerated, regenerated=True), f"Changed-{change}")
    with pytest.raises(RegistryConflict):
        await _write(pool, [record])
    assert set(await decisions.decided(pool, [record.claim.request_id])) == set()
