"""Webhooks end to end: the operator API creates them, the running notifier delivers the
registry's events to receivers in this test process, signed (checked with the
``standardwebhooks`` package), at least once, in order per device, through failures,
and without one slow endpoint holding up another account's.

The test system's notifier retries within seconds (tests/support/system.py SERVICE_ENV)
and counts a device offline 3 s after its last sign of life.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.e2e.test_ops_endpoints import sign_in
from tests.support.api import Operator, new_operator, provision, register
from tests.support.bulk import bulk_product, csv_rows, csv_text, publish_and_wait, upload
from tests.support.system import System
from tests.support.webhooks import Receiver, Request, accept, events_by_device

pytestmark = pytest.mark.e2e

STORM = 500
DEVICE_EVENTS = ["device.registered", "device.provisioned", "device.offline"]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    yield started
    await started.stop()


async def create_webhook(operator: Operator, url: str, events: list[str]) -> dict[str, Any]:
    created: dict[str, Any] = await operator.call(
        "POST", "/v1/webhooks", {"url": url, "events": events}, expect=201
    )
    return created


async def boot(
    session: aiohttp.ClientSession, system: System, code: str, count: int, concurrency: int = 100
) -> list[str]:
    """``count`` devices register, fetch their files and confirm; their device IDs."""
    gate = asyncio.Semaphore(concurrency)
    tag = uuid.uuid4().hex[:6]

    async def one(i: int) -> str:
        async with gate:
            answer = await register(
                session, system.device_url, code, f"wh{tag}{i:05d}", cpu_id=f"c{i}", mac=f"m{i}"
            )
            assert answer.status == 200, answer.body
            await provision(session, system.device_url, answer.body)
            return str(answer.body["device_id"])

    return await asyncio.gather(*[one(i) for i in range(count)])


async def test_a_500_device_storm_reaches_the_receiver_signed_in_order_at_least_once(
    system: System, session: aiohttp.ClientSession, operator: Operator, receiver: Receiver
) -> None:
    webhook = await create_webhook(operator, receiver.url, DEVICE_EVENTS)
    code = (await operator.product())["bulk_identification_code"]

    devices = await boot(session, system, code, STORM)

    def complete() -> bool:
        found = events_by_device(receiver.accepted)
        return all(len(found.get(d, [])) == len(DEVICE_EVENTS) for d in devices)

    await receiver.wait_for(complete, 180, "every device's three events")
    receiver.verify_all(webhook["secret"])
    found = events_by_device(receiver.accepted)
    assert set(found) == set(devices)  # nothing of another account's
    for device in devices:
        assert found[device] == DEVICE_EVENTS, (device, found[device])
    for r in receiver.accepted:
        assert r.payload["data"]["device_id"] in found
        assert r.headers["content-type"] == "application/json"
    # Every delivery is recorded as delivered, with its attempts.
    page = await operator.call("GET", f"/v1/webhooks/{webhook['id']}/deliveries?limit=1000", expect=200)
    assert page["deliveries"] and all(d["status"] == "delivered" for d in page["deliveries"])
    assert all(d["attempt_log"][-1]["status_code"] == 204 for d in page["deliveries"])


async def test_two_notifier_instances_share_the_work_without_breaking_order(
    system: System, session: aiohttp.ClientSession, operator: Operator, receiver: Receiver
) -> None:
    """Claims are leases in Postgres: a second instance in the same consumer group takes
    deliveries too, and each device's events still arrive in order, each at least once."""
    second = await system.add_instance("notifier")
    try:
        webhook = await create_webhook(operator, receiver.url, ["device.registered", "device.provisioned"])
        devices = await boot(session, system, (await operator.product())["bulk_identification_code"], 200)

        def complete() -> bool:
            found = events_by_device(receiver.accepted)
            return all(len(found.get(d, [])) == 2 for d in devices)

        await receiver.wait_for(complete, 120, "every event with two notifiers")
        receiver.verify_all(webhook["secret"])
        assert all(
            e == ["device.registered", "device.provisioned"]
            for e in events_by_device(receiver.accepted).values()
        )
    finally:
        second.stop()


