"""shared.db.devices, the operator's side, on the real Postgres: the device listing (its
filters follow shared.domain.devices' online rule; keyset pages), a device with its history,
and disabling or resetting devices: one outcome per ID, only within the account, each change
announced on fleetreg_invalidate when, and only when, its transaction commits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

import asyncpg
import pytest

from shared.db import audit, devices, files
from shared.db.pool import Connection, Pool
from shared.db.throttle import INVALIDATION_CHANNEL
from shared.domain.accounts import Account
from shared.domain.credentials import Keyring
from shared.domain.devices import online_cutoff, shown_state
from shared.domain.provisioning import render, sha256_hex
from shared.errors import Conflict, NotFound
from tests.support import registry

pytestmark = pytest.mark.integration

ONLINE_TTL_S = 60.0


@dataclass(frozen=True)
class Setup:
    account_id: str
    product: registry.Product
    registration_id: str


@pytest.fixture
async def setup(pool: Pool) -> Setup:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    return Setup(account_id, product, await registry.new_registration(pool, product))


@pytest.fixture
async def stranger(pool: Pool) -> Setup:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    return Setup(account_id, product, await registry.new_registration(pool, product))


async def _device(
    pool: Pool,
    setup: Setup,
    hardware_id: str,
    *,
    lifecycle: str = "registered",
    disabled: bool = False,
    last_seen_at: datetime | None = None,
    registration_id: str | None = None,
    product: registry.Product | None = None,
) -> str:
    device_id = await registry.new_device(
        pool,
        product or setup.product,
        registration_id or setup.registration_id,
        hardware_id,
        lifecycle=lifecycle,
        disabled=disabled,
        fingerprint="fp",
    )
    await pool.execute(
        """UPDATE devices SET last_seen_at = $2,
                              provisioned_at = CASE WHEN lifecycle = 'provisioned' THEN now() END
           WHERE id = $1""",
        device_id,
        last_seen_at,
    )
    return device_id


async def _ids(pool: Pool, setup: Setup, now: datetime | None = None, **filters: str | None) -> set[str]:
    cutoff = online_cutoff(now or datetime.now(UTC), ONLINE_TTL_S)
    return {d.id for d in await devices.list_devices(pool, setup.account_id, online_cutoff=cutoff, **filters)}


async def test_the_state_filter_follows_the_online_rule(pool: Pool, setup: Setup, stranger: Setup) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cutoff = online_cutoff(now, ONLINE_TTL_S)
    made = {
        "pre": await _device(pool, setup, "pre", lifecycle="preregistered"),
        "reg": await _device(pool, setup, "reg"),
        "online": await _device(pool, setup, "online", lifecycle="provisioned", last_seen_at=now),
        "stale": await _device(
            pool, setup, "stale", lifecycle="provisioned", last_seen_at=cutoff - timedelta(1)
        ),
        "edge": await _device(pool, setup, "edge", lifecycle="provisioned", last_seen_at=cutoff),
        "just": await _device(
            pool, setup, "just", lifecycle="provisioned", last_seen_at=cutoff + timedelta(microseconds=1)
        ),
        "never": await _device(pool, setup, "never", lifecycle="provisioned"),
        "seen_registered": await _device(pool, setup, "seen_registered", last_seen_at=now),
        "dis": await _device(pool, setup, "dis", lifecycle="provisioned", disabled=True, last_seen_at=now),
        "dis_pre": await _device(pool, setup, "dis_pre", lifecycle="preregistered", disabled=True),
    }
    await _device(pool, stranger, "online", lifecycle="provisioned", last_seen_at=now)
    await _device(pool, stranger, "pre", lifecycle="preregistered")
    name = {device_id: key for key, device_id in made.items()}

    async def states(state: str | None) -> set[str]:
        return {name[d] for d in await _ids(pool, setup, now, state=state)}

    assert await states("online") == {"online", "just"}
    assert await states("offline") == {"pre", "reg", "stale", "edge", "never", "seen_registered"}
    assert await states("disabled") == {"dis", "dis_pre"}
    assert await states("preregistered") == {"pre"}
    assert await states("registered") == {"reg", "seen_registered"}
    assert await states(None) == set(made)
    # The operator shows each device with the same rule at the same moment.
    listed = await devices.list_devices(pool, setup.account_id, online_cutoff=cutoff)
    for state in ("online", "offline", "disabled"):
        shown = {
            name[d.id]
            for d in listed
            if shown_state(
                disabled=d.disabled,
                lifecycle=d.lifecycle,
                last_seen_at=d.last_seen_at,
                now=now,
                online_ttl_s=ONLINE_TTL_S,
            )
            == state
        }
        assert shown == await states(state), state


async def test_hardware_id_and_registration_filters(pool: Pool, setup: Setup, stranger: Setup) -> None:
    mixed = await _device(pool, setup, "B827eb-Mixed")
    await _device(pool, setup, "B827eb")  # the stem is no match
    other_product = await registry.new_product(pool, setup.account_id, kind="auto")
    other_registration = await registry.new_registration(pool, other_product)
    elsewhere = await _device(
        pool, setup, "elsewhere", product=other_product, registration_id=other_registration
    )
    await _device(pool, stranger, "b827eb-mixed")

    for asked in ("B827eb-Mixed", "b827eb-mixed", "B827EB-MIXED"):
        assert await _ids(pool, setup, hardware_id=asked) == {mixed}, asked
    assert await _ids(pool, setup, hardware_id="b827eb-mixe") == set()
    assert await _ids(pool, setup, registration_id=other_registration) == {elsewhere}
    assert await _ids(pool, setup, registration_id=stranger.registration_id) == set()
    assert await _ids(pool, setup, registration_id=setup.registration_id, hardware_id="elsewhere") == set()
    (found,) = await devices.list_devices(
        pool, setup.account_id, online_cutoff=datetime.now(UTC), hardware_id="b827EB-mixed"
    )
    assert (found.hardware_id, found.claimed_hardware_id, found.name) == (
        "B827eb-Mixed",
        "B827eb-Mixed",
        "Device B827eb-Mixed",
    )
    assert (found.product_id, found.registration_id, found.lifecycle, found.credential_generation) == (
        setup.product.id,
        setup.registration_id,
        "registered",
        1,
    )


async def test_pages_walk_every_device_once_in_id_order(pool: Pool, setup: Setup, stranger: Setup) -> None:
    mine = [await _device(pool, setup, f"page{i}") for i in range(7)]
    mine.append(await _device(pool, setup, "page-off", disabled=True))
    for i in range(5):
        await _device(pool, stranger, f"page{i}")  # IDs between the account's, never shown

    async def walk(limit: int, state: str | None = None) -> list[str]:
        seen: list[str] = []
        after: str | None = None
        while True:
            page = await devices.list_devices(
                pool, setup.account_id, online_cutoff=datetime.now(UTC), state=state, after=after, limit=limit
            )
            seen.extend(d.id for d in page)
            if len(page) < limit:
                return seen
            after = page[-1].id

    assert await walk(3) == sorted(mine)
    assert await walk(1) == sorted(mine)
    assert await walk(8) == sorted(mine)
    assert await walk(2, "registered") == sorted(mine[:7])
    assert await _ids(pool, setup, after=max(mine)) == set()


async def _decision(pool: Pool, device_id: str, at: datetime, decision: str = "new") -> str:
    request_id = str(uuid.uuid4())
    await pool.execute(
        """INSERT INTO registration_decisions (request_id, device_id, claimed_hardware_id, assigned_hardware_id,
                                              decision, reason, status, received_at, decided_at, protocol)
           SELECT $1, $2, hardware_id, hardware_id, $3, 'why', 'decided', $4, $4, 'compat'
           FROM devices WHERE id = $2""",
        request_id,
        device_id,
        decision,
        at,
    )
    return request_id


async def _event(pool: Pool, device_id: str, kind: str, at: datetime, detail: dict[str, object]) -> None:
    await pool.execute(
        "INSERT INTO device_events (device_id, kind, detail, at) VALUES ($1, $2, $3::jsonb, $4)",
        device_id,
        kind,
        json.dumps(detail),
        at,
    )


async def test_get_device_with_its_history_in_time_order(pool: Pool, setup: Setup, stranger: Setup) -> None:
    device_id = await _device(pool, setup, "hist")
    other = await _device(pool, setup, "hist-other")
    t = datetime(2024, 5, 1, tzinfo=UTC)
    # Written out of order: the history is ordered by time, not by insertion.
    await _event(pool, device_id, "reset", t + timedelta(seconds=30), {"credential_generation": 2})
    second = await _decision(pool, device_id, t + timedelta(seconds=40), "same")
    await _event(pool, device_id, "ready", t + timedelta(seconds=10), {})
    first = await _decision(pool, device_id, t)
    await _event(pool, other, "disabled", t + timedelta(seconds=20), {})
    await _decision(pool, other, t + timedelta(seconds=5))

    device = await devices.get_device(pool, setup.account_id, device_id)
    history = await devices.device_history(pool, device_id)

    assert (device.id, device.hardware_id, device.disabled) == (device_id, "hist", False)
    assert [(h.at - t).seconds for h in history] == [0, 10, 30, 40]
    assert [h.kind for h in history] == ["registration", "ready", "reset", "registration"]
    assert history[0].detail == {
        "decision": "new",
        "reason": "why",
        "claimed_hardware_id": "hist",
        "assigned_hardware_id": "hist",
        "request_id": first,
        "protocol": "compat",
    }
    assert (history[1].detail, history[2].detail) == ({}, {"credential_generation": 2})
    assert history[3].detail["request_id"] == second
    assert await devices.device_history(pool, await _device(pool, setup, "quiet")) == []
    with pytest.raises(NotFound):
        await devices.get_device(pool, stranger.account_id, device_id)
    with pytest.raises(NotFound):
        await devices.get_device(pool, setup.account_id, str(uuid.uuid4()))


async def _row(pool: Pool, device_id: str) -> tuple[str, bool, int, str, bool, list[str]]:
    row = await pool.fetchrow(
        """SELECT lifecycle, disabled, credential_generation, fingerprint, provisioned_at IS NOT NULL AS provisioned,
                  array(SELECT kind FROM device_events e WHERE e.device_id = d.id ORDER BY e.id) AS events
           FROM devices d WHERE id = $1""",
        device_id,
    )
    assert row is not None
    return (
        row["lifecycle"],
        row["disabled"],
        row["credential_generation"],
        row["fingerprint"],
        row["provisioned"],
        list(row["events"]),
    )


async def test_disable_gives_one_outcome_per_id_in_order(pool: Pool, setup: Setup, stranger: Setup) -> None:
    active = await _device(pool, setup, "act", lifecycle="provisioned")
    already = await _device(pool, setup, "off", disabled=True)
    theirs = await _device(pool, stranger, "theirs")
    unknown = str(uuid.uuid4())

    changes = await devices.change_devices(
        pool, Account(setup.account_id, "test"), [theirs, already, active.upper(), unknown], "disable"
    )

    assert [(c.device_id, c.outcome) for c in changes] == [
        (theirs, "not_found"),
        (already, "unchanged"),
        (active, "disabled"),
        (unknown, "not_found"),
    ]
    assert await _row(pool, active) == ("provisioned", True, 1, "fp", True, ["disabled"])
    assert await _row(pool, already) == ("registered", True, 1, "fp", False, [])
    assert await _row(pool, theirs) == ("registered", False, 1, "fp", False, [])
    assert await devices.change_devices(pool, Account(setup.account_id, "test"), [], "disable") == []


async def test_reset_bumps_the_generation_and_refuses_a_disabled_device(
    pool: Pool, setup: Setup, stranger: Setup
) -> None:
    provisioned = await _device(pool, setup, "prov", lifecycle="provisioned", last_seen_at=datetime.now(UTC))
    registered = await _device(pool, setup, "reg")
    disabled = await _device(pool, setup, "dis", disabled=True)
    theirs = await _device(pool, stranger, "theirs", lifecycle="provisioned")

    changes = await devices.change_devices(
        pool, Account(setup.account_id, "test"), [disabled, provisioned, theirs, registered], "reset"
    )

    assert [c.outcome for c in changes] == ["conflict", "reset", "not_found", "reset"]
    assert await _row(pool, provisioned) == ("preregistered", False, 2, "", False, ["reset"])
    assert await _row(pool, registered) == ("preregistered", False, 2, "", False, ["reset"])
    assert await _row(pool, disabled) == ("registered", True, 1, "fp", False, [])
    assert await _row(pool, theirs) == ("provisioned", False, 1, "fp", True, [])
    (reset,) = [h for h in await devices.device_history(pool, provisioned) if h.kind == "reset"]
    assert reset.detail == {"credential_generation": 2}
    await devices.change_devices(pool, Account(setup.account_id, "test"), [provisioned], "reset")
    assert (await _row(pool, provisioned))[2] == 3


async def test_disable_device_and_reset_device_raise_for_one_device(
    pool: Pool, setup: Setup, stranger: Setup
) -> None:
    theirs = await _device(pool, stranger, "theirs")
    mine = await _device(pool, setup, "mine")

    with pytest.raises(NotFound):
        await devices.change_device(pool, Account(setup.account_id, "test"), theirs, "disable")
    with pytest.raises(NotFound):
        await devices.change_device(pool, Account(setup.account_id, "test"), theirs, "reset")
    await devices.change_device(pool, Account(setup.account_id, "test"), mine, "disable")
    await devices.change_device(
        pool, Account(setup.account_id, "test"), mine, "disable"
    )  # disabled already: nothing to do
    with pytest.raises(Conflict):
        await devices.change_device(pool, Account(setup.account_id, "test"), mine, "reset")
    assert (await _row(pool, theirs))[1:3] == (False, 1)


@contextlib.asynccontextmanager
async def _listening(database_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Notifications on fleetreg_invalidate, as the intake receives them: on a connection of
    its own."""
    received: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.add_listener(
            INVALIDATION_CHANNEL, lambda _c, _pid, _channel, payload: received.put_nowait(payload)
        )
        yield received
    finally:
        await conn.close()


