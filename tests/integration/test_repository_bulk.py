"""shared.db.bulk on the real Postgres: starting an upload, the whole-file checks (which
count only the uploader's own account), finishing and discarding uploads, the typed
listing, and publishing in chunks that are idempotent, resumable and safe to run twice
at once."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest

from shared.db import audit, bulk, registrations
from shared.db.bulk import BulkRegistration, ChunkResult, ConflictRow
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.errors import Conflict, NotFound
from tests.support import registry

pytestmark = pytest.mark.integration

# (line, hardware ID, registration key); the key is stored as a digest, as ingestion does.
Row = tuple[int, str, str]


@pytest.fixture
async def product(pool: Pool) -> registry.Product:
    """A locked product of a new account, used by no registration yet."""
    return await registry.new_product(pool, await registry.new_account(pool))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _staged(registration_id: str, rows: Sequence[Row]) -> list[bulk.StagedRow]:
    return [
        (registration_id, line, hardware_id, _digest(key), f"Name {line}", f"a{line}", f"b{line}")
        for line, hardware_id, key in rows
    ]


def _rows(*hardware_ids: str) -> list[Row]:
    """Rows from line 1 on, each with a key of its own."""
    return [(line, h, f"key-{h}-{uuid.uuid4().hex}") for line, h in enumerate(hardware_ids, start=1)]


async def _uploading(pool: Pool, product: registry.Product, rows: Sequence[Row]) -> str:
    registration_id = await bulk.start_upload(pool, product.account_id, product.id, "fleet.csv")
    await bulk.copy_rows(pool, _staged(registration_id, rows))
    return registration_id


async def _configured(pool: Pool, product: registry.Product, rows: Sequence[Row]) -> str:
    registration_id = await _uploading(pool, product, rows)
    await bulk.finish_upload(
        pool, registration_id, Account(product.account_id, "test"), product.id, len(rows)
    )
    return registration_id


async def _any_registration(pool: Pool, product: registry.Product) -> str:
    """An auto registration on a product of its own in the same account (for devices)."""
    other = await registry.new_product(pool, product.account_id, kind="auto")
    return await registry.new_registration(pool, other)


async def _status(pool: Pool, registration_id: str) -> str | None:
    status: str | None = await pool.fetchval(
        "SELECT status FROM registrations WHERE id = $1", registration_id
    )
    return status


async def _pending_rows(pool: Pool, registration_id: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM bulk_rows WHERE registration_id = $1", registration_id
    )
    return count


async def test_start_upload_refuses_what_cannot_take_a_bulk_registration(
    pool: Pool, product: registry.Product
) -> None:
    account_id = product.account_id
    not_locked = await registry.new_product(pool, account_id, locked=False)
    auto = await registry.new_product(pool, account_id, kind="auto")
    foreign = await registry.new_product(pool, await registry.new_account(pool))

    for unknown in (str(uuid.uuid4()), foreign.id):
        with pytest.raises(NotFound):
            await bulk.start_upload(pool, account_id, unknown, "f.csv")
    with pytest.raises(Conflict) as locked:
        await bulk.start_upload(pool, account_id, not_locked.id, "f.csv")
    assert locked.value.rule == "product_locked"
    with pytest.raises(Conflict) as kind:
        await bulk.start_upload(pool, account_id, auto.id, "f.csv")
    assert kind.value.rule == "one_registration_kind"

    registration_id = await bulk.start_upload(pool, account_id, product.id, "f.csv")
    assert await _status(pool, registration_id) == "uploading"
    assert await bulk.list_bulk(pool, account_id) == []  # an upload is not listed until finished
    with pytest.raises(NotFound):
        await bulk.get_bulk(pool, account_id, registration_id)


async def test_duplicate_problems_lists_every_kind_of_duplicate_in_the_account(
    pool: Pool, product: registry.Product
) -> None:
    await registry.new_device(pool, product, await _any_registration(pool, product), "TakenHW")
    listing = await _configured(pool, product, _rows("ListedHW"))
    # Another account holds IDs of its own, registered and listed: they never count here.
    stranger = await registry.new_product(pool, await registry.new_account(pool))
    await registry.new_device(pool, stranger, await _any_registration(pool, stranger), "ForeignDev")
    await _configured(pool, stranger, _rows("ForeignListed"))

    rows = [
        (1, "takenhw", "k1"),
        (2, "listedhw", "k2"),
        (3, "DupX", "k3"),
        (4, "fine1", "k4"),
        (5, "dupx", "k5"),
        (6, "ForeignDev", "k6"),
        (7, "ForeignListed", "k7"),
        (8, "fine2", "k4"),
        (9, "DUPX", "k9"),
    ]
    registration_id = await _uploading(pool, product, rows)

    found = await bulk.duplicate_problems(pool, registration_id, product.account_id, limit=100)

    assert [(line, column, value) for line, column, value, _ in found.shown] == [
        (1, "HARDWARE_ID", "takenhw"),
        (2, "HARDWARE_ID", "listedhw"),
        (5, "HARDWARE_ID", "dupx"),
        (8, "REGISTRATION_KEY", ""),
        (9, "HARDWARE_ID", "DUPX"),
    ]
    reasons = [reason for *_, reason in found.shown]
    assert "registered" in reasons[0]
    assert listing in reasons[1]
    assert "line 3" in reasons[2] and "line 3" in reasons[4]
    assert "line 4" in reasons[3]
    assert found.total == 5

    first = await bulk.duplicate_problems(pool, registration_id, product.account_id, limit=2)
    assert ([p[0] for p in first.shown], first.total) == ([1, 2], 5)


async def test_the_same_ids_in_another_account_are_no_problem(pool: Pool, product: registry.Product) -> None:
    await registry.new_device(pool, product, await _any_registration(pool, product), "Mine1")
    await _configured(pool, product, _rows("Mine2"))
    stranger = await registry.new_product(pool, await registry.new_account(pool))

    registration_id = await _uploading(pool, stranger, _rows("MINE1", "mine2"))

    found = await bulk.duplicate_problems(pool, registration_id, stranger.account_id, limit=100)
    assert (found.shown, found.total) == ([], 0)


async def test_finish_upload_configures_it_and_claims_the_product_for_bulk(
    pool: Pool, product: registry.Product
) -> None:
    registration_id = await _configured(pool, product, _rows("fin1", "fin2"))

    (listed,) = await bulk.list_bulk(pool, product.account_id)
    assert (listed.id, listed.status, listed.rows, listed.file_name) == (
        registration_id,
        "configured",
        2,
        "fleet.csv",
    )
    assert await pool.fetchval("SELECT registration_kind FROM products WHERE id = $1", product.id) == "bulk"


async def test_finish_upload_refuses_a_product_taken_by_an_auto_registration_meanwhile(
    pool: Pool, product: registry.Product
) -> None:
    registration_id = await _uploading(pool, product, _rows("race1"))
    await pool.execute("UPDATE products SET registration_kind = 'auto' WHERE id = $1", product.id)

    with pytest.raises(Conflict):
        await bulk.finish_upload(pool, registration_id, Account(product.account_id, "test"), product.id, 1)
    assert await _status(pool, registration_id) == "uploading"


async def test_discard_upload_deletes_an_upload_with_its_rows_and_nothing_else(
    pool: Pool, product: registry.Product
) -> None:
    rejected = await _uploading(pool, product, _rows("disc1", "disc2"))
    kept = await _configured(pool, product, _rows("disc3"))

    await bulk.discard_upload(pool, rejected)
    await bulk.discard_upload(pool, kept)  # configured: never discarded as an upload

    assert await _status(pool, rejected) is None
    assert await _pending_rows(pool, rejected) == 0
    assert await _status(pool, kept) == "configured"
    assert await _pending_rows(pool, kept) == 1


async def test_discard_stale_uploads_deletes_only_uploads_left_behind(
    pool: Pool, product: registry.Product
) -> None:
    abandoned = await _uploading(pool, product, _rows("stale1"))
    running = await _uploading(pool, product, _rows("stale2"))
    configured = await _configured(pool, product, _rows("stale3"))
    await pool.execute(
        "UPDATE registrations SET created_at = now() - interval '2 hours' WHERE id = ANY($1::uuid[])",
        [abandoned, configured],
    )

    assert await bulk.discard_stale_uploads(pool, 3600) >= 1  # others' abandoned uploads count too

    assert await _status(pool, abandoned) is None
    assert await _pending_rows(pool, abandoned) == 0
    assert await _status(pool, running) == "uploading"
    assert await _status(pool, configured) == "configured"


async def test_list_and_get_are_typed_and_stay_in_the_account(pool: Pool, product: registry.Product) -> None:
    first = await _configured(pool, product, _rows("list1", "list2"))
    second = await _configured(pool, product, _rows("list3"))
    await _uploading(pool, product, _rows("list4"))
    stranger = await registry.new_account(pool)

    listed = await bulk.list_bulk(pool, product.account_id)

    assert [r.id for r in listed] == [first, second]
    assert listed[0] == BulkRegistration(
        id=first,
        product_id=product.id,
        status="configured",
        rows=2,
        published=0,
        conflicts=0,
        file_name="fleet.csv",
        created_at=listed[0].created_at,
        updated_at=listed[0].updated_at,
    )
    assert isinstance(listed[0].created_at, datetime)
    assert await bulk.get_bulk(pool, product.account_id, second) == listed[1]
    assert await bulk.list_bulk(pool, stranger) == []
    for account_id, registration_id in ((stranger, first), (product.account_id, str(uuid.uuid4()))):
        with pytest.raises(NotFound):
            await bulk.get_bulk(pool, account_id, registration_id)
        with pytest.raises(NotFound):
            await bulk.start_publish(pool, Account(account_id, "test"), registration_id)


async def test_a_bulk_registrations_hook_is_set_on_upload_changed_and_audited_with_its_host_only(
    pool: Pool, product: registry.Product
) -> None:
    """The hook's columns are the auto registration's (migration 0032): set with the upload,
    shown in the listing, changed in any state but uploading, audited as ``bulk.uploaded``
    and ``bulk.hook_changed`` with the URL's host, never its token or the secret."""
    actor = Account(product.account_id, "test")
    url = "https://hooks.example.com/approve?token=receiver-token"
    sealed = b"\x01" * 40
    registration_id = str(uuid.uuid4())
    await bulk.start_upload(
        pool,
        product.account_id,
        product.id,
        "fleet.csv",
        registration_id=registration_id,
        hook=registrations.Hook(url, 700, "open", sealed),
    )
    await bulk.copy_rows(pool, _staged(registration_id, _rows("hook1")))
    with pytest.raises(NotFound):  # still uploading: no one may see or change it yet
        await registrations.set_hook(pool, actor, "bulk", registration_id, url_changes=False, timeout_ms=60)
    await bulk.finish_upload(pool, registration_id, actor, product.id, 1, "fleet.csv")
    found = await bulk.get_bulk(pool, product.account_id, registration_id)
    assert (found.hook_url, found.hook_timeout_ms, found.hook_failure) == (url, 700, "open")
    assert await registrations.hook_of(pool, registration_id) == registrations.Hook(url, 700, "open", sealed)

    await registrations.set_hook(pool, actor, "bulk", registration_id, url_changes=False, failure="closed")
    assert await registrations.hook_of(pool, registration_id) == registrations.Hook(
        url, 700, "closed", sealed
    )
    with pytest.raises(NotFound):  # an auto registration's change does not reach a bulk one
        await registrations.set_hook(pool, actor, "auto", registration_id, url_changes=False, timeout_ms=60)
    stranger = Account(await registry.new_account(pool), "stranger")
    with pytest.raises(NotFound):
        await registrations.set_hook(pool, stranger, "bulk", registration_id, url_changes=True)
    await registrations.set_hook(pool, actor, "bulk", registration_id, url_changes=True)
    assert await registrations.hook_of(pool, registration_id) is None
    plain = await _configured(pool, product, _rows("hook2"))
    assert (await bulk.get_bulk(pool, product.account_id, plain)).hook_url is None

    trail = await audit.list_events(
        pool, product.account_id, audit.AuditFilter(target_id=registration_id), limit=10
    )
    assert [(e.action, e.target_type) for e in reversed(trail)] == [
        ("bulk.uploaded", "bulk_registration"),
        ("bulk.hook_changed", "bulk_registration"),
        ("bulk.hook_changed", "bulk_registration"),
    ]
    assert (trail[2].changes["hook_host"], trail[2].changes["hook_secret"]) == ("hooks.example.com", "issued")
    assert trail[1].changes["hook_failure"] == {"from": "open", "to": "closed"}
    assert trail[0].changes["hook_host"] == {"from": "hooks.example.com", "to": None}
    assert "receiver-token" not in str(trail)
    [uploaded] = await audit.list_events(
        pool, product.account_id, audit.AuditFilter(target_id=plain), limit=10
    )
    assert not any(k.startswith("hook") for k in uploaded.changes)


