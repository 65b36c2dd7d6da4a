"""Deduplication on the real Postgres, for the claims a power cut and a second product
bring (docs/security.md, "The window before ready" and "A claim stays in its product"):
a board's retries queued while deduplication was down are decided in one batch as the
device with its last credential generation, never H-1 and never a lockout; two sources
reclaiming one device raise an alert; another product's listed row is nobody else's."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from services.dedup.handlers import decide_batch
from services.dedup.settings import limits_from_env
from services.provisioning.handlers import provision_batch
from shared.db import alerts, devices
from shared.db.pool import Pool
from shared.domain.credentials import Keyring
from shared.domain.dedup import REASON_BULK_NOT_LISTED, REASON_DELETED
from shared.domain.identifiers import fingerprint_identifiers, hardware_id_stem, new_request_id
from shared.events import RegistrationRequested
from shared.settings import Env
from tests.support import registry

pytestmark = pytest.mark.integration

KEYRING = Keyring(b"dedup-reclaims-test-key-that-is-long-enough")
LIMITS = limits_from_env(Env({}))  # the service's defaults
FINGERPRINT = KEYRING.fingerprint("cpu", "mac")


def _claim(
    code: str, hardware_id: str, *, idempotency_key: str = "", key: str = "", source: str = "10.0.0.1"
) -> RegistrationRequested:
    return RegistrationRequested(
        request_id=new_request_id(KEYRING.request_tag),
        received_at=time.time(),
        bulk_identification_code=code,
        hardware_id=hardware_id,
        fingerprint=FINGERPRINT,
        registration_key_digest=KEYRING.digest(key) if key else "",
        idempotency_key=idempotency_key,
        source=source,
    )


async def _generation(pool: Pool, device_id: str) -> int:
    return int(await pool.fetchval("SELECT credential_generation FROM devices WHERE id = $1", device_id))


async def test_an_auto_board_s_retries_queued_in_an_outage_are_one_device_with_its_last_generation(
    pool: Pool, unique: str
) -> None:
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, product)
    code = await registry.new_code(pool, product.id)
    board = f"cut-{unique}"

    out = await decide_batch(
        pool,
        KEYRING,
        [_claim(code, board, idempotency_key="k1"), _claim(code, board, idempotency_key="k2")],
        LIMITS,
    )

    assert [(d.decision, d.hardware_id) for d in out.decided] == [("new", board), ("same", board)]
    assert len({d.device_id for d in out.decided}) == 1
    assert [d.credential_generation for d in out.decided] == [1, 2]
    assert await _generation(pool, out.decided[0].device_id) == 2
    # No ghost: one device of the board's stem in this product. The stem is the product's own
    # rule: "cut-<unique>" with an all-digit unique (about 1 draw in 110) reads as "cut" with an
    # index suffix, which the test's earlier lower(board) missed (CI, stop 32).
    ghosts = await pool.fetchval(
        "SELECT count(*) FROM devices WHERE product_id = $1 AND hardware_id_stem = $2",
        product.id,
        hardware_id_stem(board),
    )
    assert ghosts == 1
    # The reclaim is in the device's history, and its secret of generation 1 is known as
    # replaced (answered credentials_replaced, not counted as a guess: attack2 F3).
    device_id = out.decided[0].device_id
    history = await devices.device_history(pool, device_id)
    assert [(e.kind, e.detail.get("credential_generation")) for e in history if e.kind == "reclaimed"] == [
        ("reclaimed", 2)
    ]
    assert await devices.credentials_replaced_at(pool, device_id, 1) is not None
    assert await devices.credentials_replaced_at(pool, device_id, 2) is None

    # Later, the board reclaims from another address: the device again, and the operator's alert.
    later = await decide_batch(pool, KEYRING, [_claim(code, board, source="10.0.0.2")], LIMITS)
    assert [(d.decision, d.credential_generation) for d in later.decided] == [("same", 3)]
    listed = await alerts.list_alerts(
        pool, account_id, kind="two_sources_before_ready", before=None, limit=10
    )
    assert [(a.hardware_id, a.source, a.count) for a in listed] == [(board, "10.0.0.2", 2)]


async def test_a_bulk_board_s_retry_without_its_first_key_is_its_device_and_a_foreign_row_nobody_s(
    pool: Pool, unique: str
) -> None:
    account_id = await registry.new_account(pool)
    bulk = await registry.new_product(pool, account_id, kind="bulk")
    registration_id = await registry.new_registration(pool, bulk, kind="bulk", status="preregistered")
    board = f"row-{unique}"
    device_id = await registry.new_device(
        pool,
        bulk,
        registration_id,
        board,
        lifecycle="preregistered",
        key_digest=bytes.fromhex(KEYRING.digest("K1")),
    )
    code = await registry.new_code(pool, bulk.id)
    auto = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, auto)
    auto_code = await registry.new_code(pool, auto.id)
    other_bulk = await registry.new_product(pool, account_id, kind="bulk")
    await registry.new_registration(pool, other_bulk, kind="bulk", status="preregistered")
    other_code = await registry.new_code(pool, other_bulk.id)

    out = await decide_batch(
        pool,
        KEYRING,
        [
            _claim(auto_code, board),  # another product's code, no key
            _claim(other_code, board, key="K1"),  # a third product's code with the row's key
            _claim(code, board, key="K1", idempotency_key="k1"),
            _claim(code, board, key="K1"),  # the power cut: no key this time
        ],
        LIMITS,
    )

    clone, real, again = out.decided
    assert (clone.decision, clone.hardware_id, clone.product_id) == ("clone", f"{board}-1", auto.id)
    assert clone.device_id != device_id
    assert [(o.reason, o.device_id) for o in out.refused] == [(REASON_BULK_NOT_LISTED, "")]
    assert (real.decision, real.device_id, again.decision, again.device_id) == (
        "new",
        device_id,
        "same",
        device_id,
    )
    assert await _generation(pool, device_id) == 2


async def test_claims_provisioned_together_each_carry_their_own_generation_and_only_the_last_a_secret(
    pool: Pool, unique: str
) -> None:
    # attack2 F10: a board's reclaim and three look-alike claims (same fingerprint, new keys)
    # decided and provisioned in one batch. Each outcome carries its own decision's
    # generation; only the last generation is the device's, the others are superseded (the
    # intake then answers ready without a secret), so no copy of the final secret leaks.
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, product)
    code = await registry.new_code(pool, product.id)
    board = f"batch-{unique}"
    first = await decide_batch(pool, KEYRING, [_claim(code, board, idempotency_key="board-1")], LIMITS)
    await provision_batch(pool, KEYRING, first.decided)

    claims = [_claim(code, board, idempotency_key="board-2")] + [
        _claim(code, board, idempotency_key=f"evil-{n}", source="10.0.0.9") for n in range(3)
    ]
    out = await decide_batch(pool, KEYRING, claims, LIMITS)
    outcomes = await provision_batch(pool, KEYRING, out.decided)

    assert [(o.decision, o.credential_generation, o.superseded) for o in outcomes] == [
        ("same", 2, True),
        ("same", 3, True),
        ("same", 4, True),
        ("same", 5, False),
    ]
    assert await _generation(pool, outcomes[0].device_id) == 5
    # Each names the device's account: the intake issues a CSR's certificate without a read.
    assert {o.account_id for o in outcomes} == {account_id}
    # A redelivered batch replays each decision with its own generation too.
    again = await decide_batch(pool, KEYRING, claims, LIMITS)
    replayed = {o.request_id: o for o in await provision_batch(pool, KEYRING, again.decided)}
    assert [
        (replayed[c.request_id].credential_generation, replayed[c.request_id].superseded) for c in claims
    ] == [
        (2, True),
        (3, True),
        (4, True),
        (5, False),
    ]


async def test_a_redelivered_claim_whose_device_was_deleted_since_is_refused_by_no_limit(
    pool: Pool, unique: str
) -> None:
    """The replay of a decision is built as a fresh one is (the same fields); a decision
    whose device the operator deleted since is answered refused, naming the deletion."""
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, product)
    code = await registry.new_code(pool, product.id)
    kept, deleted = _claim(code, f"kept-{unique}"), _claim(code, f"gone-{unique}")
    first = await decide_batch(pool, KEYRING, [kept, deleted], LIMITS)
    assert first.refused == []
    gone = next(d.device_id for d in first.decided if d.request_id == deleted.request_id)
    await pool.execute("DELETE FROM devices WHERE id = $1", gone)

    again = await decide_batch(pool, KEYRING, [kept, deleted], LIMITS)

    [decided] = again.decided
    fresh = next(d for d in first.decided if d.request_id == kept.request_id)
    assert decided == replace(fresh, received_at=0.0)  # the request's time is not stored
    assert [(r.request_id, r.status, r.decision, r.reason, r.account_id, r.quota) for r in again.refused] == [
        (deleted.request_id, "refused", "refused", REASON_DELETED, account_id, "none")
    ]


async def test_boards_reporting_only_placeholder_identifiers_are_clones_not_one_device(
    pool: Pool, unique: str
) -> None:
    # attack2 F10: boards of one image with an unprogrammed MAC and CPU ID have no
    # fingerprint, so each (its own Idempotency-Key) is a clone, never H's power-cut reclaim.
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id, kind="auto")
    await registry.new_registration(pool, product)
    code = await registry.new_code(pool, product.id)
    board = f"image-{unique}"
    placeholder = KEYRING.fingerprint(*fingerprint_identifiers("0000000000000000", "00:00:00:00:00:00"))
    assert placeholder == ""
    claims = [
        RegistrationRequested(
            request_id=new_request_id(KEYRING.request_tag),
            received_at=time.time(),
            bulk_identification_code=code,
            hardware_id=board,
            fingerprint=placeholder,
            idempotency_key=f"boot-{n}",
            source="10.0.0.1",
        )
        for n in range(4)
    ]
    out = await decide_batch(pool, KEYRING, claims, LIMITS)
    assert [(d.decision, d.hardware_id) for d in out.decided] == [
        ("new", board),
        ("clone", f"{board}-1"),
        ("clone", f"{board}-2"),
        ("clone", f"{board}-3"),
    ]
