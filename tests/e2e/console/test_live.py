"""The live storm view in a real browser: its totals move while devices boot, with no
reload; another account's storm running at the same time never shows; the pipeline's
health says healthy, or degraded with the reason; it works without JavaScript."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
from playwright.async_api import Browser, expect

from tests.e2e.console.conftest import ARTIFACTS, Console, NewConsole
from tests.support.api import DeviceAnswer, Operator, provision, register
from tests.support.system import System, free_port

NEW, CLONES, REFUSED = 40, 5, 5  # 50 requests


def hardware_id() -> str:
    return uuid.uuid4().hex[:12]


async def boot(
    session: aiohttp.ClientSession, system: System, code: str, hardware_ids: list[str]
) -> list[DeviceAnswer]:
    """Devices booting at once, each with a fingerprint of its own; the ones registered
    download their files and confirm (provisioned, online)."""
    answers = await asyncio.gather(
        *[
            register(session, system.device_url, code, h, cpu_id=f"cpu-{uuid.uuid4().hex}", mac="m")
            for h in hardware_ids
        ]
    )
    registered = [a for a in answers if a.body.get("status") == "ready"]
    await asyncio.gather(*[provision(session, system.device_url, a.body) for a in registered])
    return answers


async def storm(session: aiohttp.ClientSession, system: System, operator: Operator) -> None:
    """40 new devices, 5 clones of some of them, then 5 refused by the registration's quota."""
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    originals = [hardware_id() for _ in range(NEW)]
    first = await boot(session, system, code, originals)
    assert [a.body["decision"] for a in first] == ["new"] * NEW, [a.body for a in first][:3]
    clones = await boot(session, system, code, originals[:CLONES])  # the same SD card image
    assert [a.body["decision"] for a in clones] == ["clone"] * CLONES, [a.body for a in clones][:3]
    await operator.call(
        "PATCH", f"/v1/auto-registrations/{registration['id']}", {"max_devices": NEW + CLONES}, expect=200
    )
    refused = await boot(session, system, code, [hardware_id() for _ in range(REFUSED)])
    assert [a.body.get("status") for a in refused] == ["refused"] * REFUSED, [a.body for a in refused][:3]


async def totals(console: Console) -> dict[str, str]:
    keys = ("registered", "provisioned", "clones", "refused", "online")
    return {k: (await console.page.locator(f"#total-{k}").text_content() or "").strip() for k in keys}


async def test_the_totals_move_with_a_storm_without_a_reload_and_never_count_another_account(
    console: Console,
    new_console: NewConsole,
    other_operator: Operator,
    session: aiohttp.ClientSession,
    system: System,
) -> None:
    page = console.page
    await console.open("/console/live")
    await expect(page.get_by_role("heading", name="Live storm", exact=True)).to_be_visible()
    for key in ("registered", "provisioned", "clones", "refused", "online"):
        await expect(page.locator(f"#total-{key}")).to_have_text("0")
    await expect(page.locator("#pipeline-health .badge")).to_have_text("healthy")
    await expect(page.get_by_role("img", name="Boot storm, the last 120 seconds")).to_be_visible()
    await console.check_accessibility()
    # A marker in the page's own window: still there afterwards means no reload happened.
    await page.evaluate("window.liveMarker = 'same page'")

    # This account's storm and another account's, at the same time.
    other = storm(session, system, other_operator)
    mine = storm(session, system, console.operator)
    await asyncio.gather(mine, other)

    await expect(page.locator("#total-registered")).to_have_text(str(NEW))
    await expect(page.locator("#total-clones")).to_have_text(str(CLONES))
    await expect(page.locator("#total-refused")).to_have_text(str(REFUSED))
    await expect(page.locator("#total-provisioned")).to_have_text(str(NEW + CLONES))
    await expect(page.locator("#total-online")).to_have_text(str(NEW + CLONES))
    assert await page.evaluate("window.liveMarker") == "same page"
    # the other account's 40 + 5 + 5 never add up here, a second later either
    await page.wait_for_timeout(1500)
    assert await totals(console) == {
        "registered": "40",
        "provisioned": "45",
        "clones": "5",
        "refused": "5",
        "online": "45",
    }
    # the table of the last seconds sums to the same storm
    await expect(page.get_by_role("table")).to_contain_text("Second (UTC)")
    await expect(page.locator("#pipeline-health .badge")).to_have_text("healthy")
    await console.check_accessibility()

    # The other account's own view shows its storm, not this one's twice.
    theirs = await new_console(other_operator)
    await theirs.sign_in()
    await theirs.open("/console/live")
    await expect(theirs.page.locator("#total-registered")).to_have_text(str(NEW))
    await expect(theirs.page.locator("#total-online")).to_have_text(str(NEW + CLONES))


