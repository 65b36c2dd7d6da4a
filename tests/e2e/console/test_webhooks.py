"""The console's webhook pages in a real browser: create (the signing secret shown once),
recent deliveries, delete with a confirmation, bad input, account scoping and read-only
sessions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from playwright.async_api import expect

from tests.e2e.console.conftest import ARTIFACTS, Console, NewConsole
from tests.support.api import Operator, register
from tests.support.system import System
from tests.support.webhooks import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver().start()
    yield started
    await started.stop()


async def test_create_see_the_secret_once_see_deliveries_and_delete(
    console: Console, receiver: Receiver, session: aiohttp.ClientSession, system: System
) -> None:
    page = console.page
    await console.open("/console/webhooks")
    await expect(page.get_by_text("No webhooks yet.")).to_be_visible()
    await console.check_accessibility()
    await page.get_by_label("Endpoint URL").fill(receiver.url)
    await page.get_by_label("device.registered").check()
    await page.get_by_role("button", name="Create webhook").click()

    await expect(page.get_by_role("status")).to_contain_text(f"Webhook to {receiver.url} created.")
    secret_box = page.locator("#webhook-secret")
    await expect(secret_box).to_be_visible()
    secret = (await secret_box.inner_text()).strip()
    assert secret.startswith("whsec_")
    await expect(page.get_by_text("it is shown this once and can never be shown again")).to_be_visible()
    await expect(page.get_by_role("button", name="Copy")).to_be_visible()
    await console.check_accessibility()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "webhook-secret-shown-once.png"), full_page=True)
    listed = await console.operator.call("GET", "/v1/webhooks", expect=200)
    assert [(w["url"], w["events"]) for w in listed["webhooks"]] == [(receiver.url, ["device.registered"])]
    webhook_id = listed["webhooks"][0]["id"]
    assert page.url.endswith(f"/console/webhooks/{webhook_id}")

    await page.reload()  # shown once: gone on reload
    await expect(page.get_by_role("heading", name=f"Webhook to {receiver.url}")).to_be_visible()
    await expect(page.locator("#webhook-secret")).to_have_count(0)
    assert secret not in await page.content()

    # The secret shown is the one deliveries are signed with; the delivery is listed.
    code = (await console.operator.product())["bulk_identification_code"]
    answer = await register(
        session, system.device_url, code, f"wh{uuid.uuid4().hex[:8]}", cpu_id="c", mac="m"
    )
    assert answer.status == 200, answer.body
    await receiver.wait_for(lambda: len(receiver.accepted) >= 1, 60, "the device.registered delivery")
    receiver.verify_all(secret)
    for _ in range(60):  # the notifier records the delivery just after the receiver's answer
        await page.reload()
        if await page.get_by_text("delivered", exact=True).count():
            break
        await asyncio.sleep(0.25)
    row = page.locator("tbody tr").first
    await expect(row).to_contain_text("device.registered")
    await expect(row).to_contain_text("delivered")
    await expect(row).to_contain_text("204")
    await expect(row).to_contain_text(" ms")

    await console.open("/console/webhooks")
    await expect(page.get_by_role("link", name=receiver.url, exact=True)).to_be_visible()
    assert secret not in await page.content()
    await page.get_by_role("link", name=f"Delete the webhook to {receiver.url}").click()
    await expect(page.get_by_role("heading", name=f"Delete the webhook to {receiver.url}?")).to_be_visible()
    await console.check_accessibility()
    await page.get_by_role("button", name="Delete the webhook").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Webhook to {receiver.url} deleted.")
    await expect(page.get_by_text("No webhooks yet.")).to_be_visible()
    assert (await console.operator.call("GET", "/v1/webhooks", expect=200))["webhooks"] == []


async def test_bad_webhook_input_is_a_flashed_message(console: Console) -> None:
    page = console.page
    await console.open("/console/webhooks")
    csrf = await console.csrf()
    for form, words in [
        ({"url": "http://127.0.0.1:9/x"}, "choose at least one event"),
        (
            {"url": "ftp://example.com/x", "events": "device.registered"},
            "url must start with http:// or https://",
        ),
        ({"url": "", "events": "device.registered"}, "url must be a non-empty string"),
        ({"url": "http://127.0.0.1:9/x", "events": "device.exploded"}, "events: each must be one of"),
        (
            {"url": "http://127.0.0.1:9/\u00e9\x00", "events": "device.registered"},
            "url must be printable ASCII",
        ),
        ({"url": "http://127.0.0.1:9/" + "a" * 5000, "events": "device.registered"}, "longer than 2048"),
    ]:
        answer = await page.context.request.post(
            console.url + "/console/webhooks",
            form={"csrf_token": csrf, **form},
            headers={"Referer": console.url + "/console/webhooks"},
        )
        # the 303 back to the list, which shows the refusal once
        assert answer.status == 200 and answer.url.endswith("/console/webhooks"), form
        await page.set_content(await answer.text())
        await expect(page.locator(".flash.error")).to_contain_text(words)
    assert (await console.operator.call("GET", "/v1/webhooks", expect=200))["webhooks"] == []


async def test_another_accounts_webhook_is_not_found(console: Console, other_operator: Operator) -> None:
    theirs = await other_operator.call(
        "POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/theirs", "events": ["device.offline"]}, expect=201
    )
    page = console.page
    for path in (f"/console/webhooks/{theirs['id']}", f"/console/webhooks/{theirs['id']}/delete"):
        answer = await page.goto(console.url + path)
        assert answer is not None and answer.status == 404, path
        await expect(page.locator("main")).not_to_contain_text("/theirs")
    await console.check_accessibility()
    await console.open("/console/webhooks")
    await expect(page.get_by_text("No webhooks yet.")).to_be_visible()
    refused = await page.context.request.post(
        f"{console.url}/console/webhooks/{theirs['id']}/delete", form={"csrf_token": await console.csrf()}
    )
    assert refused.status == 404
    still = await other_operator.call("GET", "/v1/webhooks", expect=200)
    assert [w["id"] for w in still["webhooks"]] == [theirs["id"]]


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_below_admin_a_session_sees_no_webhook_and_may_not_change_one(
    new_console: NewConsole, operator: Operator, role: str
) -> None:
    """Webhooks are an admin's, every page and form (docs/security.md, "Roles"), as the
    API's webhook routes are: their URLs often carry the receiver's token."""
    created = await operator.call(
        "POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/ours", "events": ["device.offline"]}, expect=201
    )
    key = await operator.call("POST", "/v1/api-keys", {"label": role, "role": role}, expect=201)
    console = await new_console(operator)
    await console.sign_in(key["api_key"])
    page = console.page

    await console.open("/console/")
    await expect(page.get_by_role("link", name="Webhooks")).to_have_count(0)
    for path in (
        "/console/webhooks",
        f"/console/webhooks/{created['id']}",
        f"/console/webhooks/{created['id']}/delete",
    ):
        answer = await page.goto(console.url + path)
        assert answer is not None and answer.status == 403, path
        assert "127.0.0.1:9" not in await page.content()
        assert created["secret"] not in await page.content()
    await console.open("/console/")
    await console.check_accessibility()

    csrf = await console.csrf()
    refused = await page.context.request.post(
        console.url + "/console/webhooks",
        form={"csrf_token": csrf, "url": "http://127.0.0.1:9/x", "events": "device.offline"},
    )
    assert refused.status == 403
    for action in ("delete", "enable"):
        refused = await page.context.request.post(
            f"{console.url}/console/webhooks/{created['id']}/{action}", form={"csrf_token": csrf}
        )
        assert refused.status == 403, action
    listed = await operator.call("GET", "/v1/webhooks", expect=200)
    assert [w["id"] for w in listed["webhooks"]] == [created["id"]]


async def test_a_disabled_webhook_says_why_and_is_enabled_again(
    console: Console, receiver: Receiver, session: aiohttp.ClientSession, system: System
) -> None:
    async def gone(_: object) -> int:
        return 410

    receiver.answer = gone
    created = await console.operator.call(
        "POST", "/v1/webhooks", {"url": receiver.url, "events": ["device.registered"]}, expect=201
    )
    code = (await console.operator.product())["bulk_identification_code"]
    answer = await register(
        session, system.device_url, code, f"wh{uuid.uuid4().hex[:8]}", cpu_id="c", mac="m"
    )
    assert answer.status == 200, answer.body
    for _ in range(240):  # the notifier disables it once the 410 is recorded
        shown = await console.operator.call("GET", f"/v1/webhooks/{created['id']}", expect=200)
        if not shown["enabled"]:
            break
        await asyncio.sleep(0.25)
    page = console.page
    await console.open("/console/webhooks")
    await expect(page.locator("tbody tr").first).to_contain_text("disabled")
    await console.open(f"/console/webhooks/{created['id']}")
    box = page.locator("#webhook-disabled-box")
    await expect(box).to_contain_text("the endpoint answered 410 Gone")
    await console.check_accessibility()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "webhook-disabled.png"), full_page=True)
    await page.get_by_role("button", name="Enable it again").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Webhook to {receiver.url} enabled")
    await expect(page.locator("#webhook-disabled-box")).to_have_count(0)
    assert (await console.operator.call("GET", f"/v1/webhooks/{created['id']}", expect=200))["enabled"]
