"""Bulk registrations in the console: upload (streamed through the operator service to the
real bulk API), a rejected file's every bad row and its CSV, publish with live progress,
cancel, and what a read-only session or another account may not do."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from services.operator.console.bulk_api import BulkApi, BulkApiUnreachable
from shared.domain.device_search import spreadsheet_safe
from tests.e2e.console.conftest import ARTIFACTS, Console, NewConsole
from tests.support.api import Operator
from tests.support.bulk import HEADER, bulk_call, bulk_product, csv_rows, csv_text, upload
from tests.support.system import LOGS, System

UUID = r"[0-9a-f-]{36}"


def bad_csv() -> str:
    """A file with several kinds of bad rows among good ones."""
    return (
        "\r\n".join(
            [
                HEADER,
                "key-a,aa0000000001,Good one,,",
                "key-b,aa0000000002,Twin 1,,",
                "key-c,aa0000000002,Twin 2,,",  # duplicate hardware ID (with the line above)
                ",aa0000000003,No key,,",  # missing registration key
                "key-d,aa0000000004,Too,many,columns,here,and more",  # bad column count
                "key-e,aa0000000005,=HYPERLINK(1),,",  # a formula as the device name
                "key-f,not a hardware id!,Bad ID,,",
                "key-g,aa0000000007,Good two,,",
            ]
        )
        + "\r\n"
    )


async def _upload_in_browser(console: Console, product_name: str, name: str, body: str) -> None:
    await console.open("/console/bulk-registrations")
    await console.page.get_by_label("Product").select_option(label=product_name)
    await console.page.get_by_label("CSV file").set_input_files(
        files=[{"name": name, "mimeType": "text/csv", "buffer": body.encode()}]
    )
    await console.page.get_by_role("button", name="Upload").click()


async def _named_product(operator: Operator) -> tuple[str, str]:
    product_id = await bulk_product(operator)
    product = await operator.call("GET", f"/v1/products/{product_id}", expect=200)
    return product_id, str(product["name"])


@pytest.fixture
async def no_js_console(browser: Browser, system: System, operator: Operator) -> AsyncIterator[Console]:
    """A signed-in console in a browser with JavaScript off: the plain form post."""
    context = await browser.new_context(java_script_enabled=False, viewport={"width": 1366, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(15_000)
    console = Console(page, system.operator_url, operator)
    await console.sign_in()
    yield console
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "test_bulk_no_js.png"), full_page=True)
    await context.close()


async def test_a_rejection_of_more_problems_than_listed_says_how_many_are_shown(
    console: Console, operator: Operator
) -> None:
    """The bulk API lists the first FLEETREG_BULK_MAX_REPORTED_ERRORS (1,000) problems
    and counts them all: the page shows the count and says the list is cut."""
    _, product_name = await _named_product(operator)
    body = HEADER + "\r\n" + "".join(f"k{i:08d},ab{i:06x},=x(),,\r\n" for i in range(1100))
    await _upload_in_browser(console, product_name, "many.csv", body)
    page = console.page
    await expect(page.locator("#bad-row-count")).to_have_text("1,100")
    await expect(page.locator(".warning-box")).to_contain_text("lists the first 1,000 of 1,100 problems")
    await expect(page.locator("#bad-rows tbody tr")).to_have_count(1000)


async def test_a_rejected_file_shows_every_bad_row_and_downloads_them_as_csv(
    console: Console, operator: Operator, system: System, session: aiohttp.ClientSession
) -> None:
    product_id, product_name = await _named_product(operator)
    # What the bulk API itself reports for this file: the console must show all of it.
    status, reported = await upload(session, system.bulk_url, operator, product_id, bad_csv().encode())
    assert status == 422, reported
    expected = [(str(e["line"]), e["column"], e["value"], e["reason"]) for e in reported["errors"]]
    assert reported["errors_total"] == len(expected) >= 5

    await _upload_in_browser(console, product_name, "batch-7.csv", bad_csv())

    page = console.page
    await expect(page.get_by_role("heading", name="Rejected: batch-7.csv")).to_be_visible()
    await expect(page.locator("#bad-row-count")).to_have_text(str(len(expected)))
    rows = page.locator("#bad-rows tbody tr")
    await expect(rows).to_have_count(len(expected))
    shown = [tuple(await row.locator("td").all_inner_texts()) for row in await rows.all()]
    assert [
        (line, "" if column == "—" else column, value, reason) for line, column, value, reason in shown
    ] == [(line, column, value.strip(), reason) for line, column, value, reason in expected]
    reasons = " ".join(e[3] for e in expected).lower()
    assert "duplicate" in reasons or "twice" in reasons or "more than once" in reasons
    assert {"4", "5", "6", "7", "8"} <= {e[0] for e in expected}
    assert "Twin 1" not in await page.content()  # a good row is not listed
    await console.check_accessibility()

    async with page.expect_download() as downloading:
        await page.get_by_role("link", name="Download as CSV").click()
    path = Path(await (await downloading.value).path())
    text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    downloaded = list(csv.reader(io.StringIO(text, newline="")))
    assert downloaded[0] == ["line", "column", "value", "reason"]
    assert downloaded[1:] == [
        [line, spreadsheet_safe(c), spreadsheet_safe(v), spreadsheet_safe(r)] for line, c, v, r in expected
    ]
    assert any(row[2].startswith("'=") for row in downloaded[1:])  # the formula is text in a spreadsheet

    assert await operator.devices() == []  # nothing of a rejected file was stored


async def test_a_good_file_uploads_with_progress_then_publishes_with_live_progress(
    console: Console, operator: Operator, system: System, session: aiohttp.ClientSession
) -> None:
    offsets = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    product_id, product_name = await _named_product(operator)
    page = console.page
    await console.open("/console/bulk-registrations")
    await console.check_accessibility()
    # The page leaves for the new registration once the upload is done: the progress bar's
    # last value is kept in the tab's sessionStorage to be looked at after.
    await page.evaluate(
        """() => {
          const bar = document.getElementById('upload-progress');
          new MutationObserver(() => {
            if (bar.max > 0 && bar.value >= bar.max) sessionStorage.setItem('upload-complete', String(bar.value));
          }).observe(bar, {attributes: true});
        }"""
    )
    await page.get_by_label("Product").select_option(label=product_name)
    await page.get_by_label("CSV file").set_input_files(
        files=[{"name": "line-3.csv", "mimeType": "text/csv", "buffer": csv_text(csv_rows(300)).encode()}]
    )
    await page.get_by_role("button", name="Upload").click()

    await expect(page).to_have_url(re.compile(rf"/console/bulk-registrations/{UUID}$"))
    assert await page.evaluate("sessionStorage.getItem('upload-complete')") == "100"
    await expect(page.get_by_text("line-3.csv: 300 rows checked and stored.")).to_be_visible()
    await expect(page.get_by_text("Not published: 300 rows wait for Publish.")).to_be_visible()
    registration_id = page.url.rsplit("/", 1)[1]
    status, found = await bulk_call(
        session, system.bulk_url, operator, "GET", f"/v1/bulk-registrations/{registration_id}"
    )
    assert (status, found["status"], found["rows"], found["product_id"]) == (
        200,
        "configured",
        300,
        product_id,
    )
    await console.check_accessibility()

    await page.get_by_label("Create these 300 devices").check()
    await page.get_by_role("button", name="Publish").click()
    await expect(page.locator("#publish-count")).to_contain_text(
        "Done: 300 published of 300 rows.", timeout=60_000
    )
    await expect(page.locator("#publish-progress")).to_have_attribute("value", "300")
    await console.check_accessibility()

    devices = await operator.devices(registration_id=registration_id)
    assert len(devices) == 300 and {d["lifecycle"] for d in devices} == {"preregistered"}

    await console.open("/console/bulk-registrations")
    row = page.get_by_role("row").filter(has_text="line-3.csv")
    await expect(row).to_contain_text("published")
    await expect(row).to_contain_text(product_name)

    logged = "".join(path.read_text(errors="replace")[offsets.get(path, 0) :] for path in LOGS.glob("*.log"))
    assert operator.api_key not in logged


async def test_a_configured_upload_can_be_cancelled(
    console: Console, operator: Operator, system: System, session: aiohttp.ClientSession
) -> None:
    _, product_name = await _named_product(operator)
    await _upload_in_browser(console, product_name, "wrong-batch.csv", csv_text(csv_rows(5)))
    page = console.page
    await expect(page).to_have_url(re.compile(rf"/console/bulk-registrations/{UUID}$"))
    registration_id = page.url.rsplit("/", 1)[1]

    await page.get_by_label("Delete this upload and its 5 rows").check()
    await page.get_by_role("button", name="Cancel upload").click()
    await expect(
        page.get_by_text("Cancelled wrong-batch.csv (5 rows): no device was created.")
    ).to_be_visible()
    await expect(page.get_by_text("No bulk registrations yet.")).to_be_visible()
    status, _ = await bulk_call(
        session, system.bulk_url, operator, "GET", f"/v1/bulk-registrations/{registration_id}"
    )
    assert status == 404
    await console.open(f"/console/bulk-registrations/{registration_id}")
    await expect(page.get_by_role("heading", name=re.compile("^404"))).to_be_visible()


async def test_publish_and_cancel_need_the_confirmation(
    console: Console, operator: Operator, system: System, session: aiohttp.ClientSession
) -> None:
    product_id = await bulk_product(operator)
    _, created = await upload(session, system.bulk_url, operator, product_id, csv_text(csv_rows(3)).encode())
    path = f"/console/bulk-registrations/{created['id']}"
    await console.open(path)
    request = console.page.context.request
    for what in ("publish", "cancel"):
        answer = await request.post(
            console.url + f"{path}/{what}",
            form={"csrf_token": await console.csrf()},
            headers={"Referer": console.url + path},
        )
        assert answer.status == 200 and "Tick the box to confirm" in await answer.text()
    _, found = await bulk_call(
        session, system.bulk_url, operator, "GET", f"/v1/bulk-registrations/{created['id']}"
    )
    assert found["status"] == "configured"


async def test_a_read_only_session_cannot_upload_publish_or_cancel(
    new_console: NewConsole, operator: Operator, system: System, session: aiohttp.ClientSession
) -> None:
    product_id = await bulk_product(operator)
    _, created = await upload(session, system.bulk_url, operator, product_id, csv_text(csv_rows(3)).encode())
    read_only = await operator.call("POST", "/v1/api-keys", {"label": "ro", "read_only": True}, expect=201)
    console = await new_console(operator)
    await console.sign_in(read_only["api_key"])

    await console.open("/console/bulk-registrations")
    page = console.page
    await expect(
        page.get_by_text("This session is read-only (a viewer's, or a read-only key's)")
    ).to_be_visible()
    await expect(page.get_by_label("CSV file")).to_have_count(0)
    await expect(page.get_by_role("link", name="fleet.csv")).to_be_visible()  # it may look
    await console.check_accessibility()
    await console.open(f"/console/bulk-registrations/{created['id']}")
    await expect(page.get_by_role("button", name="Publish")).to_have_count(0)
    await console.check_accessibility()

    token = await console.csrf()
    request = page.context.request
    for headers in ({}, {"X-CSRF-Token": token, "Accept": "application/json"}):
        refused = await request.post(
            console.url + "/console/bulk-registrations",
            headers=headers,
            multipart={
                "csrf_token": token,
                "product_id": product_id,
                "file": {"name": "ro.csv", "mimeType": "text/csv", "buffer": csv_text(csv_rows(2)).encode()},
            },
        )
        assert refused.status == 403 and "read-only" in await refused.text()
    for what in ("publish", "cancel"):
        refused = await request.post(
            console.url + f"/console/bulk-registrations/{created['id']}/{what}",
            form={"csrf_token": token, "confirm": "yes"},
        )
        assert refused.status == 403
    _, listed = await bulk_call(session, system.bulk_url, operator, "GET", "/v1/bulk-registrations")
    assert [(b["id"], b["status"]) for b in listed["bulk_registrations"]] == [(created["id"], "configured")]


async def test_another_accounts_bulk_registration_is_a_404_page(
    console: Console, other_operator: Operator, system: System, session: aiohttp.ClientSession
) -> None:
    product_id = await bulk_product(other_operator)
    _, theirs = await upload(
        session, system.bulk_url, other_operator, product_id, csv_text(csv_rows(3)).encode()
    )
    page = console.page
    for path in (
        f"/console/bulk-registrations/{theirs['id']}",
        f"/console/bulk-registrations/{theirs['id']}/progress",
        "/console/bulk-registrations/not-a-uuid",
        "/console/bulk-registrations/rejections/someone-elses",
        "/console/bulk-registrations/rejections/someone-elses/rows.csv",
    ):
        answer = await page.goto(console.url + path)
        assert answer is not None and answer.status == 404, path
        await expect(page.get_by_role("heading", name=re.compile("^404"))).to_be_visible()
        assert "fleet.csv" not in await page.content()
    await console.check_accessibility()

    await console.open("/console/bulk-registrations")
    token = await console.csrf()
    for what in ("publish", "cancel"):
        answer = await page.context.request.post(
            console.url + f"/console/bulk-registrations/{theirs['id']}/{what}",
            form={"csrf_token": token, "confirm": "yes"},
        )
        assert answer.status == 404
    await expect(page.get_by_text("No bulk registrations yet.")).to_be_visible()  # none of theirs listed
    _, found = await bulk_call(
        session, system.bulk_url, other_operator, "GET", f"/v1/bulk-registrations/{theirs['id']}"
    )
    assert found["status"] == "configured"


async def test_bad_upload_forms_get_a_4xx_or_a_message_never_a_500(
    console: Console, operator: Operator
) -> None:
    product_id = await bulk_product(operator)
    await console.open("/console/bulk-registrations")
    token = await console.csrf()
    request = console.page.context.request
    url = console.url + "/console/bulk-registrations"
    csv_file = {"name": "x.csv", "mimeType": "text/csv", "buffer": csv_text(csv_rows(2)).encode()}

    not_multipart = await request.post(url, form={"csrf_token": token, "product_id": product_id})
    assert not_multipart.status == 400
    no_token = await request.post(url, multipart={"product_id": product_id, "file": csv_file})
    assert no_token.status == 403
    huge_field = await request.post(
        url, multipart={"csrf_token": token, "product_id": "x" * 100_000, "file": csv_file}
    )
    assert huge_field.status == 400
    unexpected = await request.post(url, multipart={"csrf_token": token, "comment": "hi", "file": csv_file})
    assert unexpected.status == 400
    for product, file, message in (
        ("", csv_file, "Choose the product"),
        (product_id, "", "Choose a CSV file"),  # a file field with no file in it
        ("not-a-uuid\x00é", csv_file, "Bulk API (400)"),
        (product_id, {**csv_file, "buffer": b"x" * (1024 * 1024 + 1)}, "Bulk API (413)"),  # the stack's limit
        (product_id, {"name": "e\u202emoc.csv", "mimeType": "text/csv", "buffer": b"x"}, "Bulk API (400)"),
    ):
        answer = await request.post(url, multipart={"csrf_token": token, "product_id": product, "file": file})
        assert answer.status == 200, (product, answer.status)  # redirected to the list, with the message
        assert message in await answer.text()
    assert await operator.devices() == []


async def test_an_unreachable_bulk_api_is_a_503_that_names_it() -> None:
    async with aiohttp.ClientSession() as http:
        api = BulkApi(http, "http://127.0.0.1:9", "frk_secret-key")
        with pytest.raises(BulkApiUnreachable) as raised:
            await api.list()
    assert raised.value.status == 503
    assert "unreachable" in raised.value.message and "frk_secret" not in raised.value.message


async def test_without_javascript_the_form_uploads_and_a_rejection_shows_its_rows(
    no_js_console: Console, operator: Operator
) -> None:
    """The plain multipart form post: the server reads it part by part and streams it on."""
    console = no_js_console
    _, product_name = await _named_product(operator)
    page = console.page
    await _upload_in_browser(console, product_name, "no-js-bad.csv", bad_csv())
    await expect(page.get_by_role("heading", name="Rejected: no-js-bad.csv")).to_be_visible()
    await expect(page.locator("#bad-rows tbody tr")).to_have_count(5)
    await expect(page.get_by_role("link", name="Download as CSV")).to_be_visible()

    await _upload_in_browser(console, product_name, "no-js-good.csv", csv_text(csv_rows(40)))
    await expect(page).to_have_url(re.compile(rf"/console/bulk-registrations/{UUID}$"))
    await expect(page.get_by_text("no-js-good.csv: 40 rows checked and stored.")).to_be_visible()
    await page.get_by_label("Create these 40 devices").check()
    await page.get_by_role("button", name="Publish").click()
    # Without htmx no polling: the page (or its Refresh link) shows where publishing is.
    for _ in range(100):
        if await page.locator("#publish-count").filter(has_text="Done: 40 published").count():
            break
        refresh = page.get_by_role("link", name="Refresh")
        await (refresh.click() if await refresh.count() else page.reload())
    await expect(page.locator("#publish-count")).to_contain_text("Done: 40 published of 40 rows.")
    assert len(await operator.devices()) == 40


async def test_publish_progress_updates_live_without_a_reload(console: Console, operator: Operator) -> None:
    """20,000 rows publish in 40 chunks (the test stack's FLEETREG_BULK_PUBLISH_CHUNK_ROWS):
    long enough for the page to see publishing, and for htmx to poll its progress."""
    _, product_name = await _named_product(operator)
    page = console.page
    await _upload_in_browser(console, product_name, "big.csv", csv_text(csv_rows(20_000)))
    await expect(page).to_have_url(re.compile(rf"/console/bulk-registrations/{UUID}$"), timeout=60_000)
    registration_id = page.url.rsplit("/", 1)[1]

    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/progress") else None)
    async with page.expect_response(
        lambda r: r.url.endswith(f"/bulk-registrations/{registration_id}")
    ) as shown:
        await page.get_by_label("Create these 20,000 devices").check()
        await page.get_by_role("button", name="Publish").click()
    first = await (await shown.value).text()
    await expect(page.locator("#publish-count")).to_contain_text(
        "Done: 20,000 published of 20,000 rows.", timeout=120_000
    )
    if 'hx-trigger="every 1s"' in first:  # rendered while publishing: the rest came by polling
        assert polls and all(registration_id in url for url in polls)
        assert "Done:" not in first
    await expect(page.locator("#publish-progress")).to_have_attribute("value", "20000")
    found = await operator.call("GET", f"/v1/devices?registration_id={registration_id}&limit=1", expect=200)
    # past FLEETREG_COUNT_EXACT_MAX (10,000) the operator API's total is an estimate
    assert found["total"] > 10_000 and found["devices"][0]["registration_id"] == registration_id
