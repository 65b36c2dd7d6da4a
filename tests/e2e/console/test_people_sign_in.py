"""People sign in to the console (issue 28): e-mail first, password, TOTP (enrolled on the
account page from the key it shows, codes computed here with pyotp), recovery codes, their
sessions listed and revocable, removal and revocation ending a session at once,
re-authentication before revealing a code, and no secret in any service's log."""

from __future__ import annotations

import re
import time
import uuid

import aiohttp
import pyotp
from playwright.async_api import expect

from shared.db.pool import Pool
from shared.domain import console_assertions
from shared.domain.passwords import hash_password
from tests.e2e.console.conftest import Console, NewConsole
from tests.support.api import Operator
from tests.support.bulk import bulk_product, csv_rows, csv_text
from tests.support.system import LOGS, TEST_SECRET_KEY, System

PASSWORD = "a long passphrase nobody guesses 4711"


async def new_person(pool: Pool, operator: Operator, role: str = "admin") -> str:
    """A user of the operator's account with PASSWORD (made by SQL); their e-mail address."""
    email = f"person-{uuid.uuid4().hex[:10]}@example.com"
    await pool.execute(
        "INSERT INTO users (id, account_id, email, role, password_hash) VALUES ($1, $2, $3, $4, $5)",
        uuid.uuid4(),
        uuid.UUID(operator.account_id),
        email,
        role,
        hash_password(PASSWORD),
    )
    return email


async def enter_email_and_password(console: Console, email: str, password: str = PASSWORD) -> None:
    await console.open("/console/sign-in")
    await console.page.get_by_label("E-mail address").fill(email)
    await console.page.get_by_role("button", name="Continue").click()
    await expect(console.page.get_by_text(f"Signing in as {email}")).to_be_visible()
    await console.page.get_by_label("Password").fill(password)
    await console.page.get_by_role("button", name="Sign in").click()


