"""shared.db.webhooks and the notifier's handlers on the real Postgres: webhooks per account
(audited, limited, never another account's), deliveries idempotent per event, claimed
once, one at a time per device and in order, retried on the schedule, refusal minutes
and offline transitions taken once, and finished deliveries pruned.

The delivery worker claims every due delivery of its database, so these tests run on a
database of their own: the end-to-end system's notifier (same session, the shared test
database) would otherwise take their deliveries.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from services.notifier import handlers
from shared.db import audit, devices, webhooks
from shared.db.migrations import migrate
from shared.db.pool import Pool, open_pool, single_connection
from shared.db.webhooks import Attempt, NewEvent
from shared.domain import webhooks as rules
from shared.domain.accounts import Account
from shared.domain.dedup import REASON_BULK_NOT_LISTED, reason_clone_rate, reason_max_devices
from shared.domain.identifiers import new_request_id
from shared.domain.webhooks import SecretBox
from shared.errors import Conflict, NotFound, TooManyRequests
from shared.events import BulkPublished, DeviceSignal, QuotaOrNone, RegistrationDecided, RegistrationOutcome
from shared.settings import DatabaseSettings, Secret
from tests.support import registry

pytestmark = pytest.mark.integration

BOX = SecretBox(b"integration-test-key-of-32-bytes-at-least")
ALL = ("device.registered", "device.provisioned", "device.clone_detected", "device.offline")


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[Pool]:
    name = f"webhooks_{uuid.uuid4().hex[:10]}"
    async with single_connection(database_url) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    async with single_connection(url) as conn:
        await migrate(conn)
    pool = await open_pool(DatabaseSettings(url=Secret(url), pool_min=1, pool_max=10))
    yield pool
    await pool.close()
    async with single_connection(database_url) as admin:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(autouse=True)
async def nothing_due_from_other_tests(db: Pool) -> None:
    """Claims take every due delivery of the database: each test starts with none."""
    await db.execute("DELETE FROM webhook_deliveries")


async def _actor(db: Pool) -> Account:
    account_id = await registry.new_account(db)
    return Account(account_id, f"repo-{account_id}", key_id=None, key_label="test")


async def _webhook(db: Pool, actor: Account, events: tuple[str, ...] = ALL, url: str = "http://h/x") -> str:
    webhook_id = webhooks.new_webhook_id()
    sealed = BOX.seal(webhook_id, "whsec_dGVzdA==")
    await webhooks.create_webhook(db, actor, webhook_id, url, events, sealed, host="h", max_per_account=20)
    return webhook_id


def _event(account_id: str, kind: str, device: str, at: datetime, event_id: str | None = None) -> NewEvent:
    return NewEvent(
        account_id=account_id,
        kind=kind,
        event_id=event_id or f"msg_{uuid.uuid4().hex}",
        ordering_key=device,
        occurred_at=at,
        payload=json.dumps({"type": kind, "device": device}),
    )


async def test_webhooks_are_created_listed_and_deleted_with_an_audit_trail(db: Pool) -> None:
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor, ("device.offline",))

    [found] = await webhooks.list_webhooks(db, actor.id)
    assert (found.id, found.url, found.events) == (webhook_id, "http://h/x", ("device.offline",))
    assert await webhooks.get_webhook(db, actor.id, webhook_id) == found
    await webhooks.delete_webhook(db, actor, webhook_id)
    assert await webhooks.list_webhooks(db, actor.id) == []

    events = await audit.list_events(db, actor.id, audit.AuditFilter(), limit=10)
    assert [(e.action, e.target_id) for e in events] == [
        ("webhook.deleted", webhook_id),
        ("webhook.created", webhook_id),
    ]
    assert events[1].changes == {"host": "h", "events": ["device.offline"]}


async def test_another_accounts_webhook_is_not_found_and_not_deleted(db: Pool) -> None:
    owner, other = await _actor(db), await _actor(db)
    webhook_id = await _webhook(db, owner)

    for call in (
        webhooks.get_webhook(db, other.id, webhook_id),
        webhooks.delete_webhook(db, other, webhook_id),
        webhooks.list_deliveries(db, other.id, webhook_id, limit=10),
        webhooks.get_webhook(db, owner.id, "not-a-uuid"),
        webhooks.delete_webhook(db, owner, "'; DROP TABLE webhooks; --"),
    ):
        with pytest.raises(NotFound):
            await call
    assert [w.id for w in await webhooks.list_webhooks(db, owner.id)] == [webhook_id]


async def test_an_account_has_at_most_the_limit_even_when_created_at_once(db: Pool) -> None:
    actor = await _actor(db)

    async def create() -> bool:
        webhook_id = webhooks.new_webhook_id()
        try:
            await webhooks.create_webhook(
                db, actor, webhook_id, "http://h/", ALL, b"x", host="h", max_per_account=3
            )
        except Conflict:
            return False
        return True

    created = await asyncio.gather(*[create() for _ in range(8)])
    assert sum(created) == 3
    assert len(await webhooks.list_webhooks(db, actor.id)) == 3


async def test_an_event_becomes_one_delivery_per_matching_webhook_once(db: Pool) -> None:
    actor, other = await _actor(db), await _actor(db)
    wants = await _webhook(db, actor, ("device.registered",))
    also = await _webhook(db, actor, ALL)
    await _webhook(db, actor, ("device.offline",))  # does not want it
    await _webhook(db, other, ALL)  # another account's
    event = _event(actor.id, "device.registered", "d1", datetime.now(UTC))

    assert await webhooks.enqueue(db, [event]) == 2
    assert await webhooks.enqueue(db, [event, event]) == 0  # a redelivered record adds nothing
    rows = await db.fetch("SELECT webhook_id::text, event_id FROM webhook_deliveries ORDER BY 1")
    assert sorted(r["webhook_id"] for r in rows) == sorted([wants, also])
    assert {r["event_id"] for r in rows} == {event.event_id}


async def test_a_devices_deliveries_are_claimed_one_at_a_time_in_order(db: Pool) -> None:
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor)
    t0 = datetime.now(UTC)
    # Queued out of order: the later event first.
    provisioned = _event(actor.id, "device.provisioned", "dev-a", t0 + timedelta(seconds=2))
    registered = _event(actor.id, "device.registered", "dev-a", t0)
    other_device = _event(actor.id, "device.registered", "dev-b", t0 + timedelta(seconds=1))
    await webhooks.enqueue(db, [provisioned])
    await webhooks.enqueue(db, [registered, other_device])

    first = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert sorted(d.event_id for d in first) == sorted([registered.event_id, other_device.event_id])
    assert all(d.webhook_id == webhook_id and d.attempts == 0 for d in first)
    assert BOX.open(webhook_id, first[0].sealed_secret) == "whsec_dGVzdA=="
    # Leased: not claimed again; the device's next event waits behind its first.
    assert await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60) == []

    done = next(d for d in first if d.event_id == registered.event_id)
    await webhooks.record_attempt(
        db, done.id, Attempt(1, datetime.now(UTC), 204, "", 3.5), status="delivered", retry_in_s=None
    )
    [second] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert second.event_id == provisioned.event_id


async def test_a_webhook_gets_at_most_its_share_in_flight_and_others_still_get_theirs(db: Pool) -> None:
    slow, fast = await _actor(db), await _actor(db)
    await _webhook(db, slow)
    fast_webhook = await _webhook(db, fast)
    now = datetime.now(UTC)
    await webhooks.enqueue(db, [_event(slow.id, "device.registered", f"s{i}", now) for i in range(10)])

    assert len(await webhooks.claim_due(db, per_webhook=3, limit=100, lease_s=60)) == 3
    assert await webhooks.claim_due(db, per_webhook=3, limit=100, lease_s=60) == []  # its share is in flight
    await webhooks.enqueue(db, [_event(fast.id, "device.registered", "f1", now)])
    [claimed] = await webhooks.claim_due(db, per_webhook=3, limit=100, lease_s=60)
    assert claimed.webhook_id == fast_webhook


async def test_a_failed_attempt_is_due_again_after_its_pause_and_fails_for_good_at_the_end(db: Pool) -> None:
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor)
    await webhooks.enqueue(db, [_event(actor.id, "device.registered", "d", datetime.now(UTC))])
    [due] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)

    failed = Attempt(1, datetime.now(UTC), 503, "", 12.0)
    await webhooks.record_attempt(db, due.id, failed, status="pending", retry_in_s=3600)
    assert await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60) == []  # not due for an hour
    await db.execute("UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = $1", due.id)
    [again] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert (again.id, again.attempts) == (due.id, 1)
    await webhooks.record_attempt(
        db,
        due.id,
        Attempt(2, datetime.now(UTC), None, "timed out after 10 s", 10000.0),
        status="failed",
        retry_in_s=None,
    )

    [delivery] = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=10)
    assert (delivery.status, delivery.attempts, delivery.finished_at is not None) == ("failed", 2, True)
    assert [(a.attempt, a.http_status, a.error) for a in delivery.attempt_log] == [
        (1, 503, ""),
        (2, None, "timed out after 10 s"),
    ]
    assert await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60) == []


async def test_a_lapsed_lease_is_claimed_again(db: Pool) -> None:
    """An instance that died while sending: another one sends it again (at least once)."""
    actor = await _actor(db)
    await _webhook(db, actor)
    await webhooks.enqueue(db, [_event(actor.id, "device.registered", "d", datetime.now(UTC))])
    [first] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=0.2)
    await asyncio.sleep(0.3)
    [again] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert again.id == first.id


async def test_deliveries_page_newest_first(db: Pool) -> None:
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor)
    now = datetime.now(UTC)
    for i in range(5):
        await webhooks.enqueue(db, [_event(actor.id, "device.registered", f"d{i}", now, event_id=f"e{i}")])
    first = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=2)
    rest = await webhooks.list_deliveries(
        db, actor.id, webhook_id, limit=10, before=first[-1].created_at, before_id=first[-1].id
    )
    assert [d.event_id for d in first + rest] == ["e4", "e3", "e2", "e1", "e0"]


async def test_only_finished_deliveries_past_retention_are_pruned(db: Pool) -> None:
    actor = await _actor(db)
    await _webhook(db, actor)
    now = datetime.now(UTC)
    await webhooks.enqueue(
        db, [_event(actor.id, "device.registered", f"d{i}", now, event_id=f"p{i}") for i in range(3)]
    )
    await db.execute("""UPDATE webhook_deliveries SET status = 'delivered', finished_at = now() - interval '2 days'
                        WHERE event_id = 'p0'""")
    await db.execute("""UPDATE webhook_deliveries SET status = 'failed', finished_at = now() - interval '1 hour'
                        WHERE event_id = 'p1'""")

    assert await webhooks.prune(db, older_than_s=86400, batch=1) == 1
    left = {r["event_id"] for r in await db.fetch("SELECT event_id FROM webhook_deliveries")}
    assert left == {"p1", "p2"}


# ------------------------------------------------------------------ the notifier's handlers


def _decided(
    account_id: str, device_id: str, decision: str, hardware_id: str = "H", at: float = 0.0
) -> RegistrationDecided:
    return RegistrationDecided(
        request_id=new_request_id(),
        account_id=account_id,
        product_id=str(uuid.uuid4()),
        device_id=device_id,
        hardware_id=hardware_id,
        decision=decision,
        credential_generation=1,
        received_at=at or time.time(),
    )


async def test_a_batch_of_events_becomes_deliveries_once(db: Pool) -> None:
    actor = await _actor(db)
    await _webhook(
        db, actor, ("device.registered", "device.clone_detected", "device.provisioned", "bulk.published")
    )
    product = await registry.new_product(db, actor.id)
    registration_id = await registry.new_registration(db, product)
    device_id = await registry.new_device(db, product, registration_id, "H1", lifecycle="provisioned")
    now = time.time()
    batch = [
        _decided(actor.id, device_id, "new", "H1", now + 1),
        _decided(actor.id, str(uuid.uuid4()), "clone", "H1-1", now + 2),
        _decided(actor.id, str(uuid.uuid4()), "same", at=now + 2),  # registering again: no event
        _decided(actor.id, str(uuid.uuid4()), "new", at=now - 3600),  # before the webhook existed
        _decided("", str(uuid.uuid4()), "new", at=now + 1),  # no account: of no webhook, not an error
        _decided("not-a-uuid", str(uuid.uuid4()), "new", at=now + 1),
        DeviceSignal(device_id=device_id, kind="ready", at=now + 3),
        DeviceSignal(device_id=device_id, kind="heartbeat", at=now + 4),  # no event
        DeviceSignal(device_id=str(uuid.uuid4()), kind="ready", at=now + 3),  # unknown device: no event
        BulkPublished(
            registration_id=str(uuid.uuid4()),
            account_id=actor.id,
            product_id=product.id,
            published=7,
            conflicts=1,
            at=now + 5,
        ),
    ]

    assert await handlers.record_events(db, batch) == 4
    assert await handlers.record_events(db, batch) == 0  # the batch redelivered after a crash
    rows = await db.fetch("SELECT event_type, payload FROM webhook_deliveries ORDER BY occurred_at")
    assert [r["event_type"] for r in rows] == [
        "device.registered",
        "device.clone_detected",
        "device.provisioned",
        "bulk.published",
    ]
    provisioned = json.loads(rows[2]["payload"])
    assert provisioned["type"] == "device.provisioned"
    assert provisioned["data"] == {"device_id": device_id, "hardware_id": "H1", "product_id": product.id}
    assert json.loads(rows[3]["payload"])["data"]["published"] == 7


async def test_refusals_of_an_accounts_codes_are_summarised_per_minute(db: Pool) -> None:
    actor, unsubscribed = await _actor(db), await _actor(db)
    webhook_id = await _webhook(db, actor, ("registration.refused",))

    def refused(account_id: str, reason: str, quota: QuotaOrNone = "none") -> RegistrationOutcome:
        return RegistrationOutcome(
            request_id=new_request_id(),
            status="refused",
            decision="refused",
            reason=reason,
            account_id=account_id,
            quota=quota,
        )

    batch = [
        refused(actor.id, reason_max_devices(2), "max_devices"),
        # A refusal of the previous release, which did not say the limit: read from its text.
        refused(actor.id, reason_max_devices(2), ""),
        refused(actor.id, reason_clone_rate(20, 60), "clone_rate"),
        refused(actor.id, REASON_BULK_NOT_LISTED),
        refused(actor.id, "device disabled by the operator"),
        refused(unsubscribed.id, REASON_BULK_NOT_LISTED),  # no webhook wants it: not counted
        refused("", "unknown bulk identification code"),  # nobody's code
    ]
    await handlers.record_events(db, batch)
    # Not yet: the minute is still open.
    assert await handlers.sweep(db, online_ttl_s=300, retention_s=86400) == 0
    later = datetime.now(UTC) + timedelta(minutes=2)
    assert await handlers.sweep(db, online_ttl_s=300, retention_s=86400, now=later) == 1
    assert await handlers.sweep(db, online_ttl_s=300, retention_s=86400, now=later) == 0  # taken once

    [delivery] = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=10)
    payload = json.loads(
        await db.fetchval("SELECT payload FROM webhook_deliveries WHERE id = $1", delivery.id)
    )
    assert payload["type"] == "registration.refused"
    assert payload["data"]["counts"] == {"throttled": 1, "quota": 2, "wrong_key": 1, "other": 1}
    assert payload["data"]["total"] == 5
    assert (
        await db.fetchval(
            "SELECT count(*) FROM webhook_refusal_counts WHERE account_id = $1", unsubscribed.id
        )
        == 0
    )


async def test_a_device_going_offline_is_announced_once_per_transition(db: Pool) -> None:
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor, ("device.offline",))
    product = await registry.new_product(db, actor.id)
    registration_id = await registry.new_registration(db, product)
    device_id = await registry.new_device(db, product, registration_id, "OFF1", lifecycle="provisioned")
    never_seen = await registry.new_device(db, product, registration_id, "OFF2", lifecycle="provisioned")
    disabled = await registry.new_device(
        db, product, registration_id, "OFF3", lifecycle="provisioned", disabled=True
    )
    now = datetime.now(UTC)
    await db.execute(
        "UPDATE devices SET last_seen_at = $2 WHERE id = ANY($1::uuid[])", [device_id, disabled], now
    )

    assert await handlers.sweep(db, online_ttl_s=60, retention_s=86400, now=now) == 0  # still online
    later = now + timedelta(seconds=61)
    swept = await asyncio.gather(
        *[handlers.sweep(db, online_ttl_s=60, retention_s=86400, now=later) for _ in range(4)]
    )
    assert sum(swept) == 1  # several instances at once: announced once
    # Seen again, then lost again: a new transition.
    await db.execute("UPDATE devices SET last_seen_at = $2 WHERE id = $1", device_id, later)
    assert (
        await handlers.sweep(db, online_ttl_s=60, retention_s=86400, now=later + timedelta(seconds=61)) == 1
    )

    deliveries = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=10)
    payloads = [
        json.loads(await db.fetchval("SELECT payload FROM webhook_deliveries WHERE id = $1", d.id))
        for d in deliveries
    ]
    assert [p["data"]["device_id"] for p in payloads] == [device_id, device_id]
    assert never_seen not in {p["data"]["device_id"] for p in payloads}


async def test_calls_throttled_by_a_codes_limit_are_counted_for_its_account(db: Pool) -> None:
    """The intake counts them in memory and adds them now and then (services/intake/resources.py)."""
    from limits import parse_many

    from services.intake.resources import report_throttled_codes
    from shared.throttle import Throttle, ThrottleSettings

    actor = await _actor(db)
    webhook_id = await _webhook(db, actor, ("registration.refused",))
    code = await registry.new_code(db, (await registry.new_product(db, actor.id)).id)
    unknown_code = str(uuid.uuid4()).upper()
    throttle = Throttle(ThrottleSettings((), (), tuple(parse_many("1/minute"))), "intake")
    await throttle.count_new_device(code)
    for refused_code in (code, code, code, unknown_code):
        await throttle.count_new_device(refused_code)
        with pytest.raises(TooManyRequests):
            await throttle.check_code(refused_code)

    await report_throttled_codes(db, throttle)
    await report_throttled_codes(db, throttle)  # taken: nothing twice
    later = datetime.now(UTC) + timedelta(minutes=2)
    assert await handlers.sweep(db, online_ttl_s=300, retention_s=86400, now=later) == 1
    [delivery] = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=10)
    payload = json.loads(
        await db.fetchval("SELECT payload FROM webhook_deliveries WHERE id = $1", delivery.id)
    )
    assert payload["data"]["counts"] == {"throttled": 3, "quota": 0, "wrong_key": 0, "other": 0}


async def test_an_attempt_of_a_delivery_deleted_meanwhile_is_dropped(db: Pool) -> None:
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor)
    await webhooks.enqueue(db, [_event(actor.id, "device.registered", "d", datetime.now(UTC))])
    [due] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    await webhooks.delete_webhook(db, actor, webhook_id)  # while the attempt is in flight

    attempt = Attempt(1, datetime.now(UTC), 204, "", 1.0)
    await webhooks.record_attempt(db, due.id, attempt, status="delivered", retry_in_s=None)
    assert await db.fetchval("SELECT count(*) FROM webhook_attempts WHERE delivery_id = $1", due.id) == 0


async def test_a_claim_reads_a_few_rows_of_a_large_backlog(db: Pool) -> None:
    """40,000 pending deliveries, half of them behind their device's first: a claim still
    takes the ten first due ones of the webhook (each the first of its device)."""
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor)
    await db.execute(
        """INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, ordering_key, occurred_at, payload)
           SELECT gen_random_uuid(), $1, k || g, 'device.registered', 'd' || g,
                  now() + g * interval '1 ms' + CASE WHEN k = 'p' THEN interval '1 hour' ELSE interval '0' END, '{}'
           FROM generate_series(1, 20000) g, (VALUES ('r'), ('p')) AS kinds(k)""",
        webhook_id,
    )
    claimed = await webhooks.claim_due(db, per_webhook=10, limit=100, lease_s=60)
    assert len(claimed) == 10 and all(d.event_id.startswith("r") for d in claimed)


async def test_an_attempt_signs_sends_and_follows_the_retry_schedule(db: Pool) -> None:
    """handlers.attempt with a stand-in for the HTTP sender: 503, then no answer, then gone."""
    from standardwebhooks.webhooks import Webhook

    from shared.webhook_sender import Answer

    actor = await _actor(db)
    webhook_id = await _webhook(db, actor)
    await webhooks.enqueue(db, [_event(actor.id, "device.registered", "d", datetime.now(UTC))])
    sent: list[tuple[str, str, dict[str, str]]] = []
    answers = [Answer(503, "", 4.0), Answer(None, "timed out after 10 s", 10000.0)]

    async def post(url: str, body: str, headers: dict[str, str]) -> Answer:
        sent.append((url, body, headers))
        return answers.pop(0)

    schedule = (0.0,)  # one retry, at once
    for _ in range(2):
        [due] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
        assert await handlers.attempt(db, due, post, BOX.open, schedule) is False

    [delivery] = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=10)
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    assert [(a.http_status, a.error) for a in delivery.attempt_log] == [
        (503, ""),
        (None, "timed out after 10 s"),
    ]
    assert await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60) == []
    url, body, headers = sent[0]
    assert url == "http://h/x" and Webhook("whsec_dGVzdA==").verify(body, headers) == json.loads(body)
    assert sent[0][2]["webhook-id"] == sent[1][2]["webhook-id"]  # one ID for every attempt


async def test_a_secret_that_does_not_open_is_a_failed_attempt(db: Pool) -> None:
    """FLEETREG_SECRET_KEY rotated: nothing is sent, the attempt says why."""
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor)
    await webhooks.enqueue(db, [_event(actor.id, "device.registered", "d", datetime.now(UTC))])
    [due] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)

    async def post(url: str, body: str, headers: dict[str, str]) -> object:
        raise AssertionError("nothing may be sent unsigned")

    other_key = SecretBox(b"another-deployment-key-of-32-bytes-at-least")
    assert await handlers.attempt(db, due, post, other_key.open, (60.0,)) is False  # type: ignore[arg-type]
    [delivery] = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=10)
    assert delivery.status == "pending"
    assert "FLEETREG_SECRET_KEY" in delivery.attempt_log[0].error


async def test_a_retention_of_zero_keeps_finished_deliveries(db: Pool) -> None:
    actor = await _actor(db)
    await _webhook(db, actor)
    await webhooks.enqueue(db, [_event(actor.id, "device.registered", "d", datetime.now(UTC), event_id="z0")])
    await db.execute("""UPDATE webhook_deliveries SET status = 'delivered', finished_at = now() - interval '999 days'
                        WHERE event_id = 'z0'""")
    assert await webhooks.prune(db, older_than_s=0) == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE event_id = 'z0'") == 1


async def test_claims_made_at_once_never_take_one_delivery_twice(db: Pool) -> None:
    """Several notifier instances claiming together: each delivery goes to one of them."""
    actor = await _actor(db)
    await _webhook(db, actor)
    now = datetime.now(UTC)
    await webhooks.enqueue(db, [_event(actor.id, "device.registered", f"c{i}", now) for i in range(60)])

    claims = await asyncio.gather(
        *[webhooks.claim_due(db, per_webhook=100, limit=20, lease_s=60) for _ in range(6)]
    )
    taken = [d.id for claim in claims for d in claim]
    assert taken and len(taken) == len(set(taken))
    # Candidates another claim took meanwhile are skipped, not waited for: the next claims
    # take the rest.
    while more := await webhooks.claim_due(db, per_webhook=100, limit=20, lease_s=60):
        taken += [d.id for d in more]
    assert len(taken) == len(set(taken)) == 60


async def _registered_device(
    db: Pool, actor: Account, decision: str = "new", received_ago_s: float = 0.0
) -> tuple[str, str]:
    """A provisioned device and the request of its accepted registration (in the registry),
    received ``received_ago_s`` seconds ago."""
    product = await registry.new_product(db, actor.id)
    registration_id = await registry.new_registration(db, product)
    device_id = await registry.new_device(
        db, product, registration_id, uuid.uuid4().hex[:12], lifecycle="provisioned"
    )
    request_id = new_request_id()
    await db.execute(
        """INSERT INTO registration_decisions (request_id, account_id, product_id, device_id, claimed_hardware_id,
                                              decision, status, received_at)
           VALUES ($1, $2, $3, $4, 'H', $5, 'ready', now() - make_interval(secs => $6))""",
        request_id,
        actor.id,
        product.id,
        device_id,
        decision,
        received_ago_s,
    )
    return device_id, request_id


async def test_a_confirmation_consumed_before_its_registration_waits_for_it(db: Pool) -> None:
    """The notifier reads device.signals and registration.decided separately: a lagging
    partition can hand it a device's ready before the decision. The provisioned delivery
    waits for the registered one, which then goes first."""
    actor = await _actor(db)
    await _webhook(db, actor, ("device.registered", "device.provisioned"))
    device_id, request_id = await _registered_device(db, actor)
    now = time.time()

    await handlers.record_events(db, [DeviceSignal(device_id=device_id, kind="ready", at=now + 1)])
    assert await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60) == []  # waits
    decided = RegistrationDecided(
        request_id=request_id,
        account_id=actor.id,
        product_id=str(uuid.uuid4()),
        device_id=device_id,
        hardware_id="H",
        decision="new",
        credential_generation=1,
        received_at=now,
    )
    await handlers.record_events(db, [decided])
    [first] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert first.event_type == "device.registered"
    await webhooks.record_attempt(
        db, first.id, Attempt(1, datetime.now(UTC), 204, "", 1.0), status="delivered", retry_in_s=None
    )
    [second] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert second.event_type == "device.provisioned"


async def test_a_registration_that_never_comes_is_waited_for_a_bounded_time(db: Pool) -> None:
    actor = await _actor(db)
    await _webhook(db, actor, ("device.registered", "device.provisioned"))
    device_id, _ = await _registered_device(db, actor)
    await handlers.record_events(db, [DeviceSignal(device_id=device_id, kind="ready", at=time.time())])

    assert await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60, order_wait_s=300) == []
    await asyncio.sleep(0.2)
    [alone] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60, order_wait_s=0.1)
    assert alone.event_type == "device.provisioned"


async def test_nothing_waits_for_an_event_the_webhook_does_not_get(db: Pool) -> None:
    actor = await _actor(db)
    await _webhook(db, actor, ("device.provisioned",))  # not device.registered
    device_id, _ = await _registered_device(db, actor)
    again, _ = await _registered_device(db, actor, decision="same")  # registering again: no event
    now = time.time()
    await handlers.record_events(
        db, [DeviceSignal(device_id=d, kind="ready", at=now) for d in (device_id, again)]
    )
    claimed = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert sorted(d.event_type for d in claimed) == ["device.provisioned", "device.provisioned"]


async def test_a_failing_streak_a_disabled_webhook_and_enabling_it_again(db: Pool) -> None:
    """Migration 0018: a failed attempt starts the streak (a later one keeps its start), a
    delivered one ends it; a disabled webhook has its pending deliveries failed, gets none
    queued and none claimed; enabling it is audited and events are queued again."""
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor, ("device.registered",))
    now = datetime.now(UTC)
    await webhooks.enqueue(db, [_event(actor.id, "device.registered", f"d{i}", now) for i in range(3)])
    first, second = await webhooks.claim_due(db, per_webhook=2, limit=2, lease_s=60)
    failed = Attempt(1, now, 500, "", 1.0)
    since = await webhooks.record_attempt(
        db, first.id, failed, status="pending", retry_in_s=0, webhook_id=webhook_id
    )
    later = Attempt(1, now + timedelta(seconds=5), 500, "", 1.0)
    assert since == now
    assert (
        await webhooks.record_attempt(
            db, second.id, later, status="pending", retry_in_s=0, webhook_id=webhook_id
        )
        == now
    )  # the streak's start stays
    assert (await webhooks.get_webhook(db, actor.id, webhook_id)).failing_since == now

    assert await webhooks.disable_webhook(db, webhook_id, "the endpoint answered 410 Gone") is not None
    assert await webhooks.disable_webhook(db, webhook_id, "another reason") is None  # the first stays
    shown = await webhooks.get_webhook(db, actor.id, webhook_id)
    assert (shown.enabled, shown.disabled_reason) == (False, "the endpoint answered 410 Gone")
    page = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=10)
    assert {d.status for d in page} == {"failed"} and len(page) == 3
    assert await webhooks.enqueue(db, [_event(actor.id, "device.registered", "d9", now)]) == 0
    assert await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60) == []

    enabled = await webhooks.enable_webhook(db, actor, webhook_id)
    assert (enabled.enabled, enabled.disabled_reason, enabled.failing_since) == (True, "", None)
    assert await webhooks.enable_webhook(db, actor, webhook_id) == enabled  # once: nothing more
    assert await webhooks.enqueue(db, [_event(actor.id, "device.registered", "d10", now)]) == 1
    [due] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    ok = Attempt(1, now, 204, "", 1.0)
    assert (
        await webhooks.record_attempt(
            db, due.id, ok, status="delivered", retry_in_s=None, webhook_id=webhook_id
        )
        is None
    )
    events = await audit.list_events(db, actor.id, audit.AuditFilter(action="webhook.enabled"), limit=10)
    assert [e.changes for e in events] == [{"was_disabled_for": "the endpoint answered 410 Gone"}]
    with pytest.raises(NotFound):
        await webhooks.enable_webhook(db, await _actor(db), webhook_id)


async def test_a_delivery_queued_across_the_disable_is_failed_by_the_sweep(db: Pool) -> None:
    """A queueing transaction that began before the webhook was disabled and commits after
    it leaves a pending delivery that disable_webhook could not see (found by the e2e
    test): the sweep's fail_pending_of_disabled fails it, so no delivery of a disabled
    webhook stays pending (and counted in the backlog) for ever."""
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor, ("device.registered",))
    now = datetime.now(UTC)
    async with db.acquire() as conn:
        queueing = conn.transaction()
        await queueing.start()
        assert await webhooks.enqueue(conn, [_event(actor.id, "device.registered", "late", now)]) == 1
        assert await webhooks.disable_webhook(db, webhook_id, "the endpoint answered 410 Gone") is not None
        await queueing.commit()
    [stray] = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=10)
    assert stray.status == "pending"  # what the race leaves

    assert await webhooks.fail_pending_of_disabled(db) >= 1
    [failed] = await webhooks.list_deliveries(db, actor.id, webhook_id, limit=10)
    assert failed.status == "failed"


# ------------------------------------------------------------------ device.disabled


async def test_a_disable_writes_its_device_disabled_delivery_in_its_own_transaction(db: Pool) -> None:
    """The operator's disable (one device, the batch call and the console all go through
    devices.change_devices) queues device.disabled for each webhook of the account that
    wants it, with the change and its audit event: one per device whose state changed, as
    the audit trail records, and nothing for a webhook that does not want it, another
    account's, an enable, or a disable of a device disabled already."""
    actor, other = await _actor(db), await _actor(db)
    wants = await _webhook(db, actor, ("device.registered", "device.disabled"))
    await _webhook(db, actor, ALL)  # every device event but device.disabled
    await _webhook(db, other, ("device.disabled",))
    device_id, _ = await _registered_device(db, actor)
    already, _ = await _registered_device(db, actor)
    await db.execute("UPDATE devices SET disabled = true WHERE id = $1", already)

    changes = await devices.change_devices(db, actor, [device_id, already], "disable")
    assert [c.outcome for c in changes] == ["disabled", "unchanged"]
    [row] = await db.fetch(
        "SELECT webhook_id::text, event_id, event_type, ordering_key, occurred_at, payload FROM webhook_deliveries"
    )
    device = await devices.get_device(db, actor.id, device_id)
    disabled_at = await db.fetchval(
        "SELECT at FROM device_events WHERE device_id = $1 AND kind = 'disabled'", device_id
    )
    assert (row["webhook_id"], row["event_type"], row["ordering_key"]) == (
        wants,
        "device.disabled",
        device_id,
    )
    assert row["occurred_at"] == disabled_at  # the change's own time
    assert row["event_id"] == rules.event_id("device.disabled", device_id, disabled_at.isoformat())
    assert json.loads(row["payload"]) == {
        "type": "device.disabled",
        "timestamp": disabled_at.isoformat(),
        "data": {
            "device_id": device_id,
            "hardware_id": device.hardware_id,
            "product_id": device.product_id,
            "api_key_id": None,
            "api_key_label": "test",
            "actor": {
                "user_id": None,
                "user_email": None,
                "role": None,
                "service_account": None,
                "session_id": None,
            },
        },
    }
    await devices.change_devices(db, actor, [device_id], "disable")  # disabled already: nothing
    await devices.change_devices(db, actor, [device_id], "enable")  # no device.enabled event
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 1
    [audited] = await audit.list_events(db, actor.id, audit.AuditFilter(action="device.disabled"), limit=10)
    assert audited.target_id == device_id  # one audit event, one webhook event