async def test_a_receiver_that_fails_for_a_while_then_recovers_gets_everything(
    system: System, session: aiohttp.ClientSession, operator: Operator, receiver: Receiver
) -> None:
    refused = 0

    async def unavailable_at_first(_: Request) -> int:
        nonlocal refused
        if refused < 25:
            refused += 1
            return 503
        return 204

    receiver.answer = unavailable_at_first
    webhook = await create_webhook(operator, receiver.url, ["device.registered", "device.provisioned"])
    code = (await operator.product())["bulk_identification_code"]

    devices = await boot(session, system, code, 12)

    def complete() -> bool:
        found = events_by_device(receiver.accepted)
        return all(len(found.get(d, [])) == 2 for d in devices)

    await receiver.wait_for(complete, 120, "every event after the receiver recovered")
    assert refused == 25
    receiver.verify_all(webhook["secret"])
    assert all(
        events == ["device.registered", "device.provisioned"]
        for events in events_by_device(receiver.accepted).values()
    )
    page = await operator.call("GET", f"/v1/webhooks/{webhook['id']}/deliveries", expect=200)
    retried = [d for d in page["deliveries"] if d["attempts"] > 1]
    assert retried, "some deliveries were tried more than once"
    for d in retried:
        assert [a["status_code"] for a in d["attempt_log"]][:-1] == [503] * (d["attempts"] - 1)
        assert d["status"] == "delivered"


async def test_a_slow_receiver_does_not_hold_up_another_accounts_deliveries(
    system: System, session: aiohttp.ClientSession, pool: Pool, operator: Operator
) -> None:
    release = asyncio.Event()

    async def stuck(_: Request) -> int:
        await release.wait()
        return 204

    slow, fast = await Receiver(answer=stuck).start(), await Receiver().start()
    try:
        other = await new_operator(session, pool, system.operator_url)
        await create_webhook(operator, slow.url, ["device.registered"])
        await create_webhook(other, fast.url, ["device.registered"])
        slow_devices = await boot(session, system, (await operator.product())["bulk_identification_code"], 30)
        await slow.wait_for(lambda: slow.in_flight > 0, 30, "the slow receiver being called")
        fast_devices = await boot(session, system, (await other.product())["bulk_identification_code"], 10)

        # Every event of the other account arrives while the slow endpoint still holds its calls.
        await fast.wait_for(
            lambda: len(events_by_device(fast.accepted)) == 10, 60, "the other account's events"
        )
        assert set(events_by_device(fast.accepted)) == set(fast_devices)
        # Meanwhile the slow endpoint held its first calls open, no more at once than its
        # share (FLEETREG_WEBHOOK_CONCURRENCY_PER_WEBHOOK), none answered nor tried again.
        assert not release.is_set() and slow.accepted == []
        assert 1 <= slow.in_flight == slow.most_in_flight <= 10
        assert len({r.event_id for r in slow.arrived}) == len(slow.arrived)

        release.set()
        await slow.wait_for(
            lambda: set(events_by_device(slow.accepted)) == set(slow_devices),
            120,
            "the slow receiver's events",
        )
    finally:
        release.set()
        await slow.stop()
        await fast.stop()


async def test_a_finished_bulk_publish_is_announced(
    system: System, session: aiohttp.ClientSession, operator: Operator, receiver: Receiver
) -> None:
    webhook = await create_webhook(operator, receiver.url, ["bulk.published"])
    product_id = await bulk_product(operator)
    status, uploaded = await upload(
        session, system.bulk_url, operator, product_id, csv_text(csv_rows(30)).encode()
    )
    assert status == 201, uploaded
    await publish_and_wait(session, system.bulk_url, operator, uploaded["id"])

    await receiver.wait_for(lambda: bool(receiver.accepted), 60, "bulk.published")
    receiver.verify_all(webhook["secret"])
    [announced] = {r.event_id: r for r in receiver.accepted}.values()
    assert announced.kind == "bulk.published"
    assert announced.payload["data"] == {
        "registration_id": uploaded["id"],
        "product_id": product_id,
        "published": 30,
        "conflicts": 0,
    }


