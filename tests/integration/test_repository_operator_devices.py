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

from shared.db import devices
from shared.db.pool import Connection, Pool
from shared.db.retention import prune_batch
from shared.db.throttle import INVALIDATION_CHANNEL
from shared.domain.accounts import Account
from shared.domain.devices import online_cutoff, shown_state
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


async def test_stale_credentials_are_dated_reset_by_reset_and_a_deleted_device_remembered(
    pool: Pool, setup: Setup
) -> None:
    """What the intake reads to tell a stale secret from a guess (issue 22): when a reset
    replaced a credential generation, and a deleted device's last generation (migration
    0019), swept by retention after the stale-credential window."""
    actor = Account(setup.account_id, "test")
    device_id = await _device(pool, setup, "stale", lifecycle="provisioned")
    assert await devices.credentials_replaced_at(pool, device_id, 1) is None  # never reset
    before = datetime.now(UTC)
    await devices.change_devices(pool, actor, [device_id], "reset")
    first = await devices.credentials_replaced_at(pool, device_id, 1)
    assert first is not None and first >= before - timedelta(seconds=5)
    await devices.change_devices(pool, actor, [device_id], "reset")
    assert await devices.credentials_replaced_at(pool, device_id, 1) == first  # when 1 was replaced
    assert await devices.credentials_replaced_at(pool, device_id, 3) is None  # the current one

    assert await devices.deleted_device(pool, device_id) is None
    await devices.change_devices(pool, actor, [device_id], "delete")
    gone = await devices.deleted_device(pool, device_id)
    assert gone is not None and gone.credential_generation == 3
    assert gone.deleted_at >= before - timedelta(seconds=5)

    # Swept once past the window (an hour here), not before.
    deleted = await prune_batch(pool, "deleted_devices", datetime.now(UTC) - timedelta(hours=1), 1000)
    assert await devices.deleted_device(pool, device_id) is not None
    await pool.execute(
        "UPDATE deleted_devices SET deleted_at = now() - interval '2 hours' WHERE device_id = $1", device_id
    )
    deleted = await prune_batch(pool, "deleted_devices", datetime.now(UTC) - timedelta(hours=1), 1000)
    assert deleted >= 1
    assert await devices.deleted_device(pool, device_id) is None
