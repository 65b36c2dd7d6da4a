"""The notifier's redial of registration hook calls (services/notifier/rulings.redial) on
the real Postgres: which calls it makes again (a fail-closed failure past a device's pause,
a request never taken, a call whose instance died), which it leaves (answered, just failed,
in flight), and how the hook's breaker holds them back (none while it pauses, one trial
past its pause); and the release of confirmed rulings whose registration.decided was lost
before it was published (services/notifier/rulings.release_lost)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import timedelta

import pytest

from services.notifier.rulings import redial, release_lost
from shared.db.pool import Pool
from shared.events import Event, HookRequested, RegistrationDecided
from shared.hook_caller import HookCaller
from tests.support import registry

pytestmark = pytest.mark.integration

# call -> (outcome, seconds ago it was created, called, answered; None: never): due again, or not
ROWS = {
    "failed-long-ago": ("timeout", 60, 50, 40),
    "failed-just-now": ("http_error", 0, 0, 0),
    "waiting-lost": ("waiting", 120, None, None),
    "waiting-fresh": ("waiting", 0, None, None),
    "calling-dead": ("calling", 120, 120, None),
    "calling-now": ("calling", 0, 0, None),
    "allowed": ("allow", 120, 120, 120),
}
DUE = {"failed-long-ago", "waiting-lost", "calling-dead"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _seeded(pool: Pool) -> tuple[str, dict[str, str]]:
    """A registration with a hook and one reserved device per row of ROWS; returns the
    registration and each row's call ID."""
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    registration_id = await registry.new_registration(pool, product)
    await pool.execute(
        "UPDATE registrations SET hook_url = 'http://127.0.0.1:9/', hook_secret_sealed = '\\x00' WHERE id = $1",
        registration_id,
    )
    ids = {}
    for name, (outcome, created, called, answered) in ROWS.items():
        device_id = await registry.new_device(
            pool, product, registration_id, f"{name}-{uuid.uuid4().hex[:6]}"
        )
        ids[name] = call_id = f"msg_{uuid.uuid4().hex}"
        await pool.execute(
            """INSERT INTO registration_hook_calls (call_id, registration_id, account_id, device_id, request_id,
                   request, decided, outcome, reserved_until, created_at, called_at, answered_at)
               VALUES ($1, $2, $3, $4, $5, '{}', '{}', $6, now() + interval '15 minutes',
                       now() - make_interval(secs => $7), now() - make_interval(secs => $8),
                       now() - make_interval(secs => $9))""",
            call_id,
            registration_id,
            account_id,
            device_id,
            str(uuid.uuid4()),
            outcome,
            created,
            called,
            answered,
        )
    return registration_id, ids


async def _redialled(pool: Pool, caller: HookCaller, registration_id: str) -> list[HookRequested]:
    started: list[HookRequested] = []
    # Every due call of the database (other tests' too), so that none of this test's is
    # left for a later round.
    await redial(pool, caller, started.append, limit=1_000_000)
    return [s for s in started if s.registration_id == registration_id]


async def test_the_calls_due_again_are_made_again_and_no_other(pool: Pool) -> None:
    registration_id, ids = await _seeded(pool)
    started = await _redialled(pool, HookCaller(allow_private=True), registration_id)
    names = {call_id: name for name, call_id in ids.items()}
    assert {names[s.call_id] for s in started} == DUE


async def test_an_open_breaker_holds_them_back_then_lets_one_trial_through(pool: Pool) -> None:
    registration_id, _ = await _seeded(pool)
    clock = Clock()
    caller = HookCaller(allow_private=True, clock=clock)
    breaker = caller.breaker(registration_id)
    for _ in range(breaker.failures_to_open):
        breaker.record(False, clock.now)
    assert await _redialled(pool, caller, registration_id) == []  # paused: every call would fail at once
    clock.now += breaker.open_s + 1
    assert len(await _redialled(pool, caller, registration_id)) == 1  # the breaker's trial


