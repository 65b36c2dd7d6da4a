"""Products and auto registrations in the console: create, lock, reveal the code, services,
pause/resume/rotate/quota, and what a read-only session, another account and bad input get."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

from playwright.async_api import expect

from tests.e2e.console.conftest import Console, NewConsole
from tests.support.api import Operator


def flash(console: Console) -> Any:
    return console.page.locator(".flash")


def id_in(url: str, kind: str) -> str:
    found = re.search(rf"/console/{kind}/([0-9a-f-]{{36}})", url)
    assert found, url
    return found.group(1)


async def create_product(console: Console, name: str, rows: list[tuple[str, str, str]]) -> str:
    """Fill in and send the "New product" form; the new product's ID."""
    page = console.page
    await console.open("/console/products")
    await page.get_by_label("Name", exact=True).fill(name)
    for row, (service, kind, port) in enumerate(rows, start=1):
        await page.get_by_label(f"Service {row} name").fill(service)
        await page.get_by_label(f"Service {row} type").select_option(kind)
        await page.get_by_label(f"Service {row} port").fill(port)
    await page.get_by_role("button", name="Create product").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(name)
    return id_in(page.url, "products")


def services_of(product: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in product["services"]}


async def test_create_a_product_lock_it_reveal_its_code_and_switch_services(
    console: Console, operator: Operator
) -> None:
    page = console.page
    product_id = await create_product(console, "Gateway X1", [("ssh", "ssh", "22"), ("admin", "web", "8080")])
    await expect(flash(console)).to_contain_text("Product “Gateway X1” created")
    made = await operator.call("GET", f"/v1/products/{product_id}", expect=200)
    assert {n: (s["type"], s["port"]) for n, s in services_of(made).items()} == {
        "bulk": ("rmt3", 65535),
        "ssh": ("ssh", 22),
        "admin": ("web", 8080),
    }
    await console.check_accessibility()

    # While new: disable a service, move one, add one.
    await page.get_by_role("button", name="Disable ssh").click()
    await expect(flash(console)).to_have_text("Service “ssh” disabled.")
    await page.get_by_label("Port of admin").fill("8443")
    await page.locator("form", has=page.get_by_label("Port of admin")).get_by_role("button").click()
    await expect(flash(console)).to_have_text("Service “admin” now uses port 8443.")
    await page.get_by_label("Type").select_option("vnc")
    await page.get_by_label("Port", exact=True).fill("5900")
    await page.get_by_role("button", name="Add service").click()
    await expect(page.get_by_role("rowheader", name="vnc")).to_be_visible()
    now = services_of(await operator.call("GET", f"/v1/products/{product_id}", expect=200))
    assert now["ssh"]["enabled"] is False and now["admin"]["port"] == 8443 and now["vnc"]["port"] == 5900

    # Lock: the checkbox is the confirmation; without it the server refuses too.
    refused = await page.context.request.post(
        console.url + f"/console/products/{product_id}/lock", form={"csrf_token": await console.csrf()}
    )
    assert refused.ok and "I understand the services can no longer change" in await refused.text()
    assert (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["status"] == "new"
    await console.open(f"/console/products/{product_id}")
    await page.get_by_label("I understand the services can no longer change").check()
    await page.get_by_role("button", name="Lock product").click()
    await expect(flash(console)).to_contain_text("locked")
    locked = await operator.call("GET", f"/v1/products/{product_id}", expect=200)
    code = locked["bulk_identification_code"]
    assert locked["status"] == "locked" and code
    assert code not in await page.content()  # hidden until revealed
    await expect(page.get_by_text("a service added now starts disabled")).to_be_visible()
    await console.check_accessibility()

    await page.get_by_role("button", name="Reveal the code").click()
    await expect(page.locator("#bulk-code")).to_have_text(code)
    await expect(page.get_by_role("alert")).to_contain_text("anyone holding it can register devices")
    await expect(page.get_by_role("button", name="Copy code")).to_have_attribute("data-copy", "#bulk-code")
    assert code not in page.url
    await console.check_accessibility()

    # A locked product's services are still enabled, disabled and moved.
    await page.get_by_role("button", name="Enable ssh").click()
    await expect(flash(console)).to_have_text("Service “ssh” enabled.")
    await page.get_by_role("button", name="Disable admin").click()
    await expect(flash(console)).to_have_text("Service “admin” disabled.")
    assert code not in await page.content()  # hidden again after the next action
    now = services_of(await operator.call("GET", f"/v1/products/{product_id}", expect=200))
    assert now["ssh"]["enabled"] is True and now["admin"]["enabled"] is False

    await console.open("/console/products")
    await expect(page.get_by_role("link", name="Gateway X1")).to_be_visible()
    assert code not in await page.content()
    await console.check_accessibility()


async def test_delete_an_unused_product_and_see_why_a_used_one_is_refused(
    console: Console, operator: Operator
) -> None:
    page = console.page
    used = await operator.product()  # locked, with an auto registration
    await console.open(f"/console/products/{used['product_id']}")
    await page.get_by_role("button", name="Delete product").click()
    await expect(flash(console)).to_contain_text("is in use by 1 auto registration")
    await operator.call("GET", f"/v1/products/{used['product_id']}", expect=200)

    unused = await create_product(console, "Spare", [])
    await page.get_by_role("button", name="Delete product").click()
    await expect(flash(console)).to_have_text("Product “Spare” deleted.")
    await operator.call("GET", f"/v1/products/{unused}", expect=404)


async def test_auto_registration_create_pause_resume_quota_and_rotate(
    console: Console, operator: Operator
) -> None:
    page = console.page
    product = await operator.call(
        "POST", "/v1/products", {"name": "Sensor", "services": [{"type": "ssh", "port": 22}]}, expect=201
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)

    await console.open("/console/auto-registrations")
    await console.check_accessibility()
    await page.get_by_label("Product", exact=True).select_option(label="Sensor")
    await page.get_by_label("Device quota").fill("10")
    await page.get_by_role("button", name="Create auto registration").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Auto registration of Sensor")
    registration_id = id_in(page.url, "auto-registrations")
    shown = await operator.call("GET", f"/v1/auto-registrations/{registration_id}", expect=200)
    assert shown["status"] == "active" and shown["max_devices"] == 10
    old_code = shown["bulk_identification_code"]
    assert old_code not in await page.content()
    await console.check_accessibility()

    await page.get_by_role("button", name="Pause").click()
    await expect(flash(console)).to_contain_text("Paused")
    assert (await operator.call("GET", f"/v1/auto-registrations/{registration_id}"))["status"] == "paused"
    await page.get_by_role("button", name="Resume").click()
    await expect(flash(console)).to_contain_text("Resumed")
    assert (await operator.call("GET", f"/v1/auto-registrations/{registration_id}"))["status"] == "active"

    await page.get_by_label("Maximum devices").fill("5")
    await page.get_by_role("button", name="Save quota").click()
    await expect(flash(console)).to_have_text("Quota set to 5 devices.")
    assert (await operator.call("GET", f"/v1/auto-registrations/{registration_id}"))["max_devices"] == 5
    await page.get_by_label("Maximum devices").fill("many")
    await page.get_by_role("button", name="Save quota").click()
    await expect(flash(console)).to_contain_text("max_devices must be a whole number")
    await page.get_by_label("Maximum devices").fill("")
    await page.get_by_role("button", name="Save quota").click()
    await expect(flash(console)).to_have_text("Quota removed: no device limit.")
    assert (await operator.call("GET", f"/v1/auto-registrations/{registration_id}"))["max_devices"] is None

    await page.get_by_label("I understand the old code stops working").check()
    await page.get_by_role("button", name="Rotate the code").click()
    await expect(flash(console)).to_contain_text("the old code no longer registers devices")
    new_code = (await operator.call("GET", f"/v1/auto-registrations/{registration_id}"))[
        "bulk_identification_code"
    ]
    assert new_code and new_code != old_code
    assert (await operator.call("GET", f"/v1/products/{product['id']}"))[
        "bulk_identification_code"
    ] == new_code
    assert new_code not in await page.content()
    await page.get_by_role("button", name="Reveal the code").click()
    await expect(page.locator("#bulk-code")).to_have_text(new_code)
    await console.check_accessibility()

    # The list: status and quota shown, the code hidden, revealed by its own form.
    await console.open("/console/auto-registrations")
    row = page.get_by_role("row", name=re.compile("Sensor"))
    await expect(row).to_contain_text("active")
    assert new_code not in await page.content()
    await row.get_by_role("button", name="Reveal").click()
    await expect(page.locator("#bulk-code")).to_have_text(new_code)
    await console.open("/console/auto-registrations")
    await console.check_accessibility()


async def test_a_read_only_session_sees_no_code_and_may_not_reveal_one(
    new_console: NewConsole, operator: Operator
) -> None:
    registration = await operator.product()
    product_id, registration_id = registration["product_id"], registration["id"]
    code = registration["bulk_identification_code"]
    ro = await operator.call("POST", "/v1/api-keys", {"label": "ro", "read_only": True}, expect=201)
    console = await new_console(operator)
    await console.sign_in(ro["api_key"])
    page = console.page

    for path in (
        "/console/products",
        f"/console/products/{product_id}",
        "/console/auto-registrations",
        f"/console/auto-registrations/{registration_id}",
    ):
        await console.open(path)
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
        assert code not in await page.content(), path
        await expect(page.get_by_role("button", name=re.compile("Reveal"))).to_have_count(0)
        await expect(
            page.get_by_role("button", name=re.compile("Lock|Delete|Pause|Rotate|Create"))
        ).to_have_count(0)
    await console.check_accessibility()

    request = page.context.request
    csrf = await console.csrf()
    for path in (
        f"/console/products/{product_id}/reveal",
        f"/console/auto-registrations/{registration_id}/reveal",
        f"/console/auto-registrations/{registration_id}/pause",
        f"/console/products/{product_id}/delete",
        "/console/products",
    ):
        refused = await request.post(console.url + path, form={"csrf_token": csrf, "name": "x"})
        assert refused.status == 403, path
        assert code not in await refused.text()
    assert (await operator.call("GET", f"/v1/auto-registrations/{registration_id}"))["status"] == "active"
    await operator.call("GET", f"/v1/products/{product_id}", expect=200)


async def test_another_accounts_ids_give_the_404_page(console: Console, other_operator: Operator) -> None:
    theirs = await other_operator.product()
    page = console.page
    csrf = await console.csrf()  # the error page has no form: our session's token, taken first
    for path in (
        f"/console/products/{theirs['product_id']}",
        f"/console/auto-registrations/{theirs['id']}",
        "/console/products/not-an-id",
        "/console/auto-registrations/00000000-0000-0000-0000-000000000000",
    ):
        response = await page.goto(console.url + path)
        assert response is not None and response.status == 404, path
        await expect(page.get_by_role("heading", level=1)).to_contain_text("404")
    await console.check_accessibility()

    # Their code is not revealed to a form posted with our own session either.
    for path in (
        f"/console/products/{theirs['product_id']}/reveal",
        f"/console/auto-registrations/{theirs['id']}/reveal",
        f"/console/auto-registrations/{theirs['id']}/rotate-code",
    ):
        answer = await page.context.request.post(
            console.url + path, form={"csrf_token": csrf, "confirm": "yes"}
        )
        assert answer.status < 500
        assert theirs["bulk_identification_code"] not in await answer.text()
    after = await other_operator.call("GET", f"/v1/auto-registrations/{theirs['id']}", expect=200)
    assert after["bulk_identification_code"] == theirs["bulk_identification_code"]  # not rotated


async def test_bad_product_forms_get_a_readable_message_never_a_500(
    console: Console, operator: Operator
) -> None:
    page = console.page
    await console.open("/console/products")
    name = page.get_by_label("Name", exact=True)
    await name.evaluate("input => input.removeAttribute('maxlength')")  # what a forged form sends
    await name.fill("N" * 10_000)
    await page.get_by_role("button", name="Create product").click()
    await expect(flash(console)).to_contain_text("name is required: 1-100 printable ASCII characters")

    await name.fill("Router")
    await page.get_by_label("Service 1 type").select_option("ssh")
    await page.get_by_label("Service 1 port").fill("abc")
    await page.get_by_role("button", name="Create product").click()
    await expect(flash(console)).to_contain_text("port must be a TCP port 1-65535")
    assert (await operator.call("GET", "/v1/products", expect=200))["products"] == []

    # Forged forms: unicode, NUL, doubled fields, a huge port, no type, a foreign product ID.
    request = page.context.request
    csrf = await console.csrf()
    for form in (
        {"name": "Gerät ✓"},
        {"name": "a\x00b"},
        {"name": "ok", "service_0_type": "ssh", "service_0_port": "9" * 5000},
        {"name": "ok", "service_0_port": "22"},
        {"name": "ok", "service_0_type": "rmt3", "service_0_port": "22"},
        {"name": "ok", "service_0_type": "ssh", "service_0_port": "22", "service_0_name": "../x"},
    ):
        answer = await request.post(
            console.url + "/console/products",
            form={"csrf_token": csrf, **form},
            headers={"Referer": console.url + "/console/products"},
        )
        assert answer.status == 200, form  # back on the list, with the reason flashed
        assert 'class="flash error"' in await answer.text(), form
    for path, form in (
        ("/console/products/00000000-0000-0000-0000-000000000000/services/change", {"service": "ssh"}),
        ("/console/auto-registrations", {"product_id": "x" * 10_000}),
        ("/console/auto-registrations", {"product_id": "00000000-0000-0000-0000-000000000000"}),
    ):
        answer = await request.post(console.url + path, form={"csrf_token": csrf, **form})
        assert answer.status < 500, path
    assert (await operator.call("GET", "/v1/products", expect=200))["products"] == []


async def test_a_derived_key_auto_registration_shows_its_group_keys_once_and_rotates_one(
    console: Console, operator: Operator
) -> None:
    page = console.page
    product = await operator.call(
        "POST", "/v1/products", {"name": "Keyed", "services": [{"type": "ssh", "port": 22}]}, expect=201
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    await console.open("/console/auto-registrations")
    await page.get_by_label("Product", exact=True).select_option(label="Keyed")
    await page.get_by_label("Attestation").select_option("derived_key")
    await page.get_by_role("button", name="Create auto registration").click()
    await expect(page.get_by_role("heading", name="Group keys: shown once")).to_be_visible()
    primary = (await page.locator("[data-group-key=primary]").inner_text()).strip()
    secondary = (await page.locator("[data-group-key=secondary]").inner_text()).strip()
    await console.check_accessibility()
    registration = next(
        r
        for r in (await operator.call("GET", "/v1/auto-registrations"))["auto_registrations"]
        if r["product_id"] == product["id"]
    )
    assert registration["attestation"] == "derived_key"
    derived = await operator.call(
        "POST", f"/v1/auto-registrations/{registration['id']}/derive-key", {"hardware_id": "k1"}, expect=200
    )
    expected = base64.b64encode(hmac.digest(base64.b64decode(primary), b"k1", hashlib.sha256)).decode()
    assert derived["device_key"] == expected and secondary != primary

    # Its page afterwards never shows them; a rotation shows the new one once.
    await console.open(f"/console/auto-registrations/{registration['id']}")
    await expect(page.locator("dd", has_text="derived keys")).to_be_visible()
    assert primary not in await page.content() and secondary not in await page.content()
    await page.get_by_label("Key", exact=True).select_option("secondary")
    await page.get_by_label("I understand device keys of the old group key stop registering").check()
    await page.get_by_role("button", name="Rotate the key").click()
    await expect(flash(console)).to_contain_text("Group key rotated")
    rotated = (await page.locator("[data-group-key=secondary]").inner_text()).strip()
    assert rotated not in (primary, secondary) and await page.locator("[data-group-key=primary]").count() == 0
    await console.check_accessibility()
