"""Deduplication on the real Postgres, for claims of codes that admit nobody: every claim
is answered, but an unknown code leaves no decision row and a revoked code one per
hardware ID (any case) and hour, however many claims and batches."""

from __future__ import annotations

import time
import uuid

import pytest

from services.dedup.handlers import decide_batch
from services.dedup.settings import limits_from_env
from shared.db.pool import Pool
from shared.domain.admission import REASON_REVOKED_CODE, REASON_UNKNOWN_CODE
from shared.domain.credentials import Keyring
from shared.domain.identifiers import new_request_id
from shared.events import RegistrationRequested
from shared.settings import Env
from tests.support import registry

pytestmark = pytest.mark.integration

KEYRING = Keyring(b"dedup-strangers-test-key-that-is-long-enough")
LIMITS = limits_from_env(Env({}))  # the service's defaults


def _claim(code: str, hardware_id: str) -> RegistrationRequested:
    return RegistrationRequested(
        request_id=new_request_id(KEYRING.request_tag),
        received_at=time.time(),
        bulk_identification_code=code,
        hardware_id=hardware_id,
        fingerprint="",
    )


async def test_unknown_and_revoked_codes_are_answered_with_bounded_rows(pool: Pool, unique: str) -> None:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, product)
    revoked = await registry.new_code(pool, product.id, revoked=True)
    await registry.new_code(pool, product.id)
    unknown = str(uuid.uuid4()).upper()
    board = f"board-{unique}"

    answered = []
    for _ in range(3):  # three batches, as redelivered or later retries would come
        batch = [_claim(unknown, f"u{i}-{unique}") for i in range(5)]
        batch += [_claim(revoked, board if i % 2 else board.upper()) for i in range(5)]
        out = await decide_batch(pool, KEYRING, batch, LIMITS)
        assert out.decided == []
        answered += [(o.status, o.reason, o.quota) for o in out.refused]

    assert sorted(set(answered)) == [
        ("refused", REASON_REVOKED_CODE, "none"),
        ("refused", REASON_UNKNOWN_CODE, "none"),
    ]
    assert len(answered) == 30  # every claim answered
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM registration_decisions WHERE claimed_hardware_id LIKE $1", f"u%-{unique}"
        )
        == 0
    )
    rows = await pool.fetch(
        "SELECT reason, account_id::text FROM registration_decisions WHERE product_id = $1", product.id
    )
    if len(rows) == 2:  # the batches straddled the turn of an hour: one row in each
        assert {tuple(r) for r in rows} == {(REASON_REVOKED_CODE, account_id)}
    else:
        assert [tuple(r) for r in rows] == [(REASON_REVOKED_CODE, account_id)]