async def _payloads(received: asyncio.Queue[str], ours: Sequence[str], settle_s: float = 0.2) -> list[str]:
    """Ours among what arrives within ``settle_s`` (other tests share the channel)."""
    got: list[str] = []
    deadline = asyncio.get_running_loop().time() + settle_s
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        try:
            payload = await asyncio.wait_for(received.get(), left)
        except TimeoutError:
            break
        if payload.removeprefix("device:") in ours:
            got.append(payload)
    return got


async def test_each_change_is_announced_on_fleetreg_invalidate(
    pool: Pool, setup: Setup, stranger: Setup, migrated: str
) -> None:
    a, b = await _device(pool, setup, "note-a"), await _device(pool, setup, "note-b")
    off = await _device(pool, setup, "note-off", disabled=True)
    theirs = await _device(pool, stranger, "note-theirs")
    ours = [a, b, off, theirs]

    async with _listening(migrated) as received:
        await devices.change_devices(
            pool, Account(setup.account_id, "test"), [a.upper(), off, theirs], "disable"
        )
        disabled = await _payloads(received, ours)
        await devices.change_devices(pool, Account(setup.account_id, "test"), [b, off, theirs], "reset")
        reset = await _payloads(received, ours)

    assert disabled == [f"device:{a}"]
    assert reset == [f"device:{b}"]