async def test_refusals_of_the_accounts_code_are_counted_for_its_summary(
    system: System, session: aiohttp.ClientSession, pool: Pool, operator: Operator, receiver: Receiver
) -> None:
    """The refusals travel with their account (dedup's outcome) to the notifier, which counts
    them for the minute's registration.refused summary (sent once the minute closed: the
    summary itself is tested in tests/integration/test_repository_webhooks.py)."""
    await create_webhook(operator, receiver.url, ["registration.refused"])
    product = await operator.call(
        "POST", "/v1/products", {"name": f"q-{uuid.uuid4().hex[:8]}", "services": []}, expect=201
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    registration = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product["id"], "max_devices": 1}, expect=201
    )
    answers = [
        await register(
            session, system.device_url, registration["bulk_identification_code"], f"q{uuid.uuid4().hex[:10]}"
        )
        for _ in range(3)
    ]
    assert [a.body["status"] for a in answers] == ["ready", "refused", "refused"]

    async def counted() -> int:
        found = await pool.fetchval(
            "SELECT sum(count) FROM webhook_refusal_counts WHERE account_id = $1 AND reason = 'quota'",
            operator.account_id,
        )
        return int(found or 0)

    seen = 0
    for _ in range(300):  # counted within a second or so; the minute's summary takes them 5 s after it
        seen = await counted()
        if seen >= 2:
            break
        await asyncio.sleep(0.1)
    assert seen == 2


async def _console_disable(
    system: System, session: aiohttp.ClientSession, operator: Operator, device_id: str
) -> None:
    """Disable a device with the console's button (its form post, signed in with the key)."""
    cookie = await sign_in(session, system.operator_url, operator.api_key)
    async with session.get(f"{system.operator_url}/console/devices/{device_id}", headers=cookie) as page:
        assert page.status == 200
        found = re.search(r'name="csrf_token" value="([^"]+)"', await page.text())
    assert found is not None
    async with session.post(
        f"{system.operator_url}/console/devices/{device_id}/disable",
        data={"csrf_token": found.group(1)},
        headers=cookie,
        allow_redirects=False,
    ) as answer:
        assert answer.status == 303, await answer.text()


