"""The console's device pages in a real browser: search (filters, count, paging, sort),
the export link, a device's page with its decisions and audit trail, disable / enable /
reset, rename and move, account scoping, bad input and read-only sessions."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from pathlib import Path

import aiohttp
from playwright.async_api import Browser, Download, expect

from tests.e2e.console.conftest import Console, NewConsole
from tests.support.api import Operator, register
from tests.support.bulk import HEADER, bulk_product, publish_and_wait, upload
from tests.support.system import System


async def _bulk_devices(
    session: aiohttp.ClientSession, system: System, operator: Operator, hardware_ids: list[str]
) -> None:
    """Preregister ``hardware_ids`` through a bulk registration (the fast way to many devices)."""
    lines = [HEADER]
    for n, hardware_id in enumerate(hardware_ids):
        lines.append(f"key-{hardware_id},{hardware_id},Kiosk {n:02d},site-{n % 2},batch")
    product_id = await bulk_product(operator)
    status, created = await upload(
        session, system.bulk_url, operator, product_id, ("\r\n".join(lines) + "\r\n").encode()
    )
    assert status == 201, created
    await publish_and_wait(session, system.bulk_url, operator, created["id"])


async def _text(download: Download) -> str:
    return await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")


def _tag() -> str:
    return "t" + uuid.uuid4().hex[:6]


async def _shown_hardware_ids(console: Console) -> list[str]:
    return [t.strip() for t in await console.page.locator("tbody tr td:first-child").all_inner_texts()]


async def test_search_counts_pages_sorts_and_exports_only_the_accounts_devices(
    console: Console, session: aiohttp.ClientSession, system: System, other_operator: Operator
) -> None:
    tag = _tag()
    wanted = [f"{tag}a{n:02d}" for n in range(12)]
    await _bulk_devices(session, system, console.operator, [*wanted, *(f"{tag}b{n:02d}" for n in range(3))])
    # another account's devices with the same prefix: never in this account's console
    await _bulk_devices(session, system, other_operator, [f"{tag}a9{n}" for n in range(3)])

    await console.open("/console/devices")
    page = console.page
    await page.get_by_label("Hardware ID starts with").fill(f"{tag.upper()}A")  # case-insensitive
    await page.get_by_label("Sort by").select_option(label="Hardware ID")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#device-total")).to_have_text("12 devices")
    assert await _shown_hardware_ids(console) == wanted
    await console.check_accessibility()

    # descending, 5 a page (the page size is the API's limit parameter, in the URL)
    await page.get_by_label("Order").select_option("desc")
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("tbody tr").first).to_contain_text(wanted[-1])
    await page.goto(page.url + "&limit=5")
    seen: list[str] = []
    for expected_rows in (5, 5, 2):
        await expect(page.locator("tbody tr")).to_have_count(expected_rows)
        await expect(page.locator("#device-total")).to_have_text("12 devices")  # every page counts all
        seen.extend(await _shown_hardware_ids(console))
        if len(seen) < 12:
            await page.get_by_role("link", name="Next page").click()
    assert seen == wanted[::-1]
    await expect(page.get_by_role("link", name="Next page")).to_have_count(0)

    # the export link carries the same filters and sort: the file is the list
    await console.open(f"/console/devices?hardware_id_prefix={tag}a&sort=hardware_id")
    listed = await _shown_hardware_ids(console)
    assert listed == wanted
    async with page.expect_download() as downloading:
        await page.get_by_role("link", name="Export CSV").click()
    download = await downloading.value
    assert download.suggested_filename == "devices.csv"
    rows = list(csv.DictReader(io.StringIO(await _text(download), newline="")))
    assert [r["hardware_id"] for r in rows] == listed
    assert {r["category_a"] for r in rows} == {"site-0", "site-1"}
    async with page.expect_download() as downloading:
        await page.get_by_role("link", name="Export JSON lines").click()
    lines = (await _text(await downloading.value)).splitlines()
    assert len(lines) == 12


async def test_a_bad_filter_is_a_400_message_above_the_form(console: Console) -> None:
    page = console.page
    for query, words in [
        ("state=sleeping", "state must be one of"),
        ("hardware_id_prefix=%25%C3%A9", "hardware_id_prefix may hold only"),
        ("hardware_id_prefix=" + "a" * 300, "the limit is 128"),
        ("name_prefix=a%00b", "control characters"),
        ("registered_since=yesterday", "ISO 8601"),
        ("sort=name&after=not-a-cursor", "after is not a cursor"),
        ("colour=red", "unknown query parameter"),
        ("limit=-1", "limit must be"),
        ("state=online&state=disabled", "the parameter state is given twice"),
    ]:
        answer = await page.goto(f"{console.url}/console/devices?{query}")
        assert answer is not None and answer.status == 400, query
        await expect(page.get_by_role("alert")).to_contain_text(words)
        await expect(page.get_by_role("button", name="Search")).to_be_visible()
    await console.check_accessibility()
    answer = await page.goto(f"{console.url}/console/devices/export?format=xml")
    assert answer is not None and answer.status == 400


async def _booted_device(
    operator: Operator, session: aiohttp.ClientSession, system: System
) -> tuple[str, str, dict[str, str]]:
    """A device registered through an auto registration: (code, hardware ID, answer)."""
    code = (await operator.product())["bulk_identification_code"]
    hardware_id = _tag() + "dev"
    answer = await register(session, system.device_url, code, hardware_id, cpu_id="c1", mac="m1")
    assert answer.status == 200, answer.body
    return code, hardware_id, answer.body


async def test_disable_then_enable_a_device_from_its_page(
    console: Console, session: aiohttp.ClientSession, system: System
) -> None:
    operator = console.operator
    code, hardware_id, booted = await _booted_device(operator, session, system)
    device_id = booted["device_id"]
    page = console.page

    await console.open(f"/console/devices?hardware_id={hardware_id}")
    await page.get_by_role("link", name=hardware_id).click()
    await expect(page.get_by_role("heading", name=f"Device {hardware_id}")).to_be_visible()
    decisions = page.get_by_role("table").first
    await expect(decisions).to_contain_text("new")  # its registration decision
    await console.check_accessibility()

    await page.get_by_role("button", name="Disable").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Device {hardware_id} disabled.")
    await expect(page.locator("#device-state")).to_have_text("disabled")
    assert (await operator.call("GET", f"/v1/devices/{device_id}", expect=200))["disabled"] is True
    refused = await register(
        session, system.device_url, code, hardware_id, cpu_id="c1", mac="m1", secret=booted["device_secret"]
    )
    assert (refused.status, refused.body["reason"]) == (403, "device disabled by the operator")

    await page.get_by_role("button", name="Enable").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Device {hardware_id} enabled.")
    shown = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
    assert shown["disabled"] is False and shown["state"] != "disabled"
    audit = page.locator("#device-audit tbody tr")
    await expect(audit).to_have_count(2)
    await expect(audit.nth(0)).to_contain_text("device.enabled")
    await expect(audit.nth(1)).to_contain_text("device.disabled")

    # reset: a confirmation page first (no JavaScript needed), then the reset
    await page.get_by_role("link", name="Reset…").click()
    await expect(page.get_by_role("heading", name=f"Reset device {hardware_id}?")).to_be_visible()
    await console.check_accessibility()
    await page.get_by_role("button", name="Reset the device").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Device {hardware_id} reset.")
    await expect(audit.nth(0)).to_contain_text("device.reset")
    history = (await operator.call("GET", f"/v1/devices/{device_id}", expect=200))["history"]
    assert history[-1]["kind"] == "reset"


async def test_rename_then_move_a_device_from_its_page(
    console: Console, session: aiohttp.ClientSession, system: System
) -> None:
    operator = console.operator
    _, hardware_id, booted = await _booted_device(operator, session, system)
    device_id = booted["device_id"]
    target = await operator.product([{"type": "web", "port": 80}])
    target_name = (await operator.call("GET", f"/v1/products/{target['product_id']}"))["name"]
    page = console.page
    await console.open(f"/console/devices/{device_id}")

    await page.get_by_label("New name").fill("bad name é")
    await page.get_by_role("button", name="Rename").click()
    await expect(page.get_by_role("status")).to_contain_text("name may hold only")
    await page.get_by_label("New name").fill("Lobby kiosk 3")
    await page.get_by_role("button", name="Rename").click()
    await expect(page.get_by_role("status")).to_contain_text(
        f"Device {hardware_id} renamed to Lobby kiosk 3."
    )
    await expect(page.get_by_label("New name")).to_have_value("Lobby kiosk 3")
    await expect(page.locator("#device-audit tbody tr").nth(0)).to_contain_text("device.renamed")

    # move: a confirmation page with the products it may go to, then the move
    await page.get_by_role("link", name="Move to another product…").click()
    await expect(
        page.get_by_role("heading", name=f"Move device {hardware_id} to another product?")
    ).to_be_visible()
    await console.check_accessibility()
    await page.get_by_label("Product", exact=True).select_option(target["product_id"])
    await page.get_by_role("button", name="Move the device").click()
    await expect(page.get_by_role("status")).to_contain_text(
        f"Device {hardware_id} moved to product {target_name}"
    )
    await expect(page.locator("#device-audit tbody tr").nth(0)).to_contain_text("device.moved")
    shown = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
    assert (shown["product_id"], shown["lifecycle"], shown["name"]) == (
        target["product_id"],
        "preregistered",
        "Lobby kiosk 3",
    )
    # Its own product is no longer among the choices; a forged post of it is refused with the reason.
    await console.open(f"/console/devices/{device_id}/move")
    await expect(page.locator(f'option[value="{target["product_id"]}"]')).to_have_count(0)
    refused = await page.context.request.post(
        f"{console.url}/console/devices/{device_id}/move",
        form={"csrf_token": await console.csrf(), "product_id": target["product_id"]},
        headers={"Referer": f"{console.url}/console/devices/{device_id}/move"},
    )
    # (back to the form, the reason flashed on it)
    assert refused.ok and "already in product" in await refused.text()


async def test_another_accounts_device_is_not_found(
    console: Console, session: aiohttp.ClientSession, system: System, other_operator: Operator
) -> None:
    _, hardware_id, theirs = await _booted_device(other_operator, session, system)
    page = console.page
    for path in (f"/console/devices/{theirs['device_id']}", f"/console/devices/{theirs['device_id']}/reset"):
        answer = await page.goto(console.url + path)
        assert answer is not None and answer.status == 404, path
        await expect(page.get_by_role("heading", name="404")).to_be_visible()
        await expect(page.locator("main")).not_to_contain_text(hardware_id)
    await console.check_accessibility()
    answer = await page.goto(console.url + "/console/devices/not-an-id")
    assert answer is not None and answer.status == 404

    await console.open("/console/devices")
    refused = await page.context.request.post(
        f"{console.url}/console/devices/{theirs['device_id']}/disable",
        form={"csrf_token": await console.csrf()},
    )
    assert refused.status == 404
    shown = await other_operator.call("GET", f"/v1/devices/{theirs['device_id']}", expect=200)
    assert shown["disabled"] is False
    await console.open(f"/console/devices?hardware_id={hardware_id}")
    await expect(page.locator("#device-total")).to_have_text("0 devices")


async def test_a_read_only_session_sees_no_buttons_and_cannot_change_a_device(
    new_console: NewConsole, operator: Operator, session: aiohttp.ClientSession, system: System
) -> None:
    _, hardware_id, booted = await _booted_device(operator, session, system)
    device_id = booted["device_id"]
    key = await operator.call("POST", "/v1/api-keys", {"label": "ro", "read_only": True}, expect=201)
    console = await new_console(operator)
    await console.sign_in(key["api_key"])
    page = console.page

    await console.open(f"/console/devices/{device_id}")
    await expect(page.get_by_role("heading", name=f"Device {hardware_id}")).to_be_visible()
    await expect(page.locator("main").get_by_role("button")).to_have_count(0)
    await expect(page.get_by_role("link", name="Reset…")).to_have_count(0)
    await console.check_accessibility()
    await expect(page.get_by_role("link", name="Move to another product…")).to_have_count(0)
    await expect(page.get_by_label("New name")).to_have_count(0)
    for action in ("disable", "enable", "reset", "move", "rename"):
        refused = await page.context.request.post(
            f"{console.url}/console/devices/{device_id}/{action}",
            form={"csrf_token": await console.csrf(), "name": "x", "product_id": device_id},
        )
        assert refused.status == 403, action
    for confirmation in ("reset", "move"):
        answer = await page.goto(f"{console.url}/console/devices/{device_id}/{confirmation}")
        assert answer is not None and answer.status == 403
    shown = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
    assert shown["disabled"] is False and shown["audit_events"] == []

    # a read-only session may still search and export
    await console.open(f"/console/devices?hardware_id={hardware_id}")
    await expect(page.locator("#device-total")).to_have_text("1 device")
    exported = await page.context.request.get(
        f"{console.url}/console/devices/export?hardware_id={hardware_id}"
    )
    assert exported.status == 200 and exported.headers["content-type"].startswith("text/csv")
    assert [r["id"] for r in csv.DictReader(io.StringIO(await exported.text(), newline=""))] == [device_id]


async def test_search_and_reset_work_without_javascript(
    browser: Browser, system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    _, hardware_id, booted = await _booted_device(operator, session, system)
    context = await browser.new_context(java_script_enabled=False)
    try:
        console = Console(await context.new_page(), system.operator_url, operator)
        await console.sign_in()
        page = console.page
        await console.open("/console/devices")
        await page.get_by_label("Hardware ID starts with").fill(hardware_id)
        await page.get_by_role("button", name="Search").click()
        await expect(page.locator("#device-total")).to_have_text("1 device")
        await page.get_by_role("link", name=hardware_id).click()
        await page.get_by_role("link", name="Reset…").click()
        await page.get_by_role("button", name="Reset the device").click()
        await expect(page.get_by_role("status")).to_contain_text(f"Device {hardware_id} reset.")
        shown = await operator.call("GET", f"/v1/devices/{booted['device_id']}", expect=200)
        assert shown["history"][-1]["kind"] == "reset"
    finally:
        await context.close()