class _InTransaction:
    """A pool whose only connection is in the test's transaction: change_devices' own
    transaction becomes a savepoint of it, so that the test decides whether it commits."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        yield self._conn


async def test_nothing_is_announced_unless_the_transaction_commits(
    pool: Pool, setup: Setup, migrated: str
) -> None:
    device_id = await _device(pool, setup, "note-tx")

    async with _listening(migrated) as received, pool.acquire() as conn:
        in_transaction = cast(Pool, _InTransaction(conn))
        rollback = conn.transaction()
        await rollback.start()
        (change,) = await devices.change_devices(
            in_transaction, Account(setup.account_id, "test"), [device_id], "disable"
        )
        assert change.outcome == "disabled"
        assert await _payloads(received, [device_id]) == []
        await rollback.rollback()
        assert await _payloads(received, [device_id]) == []
        assert not (await _row(pool, device_id))[1]

        commit = conn.transaction()
        await commit.start()
        await devices.change_devices(
            in_transaction, Account(setup.account_id, "test"), [device_id], "disable"
        )
        assert await _payloads(received, [device_id]) == []  # not before the commit
        await commit.commit()
        assert await _payloads(received, [device_id]) == [f"device:{device_id}"]
    assert (await _row(pool, device_id))[1]


async def test_devices_by_id_finds_only_the_accounts_devices(
    pool: Pool, setup: Setup, stranger: Setup
) -> None:
    mine = [await _device(pool, setup, f"by-id{i}") for i in range(3)]
    theirs = await _device(pool, stranger, "by-id0")

    found = await devices.devices_by_id(pool, setup.account_id, [*mine, theirs, str(uuid.uuid4())])

    assert set(found) == set(mine)
    assert {d.hardware_id for d in found.values()} == {"by-id0", "by-id1", "by-id2"}
    assert found[mine[0]] == await devices.get_device(pool, setup.account_id, mine[0])
    assert await devices.devices_by_id(pool, setup.account_id, []) == {}


# ---------------------------------------------------------------- move and rename

KEYRING = Keyring(b"k" * 32)


async def _provisioned(pool: Pool, device_id: str) -> dict[str, str]:
    """Render and record the device's files as provisioning does; their digests by file name."""
    async with pool.acquire() as conn, conn.transaction():
        found = await files.device_files(conn, [device_id], lock=True)
        stale = [(d, s) for d in found.values() for s in d.stale()]
        uids = await files.next_service_uids(conn, sum(1 for _, s in stale if s.service_uid is None))
        await files.record_files(conn, files.render_stale(KEYRING, stale, uids))
    return await _digests(pool, device_id)


