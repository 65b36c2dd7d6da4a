"""shared.db.alerts on the real Postgres: one alert per (product, kind, hardware ID) that
every later sighting updates, each kind with its own fields, concurrent batches that never
deadlock on shared alerts, and the operator's listing, paged without skipping alerts seen at
the same time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace

import pytest

from shared.db import alerts
from shared.db.alerts import BULK_KEY_GUESSING, HARDWARE_ID_SQUATTING, QUOTA_FILLED, AlertSighting
from shared.db.pool import Connection, Pool
from tests.support import registry

pytestmark = pytest.mark.integration


@pytest.fixture
async def product(pool: Pool) -> registry.Product:
    return await registry.new_product(pool, await registry.new_account(pool), kind="bulk")


def _sighting(
    product: registry.Product, hardware_id: str, wrong_keys: int = 10, listed: bool = True
) -> AlertSighting:
    return AlertSighting(
        product.account_id, product.id, BULK_KEY_GUESSING, hardware_id, wrong_keys, 900.0, listed=listed
    )


async def _record(pool: Pool, sightings: Sequence[AlertSighting]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await alerts.record(conn, sightings)


async def _all(pool: Pool, account_id: str) -> list[alerts.SecurityAlert]:
    return await alerts.list_alerts(pool, account_id, kind=None, before=None, limit=1000)


async def test_one_alert_per_hardware_id_and_the_last_sighting_wins(
    pool: Pool, product: registry.Product
) -> None:
    other_product = await registry.new_product(pool, product.account_id, kind="bulk")
    await _record(
        pool,
        [
            _sighting(product, "H1", 10, listed=False),
            _sighting(product, "H2", 10),
            _sighting(product, "H1", 11, listed=True),  # later in the same batch
            _sighting(other_product, "H1", 10),
        ],
    )
    (first,) = [
        a
        for a in await _all(pool, product.account_id)
        if a.hardware_id == "H1" and a.product_id == product.id
    ]
    assert (first.kind, first.count, first.wrong_keys, first.listed, first.window_seconds, first.source) == (
        BULK_KEY_GUESSING,
        11,
        11,
        True,
        900,
        "",
    )

    await _record(pool, [_sighting(product, "H1", 12, listed=False)])

    found = await _all(pool, product.account_id)
    assert sorted((a.product_id, a.hardware_id) for a in found) == sorted(
        [(product.id, "H1"), (product.id, "H2"), (other_product.id, "H1")]
    )
    (later,) = [a for a in found if a.hardware_id == "H1" and a.product_id == product.id]
    assert (later.id, later.first_seen_at) == (first.id, first.first_seen_at)
    assert (later.wrong_keys, later.listed) == (12, False)
    assert later.last_seen_at > first.last_seen_at
    assert found[0] == later  # the most recently seen first

    await _record(pool, [])  # nothing to record: no statement, no error


async def test_each_kind_keeps_its_source_count_and_window_beside_the_bulk_alerts(
    pool: Pool, product: registry.Product
) -> None:
    """The kinds of issue 22 share the table with bulk_key_guessing: one alert per (product,
    kind, hardware ID), the last occurrence's source, count and window; listed and wrong_keys
    are bulk_key_guessing's alone."""
    squat = AlertSighting(
        product.account_id, product.id, HARDWARE_ID_SQUATTING, "H", 20, 60.0, source="192.0.2.7"
    )
    quota = AlertSighting(product.account_id, product.id, QUOTA_FILLED, "H-3", 50, None, source="192.0.2.8")
    await _record(pool, [squat, quota, _sighting(product, "H", 10, listed=True)])
    await _record(pool, [replace(squat, count=21, source="2001:db8:1:2::/64")])

    found = {a.kind: a for a in await _all(pool, product.account_id)}
    assert set(found) == {BULK_KEY_GUESSING, HARDWARE_ID_SQUATTING, QUOTA_FILLED}
    squatting = found[HARDWARE_ID_SQUATTING]
    assert (squatting.hardware_id, squatting.source, squatting.count, squatting.window_seconds) == (
        "H",
        "2001:db8:1:2::/64",
        21,
        60,
    )
    assert (squatting.listed, squatting.wrong_keys) == (None, None)
    filled = found[QUOTA_FILLED]
    assert (filled.hardware_id, filled.source, filled.count, filled.window_seconds) == (
        "H-3",
        "192.0.2.8",
        50,
        None,
    )
    assert (found[BULK_KEY_GUESSING].wrong_keys, found[BULK_KEY_GUESSING].listed) == (10, True)
    assert [
        a.kind
        for a in await alerts.list_alerts(pool, product.account_id, kind=QUOTA_FILLED, before=None, limit=10)
    ] == [QUOTA_FILLED]


