"""Deduplication on the real Postgres: the per-source clone rate counts the suffixed
spellings of an existing hardware ID with it (its family head: docs/security.md, "Creation
bounded where the attacker pays"), across batches and stems (``H-01-1`` has the stem
``h-01``, not ``h``), with one indexed statement per batch (migration 0026), and only for
such claims: distinct IDs sharing a root (dashed MACs) are independent."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import pytest

from services.dedup.handlers import decide_batch
from services.dedup.settings import limits_from_env
from shared.db import alerts, devices
from shared.db.pool import Connection, Pool
from shared.domain.credentials import Keyring
from shared.domain.dedup import Creation, PerWindow
from shared.domain.identifiers import new_request_id
from shared.events import RegistrationRequested
from shared.settings import Env
from tests.support import registry

pytestmark = pytest.mark.integration

KEYRING = Keyring(b"dedup-clone-roots-test-key-that-is-long-enough")
SQUATTER, BOARD = "10.9.0.1", "10.9.0.2"


def _claim(code: str, hardware_id: str, fingerprint: str, source: str = SQUATTER) -> RegistrationRequested:
    return RegistrationRequested(
        request_id=new_request_id(KEYRING.request_tag),
        received_at=time.time(),
        bulk_identification_code=code,
        hardware_id=hardware_id,
        fingerprint=KEYRING.fingerprint(fingerprint),
        source=source,
    )


async def test_suffixed_spellings_of_an_existing_id_count_with_it_against_one_source_s_rate_across_batches(
    pool: Pool, unique: str
) -> None:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, product)
    code = await registry.new_code(pool, product.id)
    h = f"R{unique}"
    policy = replace(limits_from_env(Env({})), clone_rate=PerWindow(4, 60), clone_limit=PerWindow(100, 3600))

    # H, then spellings of it (H-1 while H is created in the same batch; h-01, H-1-1 of two
    # stems), two batches: each a new device under its own ID, all counted under H.
    first = await decide_batch(pool, KEYRING, [_claim(code, h, "a"), _claim(code, f"{h}-1", "b")], policy)
    second = await decide_batch(
        pool, KEYRING, [_claim(code, f"{h.lower()}-01", "c"), _claim(code, f"{h}-1-1", "d")], policy
    )
    assert [d.decision for d in first.decided + second.decided] == ["new"] * 4
    # A fifth spelling, whose stem (h-01) holds none of the others: too many for now.
    fifth = _claim(code, f"{h}-01-1", "e")
    third = await decide_batch(pool, KEYRING, [fifth], policy)
    assert third.decided == []
    assert [(r.status, r.retry_after > 0, r.quota) for r in third.refused] == [
        ("refused", True, "clone_rate")
    ]
    assert third.refused[0].reason.startswith("too many new devices")
    # Redelivered: the stored decision is replayed, and says the same limit (from the text
    # the registry keeps: all there is).
    replayed = await decide_batch(pool, KEYRING, [fifth], policy)
    assert [(r.request_id, r.reason, r.quota) for r in replayed.refused] == [
        (fifth.request_id, third.refused[0].reason, "clone_rate")
    ]
    # The real board, from another address, at once; the operator sees the squatter.
    board = await decide_batch(pool, KEYRING, [_claim(code, h, "board", BOARD)], policy)
    assert [(d.decision, d.hardware_id) for d in board.decided] == [("clone", f"{h}-2")]
    listed = await alerts.list_alerts(pool, account_id, kind="hardware_id_squatting", before=None, limit=10)
    assert [(a.hardware_id, a.source, a.count) for a in listed] == [(h, SQUATTER, 4)]


async def test_sequential_dashed_macs_from_one_source_are_all_created_with_no_extra_statement(
    pool: Pool, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A factory behind one NAT booting devices named by sequential dashed MACs: they share
    a root but none is a suffixed spelling of an existing device, so none waits for the
    rate, and deduplication reads nothing beyond the family for them."""
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, product)
    code = await registry.new_code(pool, product.id)
    prefix = "-".join(unique[i : i + 2] for i in range(0, 6, 2))  # aa-bb-cc, unique to the test
    policy = replace(limits_from_env(Env({})), clone_rate=PerWindow(4, 60), clone_limit=PerWindow(2, 3600))
    asked: list[list[tuple[str, str]]] = []
    load_creations = devices.load_creations

    async def spy(
        conn: Connection, account: str, wanted: Sequence[tuple[str, str]], since: float
    ) -> list[Creation]:
        asked.append(list(wanted))
        return await load_creations(conn, account, wanted, since)

    monkeypatch.setattr(devices, "load_creations", spy)
    macs = [f"{prefix}-00-{n // 100:02d}-{n % 100:02d}" for n in range(100)]
    decided = []
    for batch in range(4):
        claims = [_claim(code, mac, mac, BOARD) for mac in macs[batch * 25 : (batch + 1) * 25]]
        outcome = await decide_batch(pool, KEYRING, claims, policy)
        assert outcome.refused == []
        decided += outcome.decided
    assert sorted((d.decision, d.hardware_id) for d in decided) == [("new", mac) for mac in macs]
    assert asked and all(wanted == [] for wanted in asked)
    assert (
        await alerts.list_alerts(pool, account_id, kind="hardware_id_squatting", before=None, limit=10) == []
    )


async def test_the_creations_of_a_batch_are_read_through_the_root_index(pool: Pool, unique: str) -> None:
    account_id = await registry.new_account(pool)
    async with pool.acquire() as conn, conn.transaction():
        # Few rows here: the planner would rather scan; the index must be usable all the same.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                f"EXPLAIN {devices.SELECT_CREATIONS}",
                account_id,
                ["h"],
                ["h"],
                [SQUATTER],
                time.time() - 3600,
            )
        )
        family_plan = "\n".join(
            r[0] for r in await conn.fetch(f"EXPLAIN {devices.SELECT_FAMILY}", account_id, ["h-1"], ["h"])
        )
    assert "devices_created_root" in plan, plan
    # The claims' ancestors are found through an index, never a scan of the devices table
    # (which index the planner takes for so few rows depends on the database's statistics: a
    # fresh clone's planner took devices_search_product, this machine's the stem and the
    # unique (account, lower(hardware_id)) index).
    assert "Seq Scan on devices" not in family_plan, family_plan