async def test_a_device_disabled_by_the_api_the_batch_call_or_the_console_is_announced_after_its_registration(
    system: System, session: aiohttp.ClientSession, operator: Operator, receiver: Receiver
) -> None:
    """device.disabled is written with the disable itself (shared.db.devices.change_devices),
    whichever door it came through: one signed delivery per device whose state changed, after
    the device's device.registered (disabled at once, before the notifier may have consumed
    the registration), with the key that did it as the audit trail records it; none for a
    webhook that does not want it."""
    wants = await create_webhook(operator, receiver.url, ["device.registered", "device.disabled"])
    others = await Receiver().start()
    try:
        other = await create_webhook(operator, others.url, ["device.registered", "device.provisioned"])
        code = (await operator.product())["bulk_identification_code"]
        tag = uuid.uuid4().hex[:6]
        devices = []
        for door in ("api", "batch", "console"):
            answer = await register(session, system.device_url, code, f"dis{tag}{door}")
            assert answer.status == 200, answer.body
            devices.append(str(answer.body["device_id"]))
        by_api, by_batch, by_console = devices

        await operator.call("POST", f"/v1/devices/{by_api}/disable", expect=200)
        batch = await operator.call(
            "POST", "/v1/devices/disable", {"device_ids": [by_batch, by_api]}, expect=200
        )
        assert [r["outcome"] for r in batch["results"]] == ["disabled", "unchanged"]  # no second event
        await _console_disable(system, session, operator, by_console)

        def complete() -> bool:
            found = events_by_device(receiver.accepted)
            return all(len(found.get(d, [])) == 2 for d in devices)

        await receiver.wait_for(complete, 30, "each device's registration and disable")
        receiver.verify_all(wants["secret"])
        assert events_by_device(receiver.accepted) == {
            d: ["device.registered", "device.disabled"] for d in devices
        }
        audited = await operator.call("GET", "/v1/audit-events?action=device.disabled&limit=10", expect=200)
        by_whom = {
            e["target_id"]: (e["api_key_id"], e["api_key_label"], e["actor"]) for e in audited["audit_events"]
        }
        # The key's service account acted, with its role (the console's through its key session).
        assert {(w[2]["service_account"], w[2]["role"]) for w in by_whom.values()} == {("default", "admin")}
        assert set(by_whom) == set(devices)
        shown = {d["id"]: d for d in await operator.devices()}
        for r in receiver.accepted:
            if r.kind == "device.disabled":
                data = r.payload["data"]
                device = shown[data["device_id"]]
                assert data == {
                    "device_id": device["id"],
                    "hardware_id": device["hardware_id"],
                    "product_id": device["product_id"],
                    "api_key_id": by_whom[device["id"]][0],
                    "api_key_label": by_whom[device["id"]][1],
                    "actor": by_whom[device["id"]][2],  # as the audit trail names it
                }
        page = await operator.call("GET", f"/v1/webhooks/{wants['id']}/deliveries?limit=100", expect=200)
        assert sorted(d["event_type"] for d in page["deliveries"]) == sorted(
            ["device.registered"] * 3 + ["device.disabled"] * 3
        )
        # The rows are written with the disable: the other webhook has none, now or later.
        page = await operator.call("GET", f"/v1/webhooks/{other['id']}/deliveries?limit=100", expect=200)
        assert "device.disabled" not in {d["event_type"] for d in page["deliveries"]}
        assert all(r.kind != "device.disabled" for r in others.arrived)
    finally:
        await others.stop()


# ------------------------------------------------------------------ the operator API


async def test_webhooks_are_created_listed_shown_and_deleted(operator: Operator, receiver: Receiver) -> None:
    created = await create_webhook(operator, receiver.url, ["device.offline", "registration.refused"])
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["device.offline", "registration.refused"]

    listed = await operator.call("GET", "/v1/webhooks", expect=200)
    assert listed == {"webhooks": [{k: v for k, v in created.items() if k not in ("secret", "note")}]}
    shown = await operator.call("GET", f"/v1/webhooks/{created['id']}", expect=200)
    assert "secret" not in shown and created["secret"] not in str(listed)
    assert await operator.call("GET", f"/v1/webhooks/{created['id']}/deliveries", expect=200) == {
        "deliveries": [],
        "next_before": None,
        "next_before_id": None,
    }

    assert await operator.call("DELETE", f"/v1/webhooks/{created['id']}", expect=200) == {
        "deleted": created["id"]
    }
    await operator.call("GET", f"/v1/webhooks/{created['id']}", expect=404)
    await operator.call("DELETE", f"/v1/webhooks/{created['id']}", expect=404)


async def test_another_accounts_webhook_is_not_found(
    system: System, session: aiohttp.ClientSession, pool: Pool, operator: Operator, receiver: Receiver
) -> None:
    created = await create_webhook(operator, receiver.url, ["device.offline"])
    other = await new_operator(session, pool, system.operator_url)
    for method, path in (
        ("GET", f"/v1/webhooks/{created['id']}"),
        ("GET", f"/v1/webhooks/{created['id']}/deliveries"),
        ("DELETE", f"/v1/webhooks/{created['id']}"),
    ):
        answer = await other.call(method, path, expect=404)
        assert answer["error"] == "not_found"
    assert (await other.call("GET", "/v1/webhooks", expect=200)) == {"webhooks": []}
    await operator.call("GET", f"/v1/webhooks/{created['id']}", expect=200)