async def test_concurrent_batches_updating_the_same_alerts_never_deadlock(
    pool: Pool, product: registry.Product
) -> None:
    """Two batches that see the same hardware IDs in opposite orders, started while a third
    transaction holds the middle alert: both must wait in the same order, not for each other."""
    sightings = [_sighting(product, f"h{i:02d}") for i in range(20)]
    await _record(pool, sightings)
    async with pool.acquire() as holder, pool.acquire() as first, pool.acquire() as second:
        async with holder.transaction():
            await holder.execute(
                "SELECT 1 FROM security_alerts WHERE product_id = $1 AND hardware_id = 'h10' FOR UPDATE",
                product.id,
            )

            async def write(conn: Connection, batch: list[AlertSighting]) -> None:
                async with conn.transaction():
                    await alerts.record(conn, batch)

            forward = asyncio.create_task(
                write(first, [_sighting(product, s.hardware_id, 20) for s in sightings])
            )
            backward = asyncio.create_task(
                write(second, [_sighting(product, s.hardware_id, 30) for s in reversed(sightings)])
            )
            await registry.wait_until_blocked(pool, first.get_server_pid(), forward)
            await registry.wait_until_blocked(pool, second.get_server_pid(), backward)
            assert not forward.done() and not backward.done(), "a batch never waited"
        ended = await asyncio.wait_for(asyncio.gather(forward, backward, return_exceptions=True), 10)

    assert [e for e in ended if isinstance(e, BaseException)] == []
    assert {a.wrong_keys for a in await _all(pool, product.account_id)} in ({20}, {30})


async def test_list_alerts_pages_through_alerts_seen_at_the_same_time(
    pool: Pool, product: registry.Product
) -> None:
    await _record(pool, [_sighting(product, f"old{i}") for i in range(2)])
    await _record(pool, [_sighting(product, f"new{i}") for i in range(5)])  # one last_seen_at
    await _record(
        pool, [_sighting(await registry.new_product(pool, await registry.new_account(pool)), "stranger")]
    )
    everything = await _all(pool, product.account_id)
    expected = sorted(everything, key=lambda a: (a.last_seen_at, uuid.UUID(a.id)), reverse=True)
    assert [a.hardware_id[:3] for a in everything] == ["new"] * 5 + ["old"] * 2
    assert everything == expected

    for limit in (1, 2, 3):
        seen: list[alerts.SecurityAlert] = []
        before, before_id = None, None
        while True:
            page = await alerts.list_alerts(
                pool,
                product.account_id,
                kind=BULK_KEY_GUESSING,
                before=before,
                before_id=before_id,
                limit=limit,
            )
            seen.extend(page)
            if len(page) < limit:
                break
            before, before_id = page[-1].last_seen_at, page[-1].id
        assert seen == expected, f"limit {limit}"

    assert (
        await alerts.list_alerts(pool, product.account_id, kind="another_kind", before=None, limit=10) == []
    )


async def test_one_hardware_id_is_one_alert_whatever_its_case(pool: Pool, product: registry.Product) -> None:
    # attack2 F7: a guesser (or squatter) typing 1E5B... and 1e5b... updates one alert; a row
    # recorded before under another case (the previous release) keeps its spelling.
    await _record(pool, [_sighting(product, "1E5BF3F6400F", 10)])
    await _record(pool, [_sighting(product, "1e5bf3f6400f", 11), _sighting(product, "1E5bf3F6400f", 12)])
    squat = AlertSighting(product.account_id, product.id, HARDWARE_ID_SQUATTING, "Ab12", 20, 60.0, source="s")
    await _record(pool, [squat, replace(squat, hardware_id="aB12", count=21)])
    found = sorted((a.kind, a.hardware_id, a.count) for a in await _all(pool, product.account_id))
    assert found == [(BULK_KEY_GUESSING, "1E5BF3F6400F", 12), (HARDWARE_ID_SQUATTING, "aB12", 21)]