async def test_publishing_in_chunks_makes_preregistered_devices_and_conflicts(
    pool: Pool, product: registry.Product
) -> None:
    rows = _rows("pub1", "pub2", "pub3", "pub4", "pub5")
    registration_id = await _configured(pool, product, rows)
    # Registered in the account between upload and publish (in another case).
    await registry.new_device(pool, product, await _any_registration(pool, product), "PUB3")
    assert await bulk.publish_chunk(pool, registration_id, 0, 2) is None  # not publishing yet

    await bulk.start_publish(pool, Account(product.account_id, "test"), registration_id)
    results = [
        await bulk.publish_chunk(pool, registration_id, 0, 2),
        await bulk.publish_chunk(pool, registration_id, 2, 2),
        await bulk.publish_chunk(pool, registration_id, 4, 2),
    ]

    assert results == [ChunkResult(2, 0, 2, False), ChunkResult(1, 1, 4, False), ChunkResult(1, 0, 5, True)]
    found = await bulk.get_bulk(pool, product.account_id, registration_id)
    assert (found.status, found.rows, found.published, found.conflicts) == ("preregistered", 5, 4, 1)
    assert found.conflict_rows == (ConflictRow(3, "pub3"),)
    devices = await pool.fetch(
        """SELECT hardware_id, claimed_hardware_id, name, category_a, category_b, lifecycle,
                  registration_key_digest, product_id::text
           FROM devices WHERE registration_id = $1 ORDER BY hardware_id""",
        registration_id,
    )
    assert [tuple(d) for d in devices] == [
        (h, h, f"Name {line}", f"a{line}", f"b{line}", "preregistered", _digest(key), product.id)
        for line, h, key in rows
        if h != "pub3"
    ]
    assert await _pending_rows(pool, registration_id) == 1  # only the conflict row stays

    assert await bulk.publish_chunk(pool, registration_id, 5, 2) is None
    with pytest.raises(Conflict):
        await bulk.start_publish(pool, Account(product.account_id, "test"), registration_id)


