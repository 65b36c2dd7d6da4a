"""People sign in to the console through their account's OpenID Connect provider (issue 28),
in a real browser against the real Keycloak (the ``keycloak`` fixture, the test realm of
deploy/local/keycloak/fleetreg-realm.json), the account's single sign-on set through
``PUT /v1/sso``: e-mail first, the password typed on the provider's own page, the role from
the provider's groups; an address of another domain gets the password form; a person
outside the account's domains, a person disabled at the provider, a tampered or replayed
callback are refused; required single sign-on keeps non-owners off the password form.

The console is opened at ``http://localhost:<port>`` and the provider is at
``http://127.0.0.1:18280``: two sites, so the provider's redirect back is the cross-site
navigation it is in production (a SameSite=Strict pending cookie would not come back)."""

from __future__ import annotations

import asyncio
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Request, Route, expect

from shared.db.pool import Pool
from shared.domain.passwords import hash_password
from tests.e2e.console.conftest import Console, NewConsole
from tests.support.api import Operator
from tests.support.keycloak import CONSOLE_CLIENT_SECRET, USERS, KeycloakRealm, set_user_enabled
from tests.support.system import LOGS, System, free_port

pytestmark = pytest.mark.e2e

PASSWORD = "a long passphrase nobody guesses 4711"
AT_PROVIDER = re.compile(r"^http://127\.0\.0\.1:\d+/realms/fleetreg/")
GROUP_ROLES = {"fleet-admins": "admin", "fleet-operators": "operator", "fleet-viewers": "viewer"}


def sso_body(issuer: str, domain: str = "sso.example.com", **change: object) -> dict[str, Any]:
    return {
        "issuer": issuer,
        "client_id": "fleetreg-console",
        "client_secret": CONSOLE_CLIENT_SECRET,
        "allowed_domains": [domain],
        "group_roles": GROUP_ROLES,
    } | change


@pytest.fixture
async def sso_account(operator: Operator, keycloak: KeycloakRealm, pool: Pool) -> AsyncIterator[Operator]:
    """The operator's account signs sso.example.com in through the test realm. The realm's
    people are sso.example.com's: before and after, no other account holds the domain or them
    (a domain and an address belong to one account)."""

    async def release() -> None:
        await pool.execute("DELETE FROM sso_domains WHERE domain = 'sso.example.com'")
        await pool.execute(
            "UPDATE users SET removed_at = now() WHERE lower(email) = ANY($1::text[]) AND removed_at IS NULL",
            list(USERS),
        )

    await release()
    await operator.call("PUT", "/v1/sso", sso_body(keycloak.issuer), expect=200)
    try:
        yield operator
    finally:
        await release()


async def open_console(new_console: NewConsole, operator: Operator) -> Console:
    """A console tab at localhost (another site than the provider's 127.0.0.1)."""
    console = await new_console(operator)
    console.url = console.url.replace("://127.0.0.1:", "://localhost:")
    return console


async def to_provider(console: Console, email: str, path: str = "/console/sign-in") -> None:
    await console.open(path)
    await console.page.get_by_label("E-mail address").fill(email)
    await console.page.get_by_role("button", name="Continue").click()


async def at_provider(console: Console, email: str, password: str | None = None) -> None:
    """The provider's login page: the person types their password there, not at fleetreg."""
    page = console.page
    await page.wait_for_url(AT_PROVIDER)
    await expect(page.locator("#kc-form-login")).to_be_visible()
    await page.locator("#username").fill(email)
    await page.locator("#password").fill(password or USERS[email][0])
    await page.locator("#kc-login").click()


