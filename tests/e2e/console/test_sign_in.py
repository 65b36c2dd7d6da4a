"""Signing in and out of the console, its session cookie, CSRF and account scoping."""

from __future__ import annotations

import uuid

import aiohttp
from playwright.async_api import expect

from tests.e2e.console.conftest import Console, NewConsole
from tests.support.api import Operator
from tests.support.system import LOGS, System


async def test_sign_in_opens_a_session_with_a_safe_cookie_and_sign_out_ends_it(
    new_console: NewConsole, operator: Operator
) -> None:
    console = await new_console(operator)
    await console.open("/console/products")  # not signed in: sent to sign in, then back
    await expect(console.page.get_by_role("heading", name="Sign in to the fleetreg console")).to_be_visible()
    await console.check_accessibility()

    await console.page.get_by_label("API key").fill(operator.api_key)
    await console.page.get_by_role("button", name="Sign in").click()

    assert console.page.url.endswith("/console/products")
    cookies = {c["name"]: c for c in await console.page.context.cookies()}
    session = cookies["fleetreg_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/console/"
    assert not session["secure"]  # served over http here; Secure on https (docs/console.md)
    assert operator.api_key not in str(cookies)  # the browser keeps a session token, never the key

    await console.page.get_by_role("button", name="Sign out").click()
    await expect(console.page.get_by_role("button", name="Sign in")).to_be_visible()
    await console.open("/console/")
    await expect(console.page.get_by_role("button", name="Sign in")).to_be_visible()  # the session is gone


async def test_a_wrong_key_is_refused_with_a_message(new_console: NewConsole, operator: Operator) -> None:
    console = await new_console(operator)
    await console.open("/console/sign-in")
    await console.page.get_by_label("API key").fill("frk_not-a-key")
    await console.page.get_by_role("button", name="Sign in").click()
    await expect(console.page.get_by_role("alert")).to_have_text("That API key is unknown or revoked.")


async def test_a_form_without_its_csrf_token_is_refused(
    console: Console, session: aiohttp.ClientSession
) -> None:
    # The browser's own cookies, sent by a request that lacks the form's token: what a
    # cross-site form would send if SameSite did not stop it.
    request = console.page.context.request
    refused = await request.post(console.url + "/console/sign-out", form={"csrf_token": "forged"})
    assert refused.status == 403
    assert "CSRF token" in await refused.text()
    no_token = await request.post(console.url + "/console/sign-out", form={})
    assert no_token.status == 403
    cross_site = await request.post(
        console.url + "/console/sign-out",
        form={"csrf_token": await console.csrf()},
        headers={"Origin": "https://attacker.example"},
    )
    assert cross_site.status == 403

    await console.open("/console/")  # still signed in: none of those signed out
    await expect(console.page.get_by_role("button", name="Sign out")).to_be_visible()


async def test_revoking_the_key_ends_its_console_sessions(console: Console, operator: Operator) -> None:
    keys = await operator.call("GET", "/v1/api-keys", expect=200)
    spare = await operator.call("POST", "/v1/api-keys", {"label": "spare"}, expect=201)
    own = next(k for k in keys["api_keys"] if k["label"] != "spare")
    second = Operator(operator.session, operator.url, spare["api_key"], operator.account_id)
    await second.call("DELETE", f"/v1/api-keys/{own['id']}", expect=200)

    await console.open("/console/")
    await expect(console.page.get_by_role("button", name="Sign in")).to_be_visible()


async def test_hostile_sign_in_forms_get_a_clear_4xx_and_no_key_reaches_a_log(
    system: System, operator: Operator
) -> None:
    """NUL bytes, unicode, oversized and wrongly typed fields, a missing token, a foreign
    ``next``: each answered 4xx (or a refused sign-in), never 5xx; neither the right key nor
    any guess appears in any service's log."""
    offsets = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    url = f"{system.operator_url}/console/sign-in"
    guesses = [
        "frk_\x00nul",
        "frk_ünïcødé‮",
        "frk_" + "A" * 5000,
        f"{operator.api_key}\x00",
        " ",
    ]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(url) as page:
            assert page.status == 200
            token = page.cookies["fleetreg_console_sign_in"].value
        statuses = []
        for guess in guesses:
            async with browser.post(url, data={"csrf_token": token, "api_key": guess}) as answer:
                statuses.append(answer.status)
                assert "frk_" not in await answer.text() or guess == " "
        async with browser.post(url, data={"api_key": operator.api_key}) as no_token:
            statuses.append(no_token.status)
        many = aiohttp.FormData([("csrf_token", token), ("api_key", "a"), ("api_key", "b")])
        async with browser.post(url, data=many) as doubled:
            statuses.append(doubled.status)
        async with browser.post(url, data=b"\x00\xff" * 1000, headers={"Content-Type": "text/plain"}) as raw:
            statuses.append(raw.status)
        form = {"csrf_token": token, "api_key": operator.api_key, "next": "https://attacker.example/"}
        async with browser.post(url, data=form, allow_redirects=False) as signed_in:
            assert signed_in.status == 303
            assert signed_in.headers["Location"] == "/console/"  # never to another site
    assert all(400 <= s < 500 for s in statuses), statuses

    logged = "".join(path.read_text(errors="replace")[offsets.get(path, 0) :] for path in LOGS.glob("*.log"))
    assert operator.api_key not in logged
    assert not any(guess.strip() and guess in logged for guess in guesses)


async def test_malformed_form_bodies_are_a_400_page_on_sign_in_and_on_every_form(
    console: Console, system: System
) -> None:
    """Found by an outsider attack: a multipart body without its boundary, or cut short, made
    the form parser raise, and the console answered the API's JSON 500 (sign-in included,
    reachable without an account)."""
    request = console.page.context.request
    bodies = [
        ("multipart/form-data; boundary=q", b"zzz"),
        ("multipart/form-data", b"--q\r\nContent-Disposition: form-data; name=x\r\n\r\n"),
        ("multipart/form-data; boundary=q", b'--q\r\nContent-Disposition: form-data; name="csrf_token"\r\n'),
    ]
    for path in ("/console/sign-in", "/console/sign-out", "/console/bulk-registrations"):
        for content_type, body in bodies:
            answer = await request.post(console.url + path, headers={"Content-Type": content_type}, data=body)
            assert 400 <= answer.status < 500, (path, content_type, answer.status)
            assert answer.headers["content-type"].startswith("text/html"), (path, answer.headers)
            assert answer.headers.get("content-security-policy"), path


async def test_a_lapsed_session_sends_the_polling_tab_to_sign_in_not_into_the_fragment(
    console: Console, operator: Operator
) -> None:
    """Found by an outsider attack: with the session ended, htmx swapped the whole sign-in
    page into the bulk publish progress box."""
    request = console.page.context.request
    await console.page.get_by_role("button", name="Sign out").click()
    for fragment in ("/console/bulk-registrations/" + str(uuid.uuid4()) + "/progress", "/console/live/chart"):
        answer = await request.get(console.url + fragment, headers={"HX-Request": "true"}, max_redirects=0)
        assert answer.status == 204, fragment
        assert answer.headers["hx-redirect"].startswith("/console/sign-in?next=/console/"), fragment