async def test_replayed_and_resumed_chunks_publish_each_row_once(
    pool: Pool, product: registry.Product
) -> None:
    registration_id = await _configured(pool, product, _rows(*(f"rep{i}" for i in range(7))))
    await bulk.start_publish(pool, Account(product.account_id, "test"), registration_id)

    first = await bulk.publish_chunk(pool, registration_id, 0, 3)
    # The instance crashed before sending the next event: publishing is asked for again
    # (resumes), and the first chunk's event is delivered again.
    await bulk.start_publish(pool, Account(product.account_id, "test"), registration_id)
    replayed = await bulk.publish_chunk(pool, registration_id, 0, 3)
    following = await bulk.publish_chunk(pool, registration_id, 3, 3)
    late = await bulk.publish_chunk(pool, registration_id, 6, 3)

    assert [first, replayed, following, late] == [
        ChunkResult(3, 0, 3, False),
        ChunkResult(3, 0, 6, False),
        ChunkResult(1, 0, 7, True),
        None,
    ]
    found = await bulk.get_bulk(pool, product.account_id, registration_id)
    assert (found.status, found.published, found.conflicts, found.conflict_rows) == (
        "preregistered",
        7,
        0,
        (),
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM devices WHERE registration_id = $1", registration_id) == 7
    )