async def _digests(pool: Pool, device_id: str) -> dict[str, str]:
    rows = await pool.fetch(
        "SELECT file_name, sha256 FROM provisioning_files WHERE device_id = $1", device_id
    )
    return {r["file_name"]: r["sha256"] for r in rows}


def _downloads_match(device: files.DeviceFiles | None) -> bool:
    """Every current file rendered again as the intake does on download matches its digest."""
    assert device is not None and device.current()
    return all(
        sha256_hex(
            render(
                device.spec(s, s.service_uid or ""),
                KEYRING.service_password(s.service_uid or "", device.credential_generation),
            )
        )
        == (s.recorded.sha256 if s.recorded else "")
        for s in device.current()
    )


async def _audited(pool: Pool, setup: Setup, device_id: str, action: str) -> list[dict[str, object]]:
    events = await audit.list_events(
        pool, setup.account_id, audit.AuditFilter(action=action, target_id=device_id), limit=10
    )
    return [dict(e.changes) for e in events]


async def test_a_move_resets_the_device_into_the_target_products_registration(
    pool: Pool, setup: Setup, migrated: str
) -> None:
    actor = Account(setup.account_id, "test")
    target = await registry.new_product(pool, setup.account_id, kind="auto")
    target_registration = await registry.new_registration(pool, target)
    device_id = await _device(pool, setup, "move-me", lifecycle="provisioned", last_seen_at=datetime.now(UTC))
    assert await _provisioned(pool, device_id)

    async with _listening(migrated) as received:
        await devices.move_device(pool, actor, device_id.upper(), target.id)
        announced = await _payloads(received, [device_id])

    moved = await devices.get_device(pool, setup.account_id, device_id)
    assert (moved.product_id, moved.registration_id) == (target.id, target_registration)
    assert (moved.hardware_id, moved.name) == ("move-me", "Device move-me")
    assert await _row(pool, device_id) == ("preregistered", False, 2, "", False, ["moved"])
    assert await _digests(pool, device_id) == {}  # rendered for the target's services at its next claim
    assert announced == [f"device:{device_id}"]
    (event,) = [h for h in await devices.device_history(pool, device_id) if h.kind == "moved"]
    assert event.detail == {
        "credential_generation": 2,
        "from_product_id": setup.product.id,
        "to_product_id": target.id,
    }
    assert await _audited(pool, setup, device_id, "device.moved") == [
        {
            "hardware_id": "move-me",
            "product_id": {"from": setup.product.id, "to": target.id},
            "registration_id": {"from": setup.registration_id, "to": target_registration},
            "lifecycle": {"from": "provisioned", "to": "preregistered"},
            "credential_generation": {"from": 1, "to": 2},
        }
    ]
    # The old product holds nothing of it any more: it can be deleted (no file row refers
    # to its services).
    await pool.execute("DELETE FROM registrations WHERE id = $1", setup.registration_id)
    await pool.execute("DELETE FROM products WHERE id = $1", setup.product.id)


