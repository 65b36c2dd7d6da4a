"""A bulk registration's hook in the console (docs/registration-hook.md, "Operator
surface"), in a real browser, through the bulk API as the console publishes and cancels:
set (its signing secret shown once), tested with a sample request against the reference
hook run as a real process (deny, then allow with its enrichment), the recent calls
listed, the policy changed without a new secret, removed; a read-only session sees the
host only and no form, and another account's registration is not found."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from shared.db.pool import Pool
from tests.e2e.console.conftest import ARTIFACTS, Console, NewConsole
from tests.support.api import Operator
from tests.support.bulk import bulk_product, csv_rows, csv_text, upload
from tests.support.reference_hook import reference_hook
from tests.support.system import System, free_port


async def _bulk_registration(session: aiohttp.ClientSession, system: System, operator: Operator) -> str:
    """A configured bulk registration of two devices, without a hook."""
    status, created = await upload(
        session, system.bulk_url, operator, await bulk_product(operator), csv_text(csv_rows(2)).encode()
    )
    assert status == 201, created
    return str(created["id"])


async def _shown(operator: Operator, system: System, registration_id: str) -> dict[str, Any]:
    bulk = Operator(operator.session, system.bulk_url, operator.api_key, operator.account_id)
    found: dict[str, Any] = await bulk.call("GET", f"/v1/bulk-registrations/{registration_id}", expect=200)
    return found


async def test_set_test_list_change_and_remove_a_hook(
    console: Console, operator: Operator, system: System, pool: Pool, tmp_path: Path
) -> None:
    page = console.page
    registration_id = await _bulk_registration(operator.session, system, operator)
    await console.open(f"/console/bulk-registrations/{registration_id}")
    await expect(
        page.get_by_text("No hook: devices are registered without asking your service.")
    ).to_be_visible()
    await expect(page.get_by_text("No call yet.")).to_be_visible()
    await console.check_accessibility()

    url = f"http://127.0.0.1:{free_port()}/serials?token=receiver-token"
    await page.get_by_label("Hook URL").fill(url)
    await page.get_by_label("Timeout (ms, 50-10000)").fill("1500")
    await page.get_by_label("When the hook fails").select_option("open")
    await page.get_by_role("button", name="Set the hook").click()
    await expect(page.locator(".flash")).to_contain_text("Hook set: copy its signing secret now")
    secret = (await page.locator("#hook-secret").inner_text()).strip()
    assert secret.startswith("whsec_")
    await console.check_accessibility()
    shown = await _shown(operator, system, registration_id)
    assert (shown["hook_url"], shown["hook_timeout_ms"], shown["hook_failure"]) == (url, 1500, "open")
    await page.reload()  # shown once
    await expect(page.locator("#hook-secret")).to_have_count(0)
    assert secret not in await page.content()

    async with reference_hook(tmp_path, secret, port=int(url.split(":")[2].split("/")[0])):
        await page.get_by_role("button", name="Test", exact=True).click()
        result = page.locator("#hook-test-result")
        await expect(result).to_contain_text("SAMPLE-0001")
        await expect(result).to_contain_text("deny")
        await expect(result).to_contain_text("SAMPLE-0001 is not in our serials list")
        await page.get_by_label("Sample hardware ID").fill("SN-0001")
        await page.get_by_role("button", name="Test", exact=True).click()
        await expect(result).to_contain_text("allow")
        await expect(result).to_contain_text("pump-0001")
        await expect(result).to_contain_text("pumps / line-1")
        await expect(result).to_contain_text("site=Lyon, batch=2026-11")
        await console.check_accessibility()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "bulk-registration-hook-tested.png"), full_page=True)
    await page.reload()  # the result is shown once
    await expect(page.locator("#hook-test-result")).to_have_count(0)
    # The bulk API made the calls: audited under the bulk registration's names.
    tested = await operator.call("GET", "/v1/audit-events?action=bulk.hook_tested", expect=200)
    assert [e["changes"]["outcome"] for e in tested["audit_events"]] == ["allow", "deny"]

    # A call the pipeline recorded for a device's claim is listed.
    await pool.execute(
        """INSERT INTO registration_hook_calls
               (call_id, registration_id, account_id, request_id, request, decided, outcome, http_status,
                latency_ms, attempts, reserved_until, created_at)
           -- held for 15 minutes, as dedup holds one: the notifier's sweep must not expire it
           VALUES ($1, $2, $3, $4, $5::jsonb, '{}'::jsonb, 'timeout', NULL, 1500, 2,
                   $6::timestamptz + interval '15 minutes', $6)""",
        f"msg_{uuid.uuid4().hex}",
        registration_id,
        operator.account_id,
        str(uuid.uuid4()),
        json.dumps({"hardware_id": "SN-0042", "assigned_hardware_id": "SN-0042", "decision": "claim"}),
        datetime.now(UTC),
    )
    await page.reload()
    row = page.locator("#hook-calls + table tbody tr").first
    await expect(row).to_contain_text("SN-0042")
    await expect(row).to_contain_text("claim")
    await expect(row).to_contain_text("timeout")
    await expect(row).to_contain_text("1500 ms")
    await expect(page.locator("#hook-calls + table caption")).to_contain_text(
        f"fleetreg bulk hook-calls {registration_id}"
    )

    # The policy alone keeps the URL and its secret.
    await page.get_by_label("When the hook fails").select_option("closed")
    await page.get_by_role("button", name="Save the hook").click()
    await expect(page.locator(".flash")).to_contain_text("Hook settings saved.")
    await expect(page.locator("#hook-secret")).to_have_count(0)
    shown = await _shown(operator, system, registration_id)
    assert (shown["hook_url"], shown["hook_timeout_ms"], shown["hook_failure"]) == (url, 1500, "closed")

    # A setting the bulk API refuses is said on the page; nothing changes.
    await page.get_by_label("Timeout (ms, 50-10000)").fill("5")
    await page.get_by_role("button", name="Save the hook").click()
    await expect(page.locator(".flash")).to_contain_text("hook_timeout_ms")
    assert (await _shown(operator, system, registration_id))["hook_timeout_ms"] == 1500

    await page.get_by_label("I understand devices are then registered without asking it").check()
    await page.get_by_role("button", name="Remove the hook").click()
    await expect(page.locator(".flash")).to_contain_text("Hook removed")
    await expect(
        page.get_by_text("No hook: devices are registered without asking your service.")
    ).to_be_visible()
    assert (await _shown(operator, system, registration_id))["hook_url"] is None


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_below_admin_a_session_sees_no_hook_and_may_not_change_it(
    new_console: NewConsole, operator: Operator, other_operator: Operator, system: System, role: str
) -> None:
    """A registration hook is an admin's (docs/security.md, "Roles"): a viewer's or an
    operator's session sees no hook section, and its forms are refused (403)."""
    registration_id = await _bulk_registration(operator.session, system, operator)
    bulk = Operator(operator.session, system.bulk_url, operator.api_key, operator.account_id)
    await bulk.call(
        "PATCH",
        f"/v1/bulk-registrations/{registration_id}",
        {"hook_url": "http://127.0.0.1:9/ours?token=t"},
        expect=200,
    )
    key = await operator.call("POST", "/v1/api-keys", {"label": role, "role": role}, expect=201)
    console = await new_console(operator)
    await console.sign_in(key["api_key"])
    page = console.page
    await console.open(f"/console/bulk-registrations/{registration_id}")
    await expect(page.get_by_role("heading", name="Registration hook")).to_have_count(0)
    assert "127.0.0.1:9" not in await page.locator("main").inner_text()
    for button in ("Test", "Save the hook", "Remove the hook"):
        await expect(page.get_by_role("button", name=button, exact=True)).to_have_count(0)
    await console.check_accessibility()
    for action in ("hook/test", "hook", "hook/remove"):
        refused = await page.context.request.post(
            f"{console.url}/console/bulk-registrations/{registration_id}/{action}",
            form={"csrf_token": await console.csrf(), "hook_url": "http://127.0.0.1:9/theirs"},
            max_redirects=0,
        )
        assert refused.status == 403, action
    shown = await bulk.call("GET", f"/v1/bulk-registrations/{registration_id}", expect=200)
    assert shown["hook_url"] == "http://127.0.0.1:9/ours?token=t"

    # Another account's registration: the bulk API does not find it, nor does the console.
    stranger = await new_console(other_operator)
    await stranger.sign_in()
    await stranger.open("/console/bulk-registrations")
    for action in ("hook/test", "hook", "hook/remove"):
        answer = await stranger.page.context.request.post(
            f"{stranger.url}/console/bulk-registrations/{registration_id}/{action}",
            form={"csrf_token": await stranger.csrf(), "hook_url": "http://127.0.0.1:9/theirs"},
            max_redirects=0,
        )
        assert answer.status == 404, action
