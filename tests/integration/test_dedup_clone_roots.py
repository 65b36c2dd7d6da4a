"""Deduplication on the real Postgres: the per-source clone rate counts every spelling of a
claimed hardware ID together (its root: docs/security.md, "Creation bounded where the
attacker pays"), across batches and stems (``H-2-1`` has the stem ``h-2``, not ``h``), with
one indexed statement per batch (migration 0026)."""

from __future__ import annotations

import time

import pytest

from services.dedup.handlers import Policy, decide_batch
from shared.db import alerts, devices
from shared.db.pool import Pool
from shared.domain.credentials import Keyring
from shared.domain.identifiers import new_request_id
from shared.events import RegistrationRequested
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


async def test_other_spellings_of_a_root_count_against_one_source_s_rate_across_batches(
    pool: Pool, unique: str
) -> None:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, product)
    code = await registry.new_code(pool, product.id)
    h = f"R{unique}"
    policy = Policy(clone_rate=4, clone_rate_window_s=60, clone_limit=100)

    # Four spellings of four stems (h, h-2, h-01, h-3-1), two batches: each a new device.
    first = await decide_batch(pool, KEYRING, [_claim(code, h, "a"), _claim(code, f"{h}-2-1", "b")], policy)
    second = await decide_batch(
        pool, KEYRING, [_claim(code, f"{h}-01-7", "c"), _claim(code, f"{h}-3-1-1", "d")], policy
    )
    assert [d.decision for d in first.decided + second.decided] == ["new"] * 4
    # A fifth spelling, of yet another stem, and a clone of H from the same source: too many for now.
    third = await decide_batch(
        pool, KEYRING, [_claim(code, f"{h}-9-9", "e"), _claim(code, h.lower(), "f")], policy
    )
    assert third.decided == []
    assert [(r.status, r.retry_after > 0) for r in third.refused] == [("refused", True)] * 2
    assert all(r.reason.startswith("too many new devices") for r in third.refused)
    # The real board, from another address, at once; the operator sees the squatter.
    board = await decide_batch(pool, KEYRING, [_claim(code, h, "board", BOARD)], policy)
    assert [(d.decision, d.hardware_id) for d in board.decided] == [("clone", f"{h}-1")]
    listed = await alerts.list_alerts(pool, account_id, kind="hardware_id_squatting", before=None, limit=10)
    assert [(a.hardware_id, a.source, a.count) for a in listed] == [(h, SQUATTER, 4)]


async def test_the_creations_of_a_batch_are_read_through_the_root_index(pool: Pool, unique: str) -> None:
    account_id = await registry.new_account(pool)
    async with pool.acquire() as conn, conn.transaction():
        # Few rows here: the planner would rather scan; the index must be usable all the same.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                f"EXPLAIN {devices.SELECT_CREATIONS}", account_id, ["h"], [SQUATTER], time.time() - 3600
            )
        )
    assert "devices_created_root" in plan, plan