async def test_a_bulk_device_moves_with_its_key_into_the_newest_published_bulk_registration(
    pool: Pool,
) -> None:
    account_id = await registry.new_account(pool)
    actor = Account(account_id, "test")
    source = await registry.new_product(pool, account_id, kind="bulk")
    source_registration = await registry.new_registration(pool, source, kind="bulk", status="preregistered")
    target = await registry.new_product(pool, account_id, kind="bulk")
    older = await registry.new_registration(pool, target, kind="bulk", status="preregistered")
    newer = await registry.new_registration(pool, target, kind="bulk", status="preregistered")
    await registry.new_registration(pool, target, kind="bulk", status="configured")  # not published
    await pool.execute(
        "UPDATE registrations SET created_at = created_at - interval '1 hour' WHERE id = $1", older
    )
    digest = b"d" * 32
    device_id = await registry.new_device(pool, source, source_registration, "bulk-move", key_digest=digest)
    auto = await registry.new_product(pool, account_id, kind="auto")
    auto_registration = await registry.new_registration(pool, auto)
    keyless = await registry.new_device(pool, auto, auto_registration, "keyless")

    await devices.move_device(pool, actor, device_id, target.id)

    moved = await devices.get_device(pool, account_id, device_id)
    assert (moved.product_id, moved.registration_id, moved.lifecycle) == (target.id, newer, "preregistered")
    assert (
        await pool.fetchval("SELECT registration_key_digest FROM devices WHERE id = $1", device_id) == digest
    )
    with pytest.raises(Conflict) as refused:
        await devices.move_device(pool, actor, keyless, target.id)
    assert (refused.value.rule, refused.value.field) == ("registration_key_required", "product_id")
    # A bulk device may go to an auto product (its key is kept, unused there).
    await devices.move_device(pool, actor, device_id, auto.id)
    assert (await devices.get_device(pool, account_id, device_id)).registration_id == auto_registration