async def sign_in_person(console: Console, email: str, code: str | None = None) -> None:
    await enter_email_and_password(console, email)
    if code is not None:
        await console.page.get_by_label(re.compile("Code from your authenticator app")).fill(code)
        await console.page.get_by_role("button", name="Verify").click()
    await expect(console.page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()


async def enrol_totp(console: Console) -> tuple[str, list[str]]:
    """TOTP set up on the account page: the secret (read from the page) and the recovery codes."""
    await console.open("/console/account")
    await console.page.get_by_role("button", name="Set up an authenticator app").click()
    await expect(console.page.locator("svg.totp-qr")).to_be_visible()
    await console.check_accessibility()
    secret = (await console.page.locator("#manual-key").inner_text()).replace(" ", "")
    await console.page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
    await console.page.get_by_role("button", name="Turn on two-step sign-in").click()
    codes = await console.page.locator("#recovery-codes li").all_inner_texts()
    assert len(codes) == 10
    return secret, codes


async def test_a_person_signs_in_with_password_then_totp_and_recovery_codes(
    new_console: NewConsole, operator: Operator, pool: Pool, system: System
) -> None:
    offsets = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    email = await new_person(pool, operator)
    console = await new_console(operator)
    await console.open("/console/products")  # sent to sign in, then back
    await console.check_accessibility()
    await console.page.get_by_label("E-mail address").fill(email)
    await console.page.get_by_role("button", name="Continue").click()
    await console.check_accessibility()
    await console.page.get_by_label("Password").fill(PASSWORD)
    await console.page.get_by_role("button", name="Sign in").click()
    await expect(console.page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()
    assert console.page.url.endswith("/console/products")
    await expect(console.page.get_by_role("link", name=email)).to_be_visible()

    secret, codes = await enrol_totp(console)
    await console.check_accessibility()
    await console.page.get_by_role("button", name="Sign out", exact=True).click()

    # The next step's code (accepted: one step of drift), then the same code again: refused.
    code = pyotp.TOTP(secret).at(time.time() + 30)
    await sign_in_person(console, email, code)
    cookie = next(c["value"] for c in await console.page.context.cookies() if c["name"] == "fleetreg_console")
    await console.page.get_by_role("button", name="Sign out", exact=True).click()
    await enter_email_and_password(console, email)
    await console.page.get_by_label(re.compile("Code from your authenticator app")).fill(code)
    await console.page.get_by_role("button", name="Verify").click()
    await expect(console.page.get_by_role("alert")).to_contain_text("That code is wrong, or was used already")
    await console.check_accessibility()

    # A recovery code works once.
    await console.page.get_by_label(re.compile("Code from your authenticator app")).fill(codes[0].lower())
    await console.page.get_by_role("button", name="Verify").click()
    await expect(console.page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()
    await console.page.get_by_role("button", name="Sign out", exact=True).click()
    await enter_email_and_password(console, email)
    await console.page.get_by_label(re.compile("Code from your authenticator app")).fill(codes[0])
    await console.page.get_by_role("button", name="Verify").click()
    await expect(console.page.get_by_role("alert")).to_contain_text("That code is wrong, or was used already")

    logged = "".join(path.read_text(errors="replace")[offsets.get(path, 0) :] for path in LOGS.glob("*.log"))
    for secret_text in (PASSWORD, secret, cookie, codes[0], codes[1]):
        assert secret_text not in logged


async def test_a_wrong_password_and_an_unknown_address_answer_the_same(
    system: System, operator: Operator, pool: Pool
) -> None:
    email = await new_person(pool, operator)
    answers = []
    for address, password in ((email, "not the password at all"), ("nobody@example.com", PASSWORD)):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(f"{system.operator_url}/console/sign-in") as page:
                token = page.cookies["fleetreg_console_sign_in"].value
            form = {"csrf_token": token, "email": address}
            async with browser.post(f"{system.operator_url}/console/sign-in/email", data=form) as step:
                assert step.status == 200 and "/console/sign-in/password" in str(step.url)
            form = {"csrf_token": token, "password": password}
            async with browser.post(f"{system.operator_url}/console/sign-in/password", data=form) as refused:
                text = (await refused.text()).replace(address, "ADDRESS").replace(token, "TOKEN")
                answers.append(
                    (refused.status, text.count("The e-mail address or the password is wrong."), text)
                )
    assert answers[0][:2] == answers[1][:2] == (401, 1)
    assert answers[0][2] == answers[1][2]  # the same page, but for the address typed


async def test_a_control_character_in_the_address_and_a_long_next_get_a_clear_answer(
    system: System, operator: Operator, pool: Pool
) -> None:
    """A NUL in the address is the e-mail step's 400 (it reached Postgres's text as a 500), and
    a long ``next`` still signs in (its sealed step cookie was refused by its own bound: 400)."""
    email = await new_person(pool, operator)
    url = system.operator_url
    ascii_next = "/console/devices?q=" + "a" * 1900
    for address, next_path, landing in (
        (email.replace("@", "\x00@"), "/console/", None),
        (email, ascii_next, ascii_next),
        (email, "/console/devices?q=" + "\u00fc" * 1900, "/console/"),  # 2 bytes a character
    ):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(f"{url}/console/sign-in") as page:
                token = page.cookies["fleetreg_console_sign_in"].value
            form = {"csrf_token": token, "email": address, "next": next_path}
            async with browser.post(f"{url}/console/sign-in/email", data=form, allow_redirects=False) as step:
                if landing is None:
                    assert step.status == 400
                    assert "Enter your e-mail address" in await step.text()
                    continue
                assert step.status == 303
            form = {"csrf_token": token, "password": PASSWORD}
            async with browser.post(
                f"{url}/console/sign-in/password", data=form, allow_redirects=False
            ) as signed_in:
                assert signed_in.status == 303
                assert signed_in.headers["Location"] == landing


async def test_a_person_ends_another_session_and_removal_signs_out_at_once(
    new_console: NewConsole, operator: Operator, pool: Pool
) -> None:
    email = await new_person(pool, operator, role="viewer")
    first, second = await new_console(operator), await new_console(operator)
    await sign_in_person(first, email)
    await sign_in_person(second, email)
    await expect(first.page.get_by_text("viewer", exact=True)).to_be_visible()

    await first.open("/console/account")
    await expect(first.page.get_by_text("2 sessions")).to_be_visible()
    await first.check_accessibility()
    other = first.page.locator("#sessions tbody tr").filter(has_not_text="this session")
    await other.get_by_role("button", name=re.compile("End the session")).click()
    await expect(first.page.get_by_text("Session ended")).to_be_visible()
    await second.open("/console/")
    await expect(second.page.get_by_label("E-mail address")).to_be_visible()  # signed out at once

    await sign_in_person(second, first_email := email)
    await first.page.get_by_role("button", name="Sign out everywhere else").click()
    await expect(first.page.get_by_text("1 session ended")).to_be_visible()
    await second.open("/console/")
    await expect(second.page.get_by_label("E-mail address")).to_be_visible()

    await pool.execute("UPDATE users SET removed_at = now() WHERE lower(email) = lower($1)", first_email)
    await first.open("/console/")
    await expect(first.page.get_by_label("E-mail address")).to_be_visible()


async def test_an_account_with_a_person_refuses_the_key_sign_in(
    new_console: NewConsole, operator: Operator, pool: Pool
) -> None:
    console = await new_console(operator)
    await console.sign_in()  # no person yet: the key signs in
    await new_person(pool, operator)
    await console.open("/console/products")  # and its session ends once the account has one
    await expect(console.page.get_by_label("E-mail address")).to_be_visible()
    await console.open("/console/sign-in")
    await console.page.get_by_label("API key").fill(operator.api_key)
    await console.page.get_by_role("button", name="Sign in").click()
    await expect(console.page.get_by_role("alert")).to_contain_text("signed in to by its people")
    await operator.call("GET", "/v1/products", expect=200)  # the key still works for the API


async def test_revealing_a_code_asks_to_reauthenticate_after_five_minutes(
    new_console: NewConsole, operator: Operator, pool: Pool
) -> None:
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    email = await new_person(pool, operator)
    console = await new_console(operator)
    await sign_in_person(console, email)
    product_page = f"/console/products/{registration['product_id']}"
    await console.open(product_page)
    await console.page.get_by_role("button", name="Reveal the code").click()
    await expect(console.page.locator("#bulk-code")).to_have_text(code)  # just signed in: no question

    await pool.execute(
        "UPDATE console_sessions SET authenticated_at = now() - interval '6 minutes' "
        "WHERE user_id = (SELECT id FROM users WHERE email = $1)",
        email,
    )
    await console.open(product_page)
    await console.page.get_by_role("button", name="Reveal the code").click()
    await expect(console.page.get_by_role("heading", name="Confirm it is you")).to_be_visible()
    await console.check_accessibility()
    assert code not in await console.page.content()
    await console.page.get_by_label("Password").fill("a wrong password, surely")
    await console.page.get_by_role("button", name="Confirm").click()
    await expect(console.page.get_by_text("The password or the code is wrong.")).to_be_visible()
    await console.page.get_by_label("Password").fill(PASSWORD)
    await console.page.get_by_role("button", name="Confirm").click()
    assert console.page.url.endswith(product_page)
    await console.page.get_by_role("button", name="Reveal the code").click()
    await expect(console.page.locator("#bulk-code")).to_have_text(code)

    # Setting up an authenticator app moves the second factor: asked again too.
    await pool.execute(
        "UPDATE console_sessions SET authenticated_at = now() - interval '6 minutes' "
        "WHERE user_id = (SELECT id FROM users WHERE email = $1)",
        email,
    )
    await console.open("/console/account")
    await console.page.get_by_role("button", name="Set up an authenticator app").click()
    await expect(console.page.get_by_role("heading", name="Confirm it is you")).to_be_visible()
    await expect(console.page.locator("#manual-key")).to_have_count(0)


async def test_a_persons_bulk_pages_forward_who_they_are_and_the_bulk_api_checks_it(
    new_console: NewConsole, operator: Operator, pool: Pool, system: System, session: aiohttp.ClientSession
) -> None:
    product_id = await bulk_product(operator)
    product = await operator.call("GET", f"/v1/products/{product_id}", expect=200)
    email = await new_person(pool, operator, role="operator")
    console = await new_console(operator)
    await sign_in_person(console, email)
    await console.open("/console/bulk-registrations")
    await console.page.get_by_label("Product").select_option(label=str(product["name"]))
    await console.page.get_by_label("CSV file").set_input_files(
        files=[{"name": "people.csv", "mimeType": "text/csv", "buffer": csv_text(csv_rows(3)).encode()}]
    )
    await console.page.get_by_role("button", name="Upload").click()
    await expect(console.page.get_by_text("people.csv: 3 rows checked and stored.")).to_be_visible()
    trail = await operator.call("GET", "/v1/audit-events", expect=200)
    uploaded = [e for e in trail["audit_events"] if e["action"] == "bulk.uploaded"]
    assert uploaded and uploaded[0]["actor"]["user_email"] == email  # the person, not a key

    # Straight to the bulk API: an assertion opens only with FLEETREG_SECRET_KEY, and only
    # while its session lives.
    row = await pool.fetchrow(
        "SELECT s.id::text, u.id::text AS user_id FROM console_sessions s JOIN users u ON u.id = s.user_id "
        "WHERE u.email = $1",
        email,
    )
    claims = {
        "account_id": operator.account_id,
        "user_id": row["user_id"],
        "role": "operator",
        "session_id": row["id"],
        "now": time.time(),
    }
    good = console_assertions.issue(TEST_SECRET_KEY.encode(), **claims)
    forged = console_assertions.issue(b"not the deployment's key at all, no", **claims)
    url = f"{system.bulk_url}/v1/bulk-registrations"
    statuses = {}
    for name, token in (("good", good), ("forged", forged), ("garbage", "x" * 40)):
        async with session.get(url, headers={console_assertions.HEADER: token}) as answer:
            statuses[name] = answer.status
    async with session.get(
        f"{system.operator_url}/v1/products", headers={console_assertions.HEADER: good}
    ) as operator_api:
        statuses["operator API"] = operator_api.status  # only the bulk API takes assertions
    await pool.execute("DELETE FROM console_sessions WHERE id = $1::uuid", row["id"])
    async with session.get(url, headers={console_assertions.HEADER: good}) as ended:
        statuses["ended"] = ended.status
    assert statuses == {"good": 200, "forged": 401, "garbage": 401, "operator API": 401, "ended": 401}


async def test_an_invitation_link_shows_the_invitation_and_joining_signs_the_person_in(
    new_console: NewConsole, operator: Operator, pool: Pool, system: System
) -> None:
    email = f"invited-{uuid.uuid4().hex[:8]}@example.com"
    issued = await operator.call("POST", "/v1/users", {"email": email, "role": "operator"}, expect=201)
    link = issued["invitation_url"]
    console = await new_console(operator)
    for _ in range(2):  # opening the link consumes nothing
        await console.page.goto(link)
        await expect(console.page.get_by_text(f"as {email}, with the role operator")).to_be_visible()
    await console.check_accessibility()

    await console.page.get_by_label("Password", exact=True).fill("password1234")
    await console.page.get_by_label("Password again").fill("password1234")
    await console.page.get_by_role("button", name="Join and sign in").click()
    await expect(console.page.get_by_role("alert")).to_contain_text("common or leaked")
    await console.page.get_by_label("Password", exact=True).fill(PASSWORD)
    await console.page.get_by_label("Password again").fill(PASSWORD)
    await console.page.get_by_role("button", name="Join and sign in").click()
    await expect(console.page.get_by_role("heading", name="Your account")).to_be_visible()
    await expect(console.page.get_by_role("link", name=email)).to_be_visible()
    listed = await operator.call("GET", "/v1/users", expect=200)
    assert [(u["email"], u["role"]) for u in listed["users"]] == [(email, "operator")]

    await console.page.goto(link)  # used: the link no longer works
    await expect(console.page.get_by_role("alert")).to_contain_text("no longer works")
    await expect(console.page.get_by_role("button", name="Join and sign in")).to_have_count(0)

    late = await operator.call(
        "POST",
        "/v1/users",
        {"email": f"late-{uuid.uuid4().hex[:8]}@example.com", "role": "viewer"},
        expect=201,
    )
    await pool.execute(
        "UPDATE invitations SET expires_at = now() - interval '1 minute' WHERE id = $1::uuid", late["id"]
    )
    other = await new_console(operator)
    await other.page.goto(late["invitation_url"])
    await expect(other.page.get_by_role("alert")).to_contain_text("no longer works")


async def test_a_person_changes_their_password_on_the_account_page(
    new_console: NewConsole, operator: Operator, pool: Pool
) -> None:
    email = await new_person(pool, operator)
    console = await new_console(operator)
    await sign_in_person(console, email)
    url = console.url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as elsewhere:
        # Another browser signed in with the old password (whoever knew it).
        async with elsewhere.get(f"{url}/console/sign-in") as page:
            token = page.cookies["fleetreg_console_sign_in"].value
        await elsewhere.post(f"{url}/console/sign-in/email", data={"csrf_token": token, "email": email})
        form = {"csrf_token": token, "password": PASSWORD}
        async with elsewhere.post(
            f"{url}/console/sign-in/password", data=form, allow_redirects=False
        ) as step:
            assert step.status == 303
        new = "another long passphrase, also unguessable 808"
        for current, chosen, refusal in (
            ("not my password at all", new, "the current password is wrong"),
            (PASSWORD, "password1234", "common or leaked"),
            (PASSWORD, new, None),
        ):
            async with elsewhere.get(f"{url}/console/account", allow_redirects=False) as other:
                assert other.status == 200  # a refused change ends nothing
            await console.open("/console/account")
            await console.page.get_by_label("Current password").fill(current)
            await console.page.get_by_label("New password", exact=True).fill(chosen)
            await console.page.get_by_label("New password again").fill(chosen)
            await console.page.get_by_role("button", name="Change password").click()
            await expect(console.page.locator(".flashes")).to_contain_text(refusal or "Password changed.")
        await expect(console.page.locator(".flashes")).to_contain_text(
            "Signed out everywhere else (1 session"
        )
        # The other browser's session ended with the old password; this one goes on.
        async with elsewhere.get(f"{url}/console/account", allow_redirects=False) as other:
            assert other.status == 303 and other.headers["Location"].startswith("/console/sign-in")
    await console.page.get_by_role("button", name="Sign out", exact=True).click()
    await enter_email_and_password(console, email, new)
    await expect(console.page.get_by_role("button", name="Sign out", exact=True)).to_be_visible()