async def sso_sign_in(console: Console, email: str, path: str = "/console/sign-in") -> None:
    await to_provider(console, email, path)
    await at_provider(console, email)
    await expect(console.page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()


async def stay(route: Route) -> None:
    """A navigation answered 204: the browser stays on the page it was leaving."""
    await route.fulfill(status=204)


def log_offsets() -> dict[Path, int]:
    return {path: path.stat().st_size for path in LOGS.glob("*.log")}


def logged_since(offsets: dict[Path, int]) -> str:
    return "".join(path.read_text(errors="replace")[offsets.get(path, 0) :] for path in LOGS.glob("*.log"))


async def test_people_sign_in_through_the_provider_with_the_role_of_their_groups(
    new_console: NewConsole, sso_account: Operator
) -> None:
    offsets = log_offsets()
    alice = await open_console(new_console, sso_account)
    callbacks: list[str] = []

    def seen(request: Request) -> None:
        if "/console/sso/callback" in request.url:
            callbacks.append(request.url)

    alice.page.on("request", seen)
    await alice.open("/console/products")  # sent to sign in, then back here
    await alice.check_accessibility()
    # Each page in between goes on by itself; a 204 answer keeps the browser on it a moment,
    # for the accessibility checks and its link.
    authorize, products = (
        re.compile(r".*/protocol/openid-connect/auth\?.*"),
        re.compile(r".*/console/products$"),
    )
    await alice.page.route(authorize, stay)
    await to_provider(alice, "alice@sso.example.com", alice.page.url.removeprefix(alice.url))
    await expect(alice.page.get_by_role("heading", name="Single sign-on")).to_be_visible()
    await alice.check_accessibility()
    await alice.page.unroute(authorize)
    await alice.page.route(products, stay)
    await alice.page.get_by_role("link", name="Continue to your identity provider").click()
    await at_provider(alice, "alice@sso.example.com")
    await expect(alice.page.get_by_role("heading", name="Signed in")).to_be_visible()
    await alice.check_accessibility()
    await alice.page.unroute(products)
    await alice.page.get_by_role("link", name="Continue to the console").click()
    await expect(alice.page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()
    assert urllib.parse.urlsplit(alice.page.url).path == "/console/products"
    assert alice.page.url.startswith("http://localhost:")
    await expect(alice.page.get_by_role("link", name="alice@sso.example.com")).to_be_visible()
    await expect(alice.page.locator(".who .badge")).to_have_text("admin")
    await expect(alice.page.get_by_role("link", name="Webhooks")).to_be_visible()  # an admin's area

    victor = await open_console(new_console, sso_account)
    await sso_sign_in(victor, "victor@sso.example.com")
    await expect(victor.page.locator(".who .badge")).to_have_text("viewer")
    await victor.open("/console/bulk-registrations")
    await expect(victor.page.get_by_text("This session is read-only (a viewer's")).to_be_visible()
    await expect(victor.page.get_by_label("CSV file")).to_have_count(0)
    await expect(victor.page.get_by_role("link", name="Webhooks")).to_have_count(0)

    people = await sso_account.call("GET", "/v1/users", expect=200)
    assert sorted((u["email"], u["role"]) for u in people["users"]) == [
        ("alice@sso.example.com", "admin"),
        ("victor@sso.example.com", "viewer"),
    ]
    joined = await sso_account.call("GET", "/v1/audit-events?action=user.joined", expect=200)
    assert {e["changes"]["sign_in"] for e in joined["audit_events"]} == {"sso"}

    assert callbacks, "the provider sent the browser back to the callback"
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callbacks[0]).query))["code"]
    logged = logged_since(offsets)
    for secret in (CONSOLE_CLIENT_SECRET, code, USERS["alice@sso.example.com"][0]):
        assert secret not in logged
    assert "eyJ" not in logged  # no JWT (an ID or access token) either


async def test_another_domain_gets_the_password_form_and_the_provider_refuses_it_for_this_account(
    new_console: NewConsole, sso_account: Operator
) -> None:
    console = await open_console(new_console, sso_account)
    await to_provider(console, "mallory@evil.test")
    await expect(console.page.get_by_text("Signing in as mallory@evil.test")).to_be_visible()
    await expect(console.page.get_by_label("Password")).to_be_visible()
    assert console.page.url.startswith(console.url)  # fleetreg's form, not the provider

    # Through the provider all the same (an sso.example.com address typed, mallory's login
    # there): the account's domains are checked on the verified address, and refused.
    await to_provider(console, "alice@sso.example.com")
    await at_provider(console, "mallory@evil.test")
    await expect(console.page.get_by_role("heading", level=1)).to_contain_text("401")
    await expect(console.page.get_by_role("heading", level=1)).to_contain_text(
        "people of evil.test may not sign in to this account"
    )
    await console.check_accessibility()
    await expect(console.page.get_by_role("button", name="Sign out", exact=True)).to_have_count(0)
    people = await sso_account.call("GET", "/v1/users", expect=200)
    assert people["users"] == []