async def test_concurrent_chunks_of_one_registration_never_double_insert(
    pool: Pool, product: registry.Product
) -> None:
    registration_id = await _configured(pool, product, _rows(*(f"con{i:02d}" for i in range(12))))
    await bulk.start_publish(pool, Account(product.account_id, "test"), registration_id)

    results = await asyncio.gather(*(bulk.publish_chunk(pool, registration_id, 0, 4) for _ in range(4)))

    assert sum(r.published for r in results if r) == 12
    assert sum(r.conflicts for r in results if r) == 0
    found = await bulk.get_bulk(pool, product.account_id, registration_id)
    assert (found.status, found.published, found.conflicts, found.conflict_rows) == (
        "preregistered",
        12,
        0,
        (),
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM devices WHERE registration_id = $1", registration_id) == 12
    )
    assert await _pending_rows(pool, registration_id) == 0


async def test_a_conflict_in_the_middle_of_a_chunk_leaves_the_rows_around_it_published(
    pool: Pool, product: registry.Product
) -> None:
    rows = _rows("mid1", "mid2", "mid3", "mid4", "mid5")
    registration_id = await _configured(pool, product, rows)
    await registry.new_device(pool, product, await _any_registration(pool, product), "MID2")
    await registry.new_device(pool, product, await _any_registration(pool, product), "mid4")
    await bulk.start_publish(pool, Account(product.account_id, "test"), registration_id)

    result = await bulk.publish_chunk(pool, registration_id, 0, 10)

    assert result == ChunkResult(3, 2, 5, True)
    found = await bulk.get_bulk(pool, product.account_id, registration_id)
    assert found.conflict_rows == (ConflictRow(2, "mid2"), ConflictRow(4, "mid4"))
    assert await _pending_rows(pool, registration_id) == 2  # the two conflict rows
    published = await pool.fetch(
        "SELECT hardware_id FROM devices WHERE registration_id = $1 ORDER BY hardware_id", registration_id
    )
    assert [r["hardware_id"] for r in published] == ["mid1", "mid3", "mid5"]