async def test_a_viewer_or_operator_key_cannot_list_create_or_delete(
    operator: Operator, receiver: Receiver
) -> None:
    """Webhooks are an admin's, reads too (docs/security.md, "Roles"): the URL's path and
    query often carry the receiver's own token, and a webhook sends the account's events out."""
    created = await create_webhook(operator, receiver.url + "?token=receiver-secret", ["device.offline"])
    for role in ("viewer", "operator"):
        key = await operator.call("POST", "/v1/api-keys", {"label": role, "role": role}, expect=201)
        holder = Operator(operator.session, operator.url, key["api_key"], operator.account_id)
        listed = await holder.call("GET", "/v1/webhooks", expect=403)
        shown = await holder.call("GET", f"/v1/webhooks/{created['id']}", expect=403)
        assert "receiver-secret" not in str(listed) + str(shown)
        await holder.call("GET", f"/v1/webhooks/{created['id']}/deliveries", expect=403)
        await holder.call(
            "POST", "/v1/webhooks", {"url": receiver.url, "events": ["device.offline"]}, expect=403
        )
        await holder.call("DELETE", f"/v1/webhooks/{created['id']}", expect=403)
    assert (await operator.call("GET", f"/v1/webhooks/{created['id']}"))["url"].endswith("receiver-secret")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": 5, "events": ["device.offline"]}, "url"),
        ({"url": "http://127.0.0.1:9/\u0000", "events": ["device.offline"]}, "url"),
        ({"url": "http://127.0.0.1:9/h\u00e9", "events": ["device.offline"]}, "url"),
        ({"url": "http://127.0.0.1:9/" + "a" * 3000, "events": ["device.offline"]}, "url"),
        ({"url": "gopher://127.0.0.1:9/", "events": ["device.offline"]}, "url"),
        ({"url": "http://127.0.0.1:9/", "events": []}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": "device.offline"}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": ["device.exploded"]}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": [None]}, "events"),
        ({"url": "http://127.0.0.1:9/", "events": ["device.offline"], "secret": "mine"}, "secret"),
        ({"events": ["device.offline"]}, "url"),
        ({"url": "http://no-such-host.invalid/", "events": ["device.offline"]}, "url"),
    ],
)
async def test_bad_webhook_input_is_refused_naming_the_field(
    operator: Operator, body: dict[str, Any], field: str
) -> None:
    answer = await operator.call("POST", "/v1/webhooks", body, expect=400)
    assert (answer["error"], answer["field"]) == ("invalid_input", field)
    assert (await operator.call("GET", "/v1/webhooks", expect=200)) == {"webhooks": []}


async def test_a_body_that_is_not_an_object_is_refused(operator: Operator) -> None:
    for body in ([], "x", 1, None):
        answer = await operator.call("POST", "/v1/webhooks", body, expect=400)
        assert answer["error"] == "invalid_input"


async def test_an_account_has_at_most_20_webhooks(operator: Operator, receiver: Receiver) -> None:
    for _ in range(20):
        await create_webhook(operator, receiver.url, ["device.offline"])
    answer = await operator.call(
        "POST", "/v1/webhooks", {"url": receiver.url, "events": ["device.offline"]}, expect=409
    )
    assert answer["rule"] == "max_webhooks=20"