async def test_a_service_not_ready_makes_the_pipeline_degraded_with_the_reason(
    new_console: NewConsole, operator: Operator, system: System
) -> None:
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    instance = await system.add_instance(
        "operator",
        {
            "FLEETREG_PIPELINE_HEALTH_URLS": f"{system.services['intake'].ops_url}/readyz,http://{closed}/readyz"
        },
    )
    try:
        console = await new_console(operator)
        console.url = instance.url
        await console.sign_in()
        await console.open("/console/live")
        await expect(console.page.locator("#pipeline-health .badge")).to_have_text("degraded")
        await expect(console.page.get_by_role("listitem").filter(has_text=closed)).to_contain_text(
            f"{closed} is not ready: unreachable"
        )
        await console.check_accessibility()
    finally:
        instance.stop()
        system.extra.remove(instance)


async def test_without_javascript_the_page_shows_the_chart_and_a_refresh_link(
    browser: Browser, console: Console
) -> None:
    context = await browser.new_context(java_script_enabled=False)
    try:
        page = await context.new_page()
        no_js = Console(page, console.url, console.operator)
        await no_js.sign_in()
        await no_js.open("/console/live?seconds=60")
        await expect(page.get_by_role("img", name="Boot storm, the last 60 seconds")).to_be_visible()
        await expect(page.locator("#total-registered")).to_have_text("0")
        await page.get_by_role("link", name="Refresh").click()
        await expect(page).to_have_url(f"{console.url}/console/live?seconds=60")
        await page.get_by_role("link", name="Pause live updates").click()
        await expect(page.get_by_role("link", name="Resume live updates")).to_be_visible()
        assert await page.locator("#storm").get_attribute("hx-trigger") is None
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "test_live_without_javascript.png"), full_page=True)
    finally:
        await context.close()


async def test_a_bad_window_is_a_400_page_and_no_session_goes_to_sign_in(
    console: Console, new_console: NewConsole, operator: Operator
) -> None:
    for bad in ("abc", "0", "99999999999999999999", "%00", "%EF%BC%91%EF%BC%92%EF%BC%90"):
        response = await console.page.goto(f"{console.url}/console/live?seconds={bad}")
        assert response is not None and response.status == 400, bad
        await expect(
            console.page.get_by_text("seconds must be a whole number from 10 to 600")
        ).to_be_visible()
    fragment = await console.page.context.request.get(console.url + "/console/live/chart?seconds=60")
    assert fragment.status == 200
    assert "Boot storm, the last 60 seconds" in await fragment.text()

    stranger = await new_console(operator)  # not signed in
    lapsed = await stranger.page.context.request.get(
        console.url + "/console/live/chart", headers={"HX-Request": "true"}, max_redirects=0
    )
    assert lapsed.status == 204
    assert lapsed.headers["hx-redirect"] == "/console/sign-in?next=/console/live"
    await stranger.open("/console/live")
    await expect(stranger.page.get_by_role("button", name="Sign in")).to_be_visible()


async def test_a_read_only_session_watches_the_storm_too(new_console: NewConsole, operator: Operator) -> None:
    key = await operator.call("POST", "/v1/api-keys", {"label": "ro", "read_only": True}, expect=201)
    console = await new_console(operator)
    await console.sign_in(key["api_key"])
    await console.open("/console/live")
    await expect(console.page.locator("#total-registered")).to_have_text("0")
    await expect(console.page.locator("#pipeline-health .badge")).to_have_text("healthy")
    await console.check_accessibility()