async def test_a_disable_follows_a_recent_registration_and_does_not_wait_for_an_old_one(db: Pool) -> None:
    """A device disabled right after its registration: the notifier may not have consumed
    the registration yet, so device.disabled waits for device.registered and goes after it.
    One registered longer ago than ORDER_WAIT_S is not waited for (its delivery may have
    been pruned since: the wait would hold the disable for 5 minutes for nothing)."""
    actor = await _actor(db)
    webhook_id = await _webhook(db, actor, ("device.registered", "device.disabled"))
    await db.execute("UPDATE webhooks SET created_at = now() - interval '1 hour' WHERE id = $1", webhook_id)
    fresh, request_id = await _registered_device(db, actor)
    old, _ = await _registered_device(db, actor, received_ago_s=rules.ORDER_WAIT_S + 60)

    await devices.change_devices(db, actor, [fresh, old], "disable")
    [alone] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert (alone.event_type, json.loads(alone.payload)["data"]["device_id"]) == ("device.disabled", old)
    decided = RegistrationDecided(
        request_id=request_id,
        account_id=actor.id,
        product_id=str(uuid.uuid4()),
        device_id=fresh,
        hardware_id="H",
        decision="new",
        credential_generation=1,
        received_at=time.time() - 1,
    )
    await handlers.record_events(db, [decided])  # consumed after the disable
    [first] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert first.event_type == "device.registered"
    await webhooks.record_attempt(
        db, first.id, Attempt(1, datetime.now(UTC), 204, "", 1.0), status="delivered", retry_in_s=None
    )
    [second] = await webhooks.claim_due(db, per_webhook=10, limit=10, lease_s=60)
    assert (second.event_type, json.loads(second.payload)["data"]["device_id"]) == ("device.disabled", fresh)