async def test_private_addresses_are_refused_where_the_setting_is_off(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    public_only = await system.add_instance("operator", {"FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS": "false"})
    guarded = Operator(session, public_only.url, operator.api_key, operator.account_id)
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://localhost:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        "http://[fec0::1]/hook",  # IPv6 site-local: deprecated, still routed in some networks
    ):
        answer = await guarded.call(
            "POST", "/v1/webhooks", {"url": url, "events": ["device.offline"]}, expect=400
        )
        assert (answer["field"], answer["rule"]) == ("url", "public-address"), url
    # An internal name and one that does not exist get one answer: no map of internal names.
    internal, unknown = [
        await guarded.call(
            "POST", "/v1/webhooks", {"url": f"http://{host}/hook", "events": ["device.offline"]}, expect=400
        )
        for host in ("localhost", "no-such-host.invalid")
    ]
    assert {k: str(v).replace("localhost", "HOST") for k, v in internal.items()} == {
        k: str(v).replace("no-such-host.invalid", "HOST") for k, v in unknown.items()
    }
    assert "127.0.0.1" not in internal["message"]
    assert (await guarded.call("GET", "/v1/webhooks", expect=200)) == {"webhooks": []}


# ------------------------------------------------------------------ disabling


async def _disabled(operator: Operator, webhook_id: str, within_s: float = 60) -> dict[str, Any]:
    for _ in range(int(within_s / 0.1)):
        shown: dict[str, Any] = await operator.call("GET", f"/v1/webhooks/{webhook_id}", expect=200)
        if not shown["enabled"]:
            return shown
        await asyncio.sleep(0.1)
    raise AssertionError(f"webhook {webhook_id} not disabled within {within_s} s")


async def test_an_endpoint_answering_410_is_disabled_at_once_and_enabled_again(
    system: System, session: aiohttp.ClientSession, operator: Operator, receiver: Receiver
) -> None:
    async def gone(_: Request) -> int:
        return 410

    receiver.answer = gone
    webhook = await create_webhook(operator, receiver.url, ["device.registered"])
    code = (await operator.product())["bulk_identification_code"]
    await boot(session, system, code, 1)
    shown = await _disabled(operator, webhook["id"])
    assert "410 Gone" in shown["disabled_reason"] and shown["disabled_at"] is not None
    [delivery] = (await operator.call("GET", f"/v1/webhooks/{webhook['id']}/deliveries", expect=200))[
        "deliveries"
    ]
    assert delivery["status"] == "failed" and delivery["attempt_log"][-1]["status_code"] == 410
    # While disabled, events are not queued for it: a second webhook of the account, which
    # gets the same event in the same transaction, shows when it would have been.
    witness = await Receiver().start()
    try:
        await create_webhook(operator, witness.url, ["device.registered"])
        [device] = await boot(session, system, code, 1)
        await witness.wait_for(
            lambda: any(r.device_id == device for r in witness.accepted), 60, "the witness"
        )
    finally:
        await witness.stop()
    page = await operator.call("GET", f"/v1/webhooks/{webhook['id']}/deliveries", expect=200)
    assert [d["id"] for d in page["deliveries"]] == [delivery["id"]]
    # The operator enables it again (the command calls POST /v1/webhooks/{id}/enable): what
    # happens from now on is delivered.
    from tests.e2e.test_cli import fleetreg_json

    enabled = await fleetreg_json(operator, system, "webhooks", "enable", webhook["id"])
    assert (enabled["enabled"], enabled["disabled_at"], enabled["disabled_reason"]) == (True, None, None)
    receiver.answer = accept
    [device] = await boot(session, system, code, 1)
    await receiver.wait_for(
        lambda: any(r.device_id == device for r in receiver.accepted), 60, "after enabling"
    )
    events = await operator.call("GET", f"/v1/audit-events?target_id={webhook['id']}", expect=200)
    assert "webhook.enabled" in [e["action"] for e in events["audit_events"]]