async def test_a_move_is_refused_where_no_claim_could_take_the_device(
    pool: Pool, setup: Setup, stranger: Setup
) -> None:
    actor = Account(setup.account_id, "test")
    device_id = await _device(pool, setup, "stay", lifecycle="provisioned")
    disabled = await _device(pool, setup, "stay-off", disabled=True)
    theirs = await _device(pool, stranger, "theirs")
    new = await registry.new_product(pool, setup.account_id, locked=False)
    idle = await registry.new_product(pool, setup.account_id, kind=None)
    unpublished = await registry.new_product(pool, setup.account_id, kind="bulk")
    await registry.new_registration(pool, unpublished, kind="bulk", status="configured")
    full = await registry.new_product(pool, setup.account_id, kind="auto")
    full_registration = await registry.new_registration(pool, full)
    await pool.execute("UPDATE registrations SET max_devices = 1 WHERE id = $1", full_registration)
    await registry.new_device(pool, full, full_registration, "occupant")
    target = await registry.new_product(pool, setup.account_id, kind="auto")
    await registry.new_registration(pool, target)

    async def rule(device: str, product_id: str) -> str | None:
        with pytest.raises(Conflict) as refused:
            await devices.move_device(pool, actor, device, product_id)
        return refused.value.rule

    assert await rule(device_id, setup.product.id) == "same_product"
    assert await rule(device_id, new.id) == "product_locked"
    assert await rule(device_id, idle.id) == "no_registration"
    assert await rule(device_id, unpublished.id) == "no_registration"
    assert await rule(device_id, full.id) == "max_devices"
    assert await rule(disabled, target.id) == "device_enabled"
    with pytest.raises(NotFound):
        await devices.move_device(pool, actor, theirs, target.id)
    with pytest.raises(NotFound) as unknown:
        await devices.move_device(pool, actor, device_id, stranger.product.id)
    assert unknown.value.field == "product_id"
    # Nothing changed, anywhere, and nothing was recorded.
    assert await _row(pool, device_id) == ("provisioned", False, 1, "fp", True, [])
    assert await _row(pool, theirs) == ("registered", False, 1, "fp", False, [])
    assert await _audited(pool, setup, device_id, "device.moved") == []
    # Once the quota is raised the move goes through, into a paused registration too (the
    # device claims once it is resumed).
    await pool.execute(
        "UPDATE registrations SET max_devices = 2, status = 'paused' WHERE id = $1", full_registration
    )
    await devices.move_device(pool, actor, device_id, full.id)
    assert (await devices.get_device(pool, setup.account_id, device_id)).registration_id == full_registration