# call -> (outcome, answered how long ago, its request's decision status, device lifecycle):
# released again, or not
RULED = {
    "allowed-event-lost": ("allow", timedelta(minutes=1), "decided", "registered"),
    "failed-open-event-lost": ("failed_open", timedelta(minutes=1), "decided", "registered"),
    "hook-removed-while-waiting": ("no_hook", timedelta(minutes=1), "decided", "registered"),
    "allowed-and-ready": ("allow", timedelta(minutes=1), "ready", "registered"),
    # its first request still decided, the retry the ruling answered ready
    "allowed-retry-answered": ("allow", timedelta(minutes=1), "decided", "registered"),
    "allowed-just-now": ("allow", timedelta(seconds=0), "decided", "registered"),
    "allowed-before-the-hold": ("allow", timedelta(hours=1), "decided", "registered"),
    "denied": ("deny", timedelta(minutes=1), "decided", "registered"),
    "allowed-then-reset": ("allow", timedelta(minutes=1), "decided", "preregistered"),
}
RELEASED = {
    "allowed-event-lost",
    "failed-open-event-lost",
    "hook-removed-while-waiting",
    "allowed-retry-answered",
}


async def test_a_confirmed_ruling_whose_event_was_lost_is_released_again(pool: Pool) -> None:
    # The ruling commits before its registration.decided is published: a notifier killed
    # in between (or a broker failing) must not leave the device's request decided for ever.
    account_id = await registry.new_account(pool)
    product = await registry.new_product(pool, account_id)
    registration_id = await registry.new_registration(pool, product)
    requests = {}  # name -> the request that is still only decided
    for name, (outcome, ago, status, lifecycle) in RULED.items():
        hardware_id = f"{name}-{uuid.uuid4().hex[:6]}"
        device_id = await registry.new_device(
            pool, product, registration_id, hardware_id, lifecycle=lifecycle
        )
        requests[name] = request_id = str(uuid.uuid4())
        decided = {
            "request_id": request_id,
            "account_id": account_id,
            "product_id": product.id,
            "device_id": device_id,
            "hardware_id": hardware_id,
            "decision": "new",
            "credential_generation": 1,
            "received_at": 0.0,
        }
        await pool.execute(
            """INSERT INTO registration_decisions (request_id, account_id, product_id, device_id,
                   claimed_hardware_id, assigned_hardware_id, decision, status, credential_generation,
                   received_at, decided_at)
               VALUES ($1, $2, $3, $4, $5, $5, 'new', $6, 1, now() - interval '2 minutes',
                       now() - interval '2 minutes')""",
            request_id,
            account_id,
            product.id,
            device_id,
            hardware_id,
            status,
        )
        if name == "allowed-retry-answered":
            # The retry (same key) became the row's request and was answered; the first
            # request, which the device may still poll, was not.
            request_id = str(uuid.uuid4())
            await pool.execute(
                """INSERT INTO registration_decisions (request_id, account_id, product_id, device_id,
                       claimed_hardware_id, assigned_hardware_id, decision, status, credential_generation,
                       received_at, decided_at)
                   VALUES ($1, $2, $3, $4, $5, $5, 'same', 'ready', 1, now() - interval '1 minute',
                           now() - interval '1 minute')""",
                request_id,
                account_id,
                product.id,
                device_id,
                hardware_id,
            )
        await pool.execute(
            """INSERT INTO registration_hook_calls (call_id, registration_id, account_id, device_id, request_id,
                   request, decided, outcome, reserved_until, answered_at)
               VALUES ($1, $2, $3, $4, $5, '{}', $6::jsonb, $7, now() + interval '15 minutes', now() - $8::interval)""",
            f"msg_{uuid.uuid4().hex}",
            registration_id,
            account_id,
            device_id,
            request_id,
            json.dumps(decided),
            outcome,
            ago,
        )
    published: list[Event] = []

    async def publish(events: Sequence[Event]) -> None:
        published.extend(events)

    await release_lost(pool, publish, limit=1_000_000)  # every lost one of the database (other tests' too)
    names = {request_id: name for name, request_id in requests.items()}
    released = [e for e in published if isinstance(e, RegistrationDecided) and e.request_id in names]
    assert {names[e.request_id] for e in released} == RELEASED
    assert all(e.hardware_id.startswith(names[e.request_id]) for e in released)  # each its own event