async def test_an_endpoint_failing_for_the_whole_period_is_disabled(
    system: System, session: aiohttp.ClientSession, operator: Operator, receiver: Receiver
) -> None:
    # A notifier of its own whose period is 2 s (5 days by default); the system's first
    # notifier (5 days) may take some attempts: the disabling waits for this one's.
    short = await system.add_instance("notifier", {"FLEETREG_WEBHOOK_DISABLE_AFTER_SECONDS": "2"})
    try:

        async def broken(_: Request) -> int:
            return 500

        receiver.answer = broken
        webhook = await create_webhook(operator, receiver.url, ["device.registered"])
        code = (await operator.product())["bulk_identification_code"]

        async def keep_failing() -> None:
            # A device every half second, so attempts go on past the 2 s period whichever
            # notifier claims them: one device's retries could all go to the first notifier.
            for _ in range(120):
                await boot(session, system, code, 1)
                await asyncio.sleep(0.5)

        feeder = asyncio.create_task(keep_failing())
        try:
            shown = await _disabled(operator, webhook["id"])
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
    finally:
        short.stop()
    assert "every attempt failed since" in shown["disabled_reason"], shown
    assert shown["failing_since"] is not None
    assert len(receiver.arrived) > 1  # a 500 is retried: only its persistence disables
    # Every delivery ends failed: those pending at the disable at once, one queued by a
    # batch that committed just after it at the next sweep (0.5 s here).
    for _ in range(100):
        page = await operator.call("GET", f"/v1/webhooks/{webhook['id']}/deliveries", expect=200)
        if page["deliveries"] and {d["status"] for d in page["deliveries"]} == {"failed"}:
            break
        await asyncio.sleep(0.1)
    assert page["deliveries"] and {d["status"] for d in page["deliveries"]} == {"failed"}, page


# ------------------------------------------------------------------ the command


async def test_the_webhooks_command_creates_lists_shows_deliveries_and_deletes(
    system: System, session: aiohttp.ClientSession, operator: Operator, receiver: Receiver
) -> None:
    from tests.e2e.test_cli import fleetreg, fleetreg_json

    created = await fleetreg_json(
        operator, system, "webhooks", "create", "--url", receiver.url, "--event", "device.registered"
    )
    assert created["secret"].startswith("whsec_") and created["events"] == ["device.registered"]
    code, table, _ = await fleetreg(operator, system, "webhooks", "list")
    assert code == 0 and created["id"] in table and receiver.url in table and created["secret"] not in table

    [device] = await boot(session, system, (await operator.product())["bulk_identification_code"], 1)
    await receiver.wait_for(lambda: bool(receiver.accepted), 60, "the device's event")
    deliveries = await fleetreg_json(operator, system, "webhooks", "deliveries", created["id"])
    [delivery] = deliveries["deliveries"]
    assert (delivery["event_type"], delivery["status"]) == ("device.registered", "delivered")
    code, table, _ = await fleetreg(operator, system, "webhooks", "deliveries", created["id"])
    assert code == 0 and "device.registered" in table and "delivered" in table and "204" in table
    assert receiver.accepted[0].payload["data"]["device_id"] == device

    code, _, err = await fleetreg(
        operator, system, "webhooks", "create", "--url", "ftp://x/", "--event", "device.offline"
    )
    assert code == 1 and err.count("\n") == 1 and "http:// or https://" in err
    code, _, err = await fleetreg(operator, system, "webhooks", "delete", "not-an-id")
    assert code == 2 and "not an ID" in err  # a usage error, before any call
    # Deleting without a terminal to confirm on (a script), and without --yes: refused.
    code, _, err = await fleetreg(operator, system, "webhooks", "delete", created["id"])
    assert code == 1 and "--yes" in err
    assert [w["id"] for w in (await fleetreg_json(operator, system, "webhooks", "list"))["webhooks"]] == [
        created["id"]
    ]
    assert (await fleetreg_json(operator, system, "webhooks", "delete", created["id"], "--yes")) == {
        "deleted": created["id"]
    }
    assert (await fleetreg_json(operator, system, "webhooks", "list")) == {"webhooks": []}