async def test_a_rename_renders_the_files_again_and_keeps_the_credentials(
    pool: Pool, setup: Setup, stranger: Setup, migrated: str
) -> None:
    actor = Account(setup.account_id, "test")
    device_id = await _device(pool, setup, "named", lifecycle="provisioned")
    theirs = await _device(pool, stranger, "theirs")
    before = await _provisioned(pool, device_id)
    uids = await pool.fetch(
        "SELECT service_uid FROM provisioning_files WHERE device_id = $1 ORDER BY 1", device_id
    )

    async with _listening(migrated) as received:
        assert await devices.rename_device(pool, actor, KEYRING, device_id, "Lobby gateway 2")
        announced = await _payloads(received, [device_id])

    after = await _digests(pool, device_id)
    assert set(after) == set(before) and all(after[f] != before[f] for f in before)
    assert (
        await pool.fetch(
            "SELECT service_uid FROM provisioning_files WHERE device_id = $1 ORDER BY 1", device_id
        )
        == uids
    )
    assert _downloads_match(await files.one_device_files(pool, device_id))
    assert (await devices.get_device(pool, setup.account_id, device_id)).name == "Lobby gateway 2"
    assert await _row(pool, device_id) == ("provisioned", False, 1, "fp", True, ["renamed"])
    assert announced == [f"device:{device_id}"]
    assert await _audited(pool, setup, device_id, "device.renamed") == [
        {"hardware_id": "named", "name": {"from": "Device named", "to": "Lobby gateway 2"}}
    ]
    assert not await devices.rename_device(pool, actor, KEYRING, device_id, "Lobby gateway 2")  # no change
    assert len(await _audited(pool, setup, device_id, "device.renamed")) == 1
    with pytest.raises(NotFound):
        await devices.rename_device(pool, actor, KEYRING, theirs, "mine now")
    assert (await devices.get_device(pool, stranger.account_id, theirs)).name == "Device theirs"


async def test_a_rename_waits_for_a_provisioning_under_way_and_renders_its_files_again(
    pool: Pool, setup: Setup
) -> None:
    """Provisioning reads the device (FOR KEY SHARE), the operator renames it, provisioning
    records files rendered from the name it read: the rename waits for that commit and
    renders them again, so every download still matches its manifest."""
    actor = Account(setup.account_id, "test")
    device_id = await _device(pool, setup, "racing")
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        found = await files.device_files(conn, [device_id], lock=True)
        stale = [(d, s) for d in found.values() for s in d.stale()]
        rename = asyncio.create_task(
            devices.rename_device(pool, actor, KEYRING, device_id, "renamed meanwhile")
        )
        await registry.wait_until_waiting_for(pool, conn.get_server_pid())
        uids = await files.next_service_uids(conn, len(stale))
        await files.record_files(conn, files.render_stale(KEYRING, stale, uids))
        await transaction.commit()
    assert await rename
    device = await files.one_device_files(pool, device_id)
    assert device is not None and device.name == "renamed meanwhile"
    assert _downloads_match(device)