async def test_a_person_disabled_at_the_provider_cannot_sign_in_again(
    new_console: NewConsole, sso_account: Operator, keycloak: KeycloakRealm
) -> None:
    console = await open_console(new_console, sso_account)
    await sso_sign_in(console, "dora@sso.example.com")
    await expect(console.page.locator(".who .badge")).to_have_text("operator")
    await console.page.get_by_role("button", name="Sign out", exact=True).click()

    await set_user_enabled(keycloak, "dora@sso.example.com", False)
    try:
        await to_provider(console, "dora@sso.example.com")
        await console.page.wait_for_url(AT_PROVIDER)
        disabled = console.page.get_by_text(re.compile("disabled", re.IGNORECASE)).first
        await expect(console.page.locator("#kc-form-login").or_(disabled)).to_be_visible()
        if await console.page.locator("#kc-form-login").count():  # no session left there
            await at_provider(console, "dora@sso.example.com")
        await expect(disabled).to_be_visible()
        assert AT_PROVIDER.match(console.page.url)  # still at the provider
        await console.open("/console/")
        await expect(console.page.get_by_label("E-mail address")).to_be_visible()  # not signed in
    finally:
        await set_user_enabled(keycloak, "dora@sso.example.com", True)


async def test_a_tampered_or_replayed_callback_is_refused(
    new_console: NewConsole, sso_account: Operator, system: System
) -> None:
    offsets = log_offsets()
    console = await open_console(new_console, sso_account)
    held: list[str] = []
    arrived = asyncio.Event()

    async def hold(route: Route) -> None:
        # The provider's answer to the login form, its redirect to the callback not followed
        # (a route sees no redirect's target): the callback URL held by the test.
        answer = await route.fetch(max_redirects=0)
        held.append(answer.headers.get("location", ""))
        arrived.set()
        await route.abort()

    login = re.compile(r".*/login-actions/authenticate.*")
    await console.page.route(login, hold)
    await to_provider(console, "alice@sso.example.com")
    await at_provider(console, "alice@sso.example.com")
    await asyncio.wait_for(arrived.wait(), 30)
    await console.page.unroute(login)
    callback = held[0]
    assert callback.startswith(console.url + "/console/sso/callback?"), callback
    pending = next(c for c in await console.page.context.cookies() if c["name"] == "fleetreg_console_sso")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback).query))

    # The state changed: refused, and the pending sign-in is spent.
    tampered = {**query, "state": query["state"][:-2] + ("AA" if not query["state"].endswith("AA") else "BB")}
    base = callback.split("?", 1)[0]
    await console.page.goto(f"{base}?{urllib.parse.urlencode(tampered)}")
    await expect(console.page.get_by_role("heading", level=1)).to_contain_text("401")
    await expect(console.page.get_by_role("heading", level=1)).to_contain_text("state")
    await console.check_accessibility()
    await console.page.goto(callback)
    await expect(console.page.get_by_role("heading", level=1)).to_contain_text(
        "No single sign-on was started in this browser"
    )

    # The untampered callback with its pending sign-in: signed in once ...
    await console.page.context.add_cookies([pending])
    await console.page.goto(callback)
    await expect(console.page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()
    # ... and replayed (the callback and its cookie, copied): the provider's code is spent.
    cookie = f"fleetreg_console_sso={pending['value']}"
    replay = callback.replace("://localhost:", "://127.0.0.1:")
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(replay, headers={"Cookie": cookie}, allow_redirects=False) as replayed,
    ):
        text = await replayed.text()
    assert replayed.status == 401, text
    assert "refused the authorization code" in text
    assert "fleetreg_console=" not in str(replayed.headers.getall("Set-Cookie", []))  # no session

    logged = logged_since(offsets)
    assert query["code"] not in logged and query["state"] not in logged
    assert CONSOLE_CLIENT_SECRET not in logged and "eyJ" not in logged