async def test_publishing_chunk_after_chunk_survives_a_crash_between_chunks(
    pool: Pool, product: registry.Product, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingestion's loop publishes chunks for a while per event; a crash after some of
    them (the event not acknowledged) redelivers the event, which finishes the rest
    without publishing a row twice."""
    from services.ingestion import handlers
    from shared.events import BulkPublish, BulkPublished

    registration_id = await _configured(pool, product, _rows(*(f"loop{i:02d}" for i in range(11))))
    await bulk.start_publish(pool, Account(product.account_id, "test"), registration_id)
    event = BulkPublish(registration_id=registration_id, after_line=0)
    real_chunk = bulk.publish_chunk
    calls = 0

    async def crashing_after_two(*args: Any, **kwargs: Any) -> ChunkResult | None:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise ConnectionResetError("the instance died")
        return await real_chunk(*args, **kwargs)

    monkeypatch.setattr(bulk, "publish_chunk", crashing_after_two)
    with pytest.raises(ConnectionResetError):
        await handlers.publish_chunks(pool, [event], chunk_rows=3, budget_s=60)
    assert await _pending_rows(pool, registration_id) == 5  # two chunks committed
    monkeypatch.setattr(bulk, "publish_chunk", real_chunk)

    # Redelivered: a short budget hands over to a continuation event, which finishes.
    following = await handlers.publish_chunks(pool, [event], chunk_rows=3, budget_s=0)
    assert following == [BulkPublish(registration_id=registration_id, after_line=9)]
    [announced] = await handlers.publish_chunks(pool, following, chunk_rows=3, budget_s=60)
    assert isinstance(announced, BulkPublished)
    assert (announced.registration_id, announced.account_id, announced.product_id) == (
        registration_id,
        product.account_id,
        product.id,
    )
    assert (announced.published, announced.conflicts) == (11, 0)
    # The announcement is sent at least once: an event redelivered after the last chunk
    # committed (a crash before the send) announces it again, and publishes nothing.
    [again] = await handlers.publish_chunks(pool, [event], chunk_rows=3, budget_s=60)
    assert isinstance(again, BulkPublished) and again.published == 11

    found = await bulk.get_bulk(pool, product.account_id, registration_id)
    assert (found.status, found.published, found.conflicts) == ("preregistered", 11, 0)
    count = await pool.fetchval("SELECT count(*) FROM devices WHERE registration_id = $1", registration_id)
    assert count == 11


async def test_claim_evidence_is_the_codes_own_products_device_with_its_key(pool: Pool) -> None:
    account = await registry.new_account(pool)
    product = await registry.new_product(pool, account, kind="bulk")
    registration_id = await registry.new_registration(pool, product, kind="bulk", status="preregistered")
    code = await registry.new_code(pool, product.id)
    device_id = await registry.new_device(
        pool, product, registration_id, "Ev-1", lifecycle="preregistered", key_digest=_digest("k1")
    )
    # Another product of the account holds "ev-2": none of this code's.
    auto = await registry.new_product(pool, account, kind="auto")
    await registry.new_device(pool, auto, await registry.new_registration(pool, auto), "ev-2")

    found = await registry.claim_evidence(pool, code, "EV-1")  # any case
    assert found == bulk.ClaimEvidence(device_id, 1, _digest("k1").hex())
    assert await registry.claim_evidence(pool, code, "ev-2") == bulk.ClaimEvidence("", 0, "")
    assert await registry.claim_evidence(pool, code, "nobody") == bulk.ClaimEvidence("", 0, "")
    # Not a current bulk code: decided as usual, so no evidence.
    assert (
        await registry.claim_evidence(pool, await registry.new_code(pool, product.id, revoked=True), "ev-1")
        is None
    )
    assert await registry.claim_evidence(pool, await registry.new_code(pool, auto.id), "ev-2") is None
    assert await registry.claim_evidence(pool, str(uuid.uuid4()).upper(), "ev-1") is None
    # The same read says what the intake counts before publishing: a revoked code, an auto
    # product's current code (remembered, no read next time), a current bulk code's evidence.
    revoked = await registry.new_code(pool, product.id, revoked=True)
    assert await bulk.code_claim(pool, revoked, "ev-1") == bulk.CodeClaim(True, None, False)
    auto_code = await registry.new_code(pool, (await registry.new_product(pool, account, kind="auto")).id)
    assert await bulk.code_claim(pool, auto_code, "ev-2") == bulk.CodeClaim(False, None, True)
    assert await bulk.code_claim(pool, code, "nobody") == bulk.CodeClaim(False, bulk.ClaimEvidence("", 0, ""))
    assert await bulk.code_claim(pool, str(uuid.uuid4()).upper(), "ev-1") is None