async def test_required_single_sign_on_keeps_all_but_owners_off_the_password_form(
    new_console: NewConsole, sso_account: Operator, keycloak: KeycloakRealm, pool: Pool
) -> None:
    await sso_account.call("PUT", "/v1/sso", sso_body(keycloak.issuer, required=True), expect=200)
    contractor = f"contractor-{uuid.uuid4().hex[:8]}@elsewhere.test"
    owner = "olga@sso.example.com"  # an owner of an SSO domain, with a password: the way in
    for email, role in ((contractor, "operator"), (owner, "owner")):
        await pool.execute(
            "INSERT INTO users (id, account_id, email, role, password_hash) VALUES ($1, $2, $3, $4, $5)",
            uuid.uuid4(),
            uuid.UUID(sso_account.account_id),
            email,
            role,
            hash_password(PASSWORD),
        )
    console = await open_console(new_console, sso_account)
    await to_provider(console, contractor)
    await console.page.get_by_label("Password").fill(PASSWORD)
    await console.page.get_by_role("button", name="Sign in").click()
    await expect(console.page.get_by_role("alert")).to_contain_text("sign in through your identity provider")
    await expect(console.page.get_by_role("button", name="Sign out", exact=True)).to_have_count(0)

    await console.open("/console/sign-in")
    await console.page.get_by_role("link", name="sign in with a password").click()
    await console.check_accessibility()
    await console.page.get_by_label("E-mail address").fill(owner)
    await console.page.get_by_role("button", name="Continue").click()
    await expect(console.page.get_by_text(f"Signing in as {owner}")).to_be_visible()  # not the provider
    await console.page.get_by_label("Password").fill(PASSWORD)
    await console.page.get_by_role("button", name="Sign in").click()
    await expect(console.page.locator(".who .badge")).to_have_text("owner")


async def test_a_provider_that_cannot_be_reached_is_a_503_page(
    new_console: NewConsole, operator: Operator
) -> None:
    domain = f"{uuid.uuid4().hex[:8]}.example"
    issuer = f"http://127.0.0.1:{free_port()}/realms/gone"  # nothing listens there
    await operator.call("PUT", "/v1/sso", sso_body(issuer, domain), expect=200)
    console = await open_console(new_console, operator)
    await to_provider(console, f"someone@{domain}")
    await expect(console.page.get_by_role("heading", level=1)).to_contain_text("503")
    await expect(console.page.get_by_role("heading", level=1)).to_contain_text(
        "identity provider cannot be used right now"
    )
    await console.check_accessibility()
    await operator.call("DELETE", "/v1/sso", expect=200)


async def test_a_person_of_the_provider_confirms_who_they_are_there_again(
    new_console: NewConsole, sso_account: Operator, pool: Pool
) -> None:
    registration = await sso_account.product()
    code = registration["bulk_identification_code"]
    console = await open_console(new_console, sso_account)
    await sso_sign_in(console, "alice@sso.example.com")
    await pool.execute(
        "UPDATE console_sessions SET authenticated_at = now() - interval '6 minutes' "
        "WHERE user_id = (SELECT id FROM users WHERE email = 'alice@sso.example.com' AND removed_at IS NULL)"
    )
    product_page = f"/console/products/{registration['product_id']}"
    await console.open(product_page)
    await console.page.get_by_role("button", name="Reveal the code").click()
    await expect(console.page.get_by_role("heading", name="Confirm it is you")).to_be_visible()
    await console.check_accessibility()
    await expect(console.page.get_by_label("Password")).to_have_count(0)  # she has none here
    await console.page.get_by_role("button", name="Confirm through your identity provider").click()
    # The provider asks for her password again (prompt=login), though it has a session of hers.
    await console.page.wait_for_url(AT_PROVIDER)
    await expect(console.page.get_by_text("Please re-authenticate to continue")).to_be_visible()
    await console.page.locator("#password").fill(USERS["alice@sso.example.com"][0])
    await console.page.locator("#kc-login").click()
    await console.page.wait_for_url(re.compile(re.escape(product_page) + "$"))
    await console.page.get_by_role("button", name="Reveal the code").click()
    await expect(console.page.locator("#bulk-code")).to_have_text(code)
    sessions = await pool.fetchval(
        "SELECT count(*) FROM console_sessions s JOIN users u ON u.id = s.user_id "
        "WHERE u.email = 'alice@sso.example.com' AND u.removed_at IS NULL"
    )
    assert sessions == 1  # the re-authenticated one; the one it confirmed for ended
