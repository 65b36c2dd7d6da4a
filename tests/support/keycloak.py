"""The test identity provider (deploy/local/keycloak.sh, realm
deploy/local/keycloak/fleetreg-realm.json) and a person signing in at it without a browser:
the authorization URL fetched, the login form Keycloak serves read with the standard
library's HTML parser and posted, the redirect to the callback taken (nothing listens there:
its query parameters are what a browser would bring to fleetreg).

The realm's users, passwords and client secrets are a test fixture, known on purpose."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import aiohttp

from shared.oidc import Provider
from shared.settings import Secret

REALM = "fleetreg"
CONSOLE_CLIENT_ID = "fleetreg-console"
CONSOLE_CLIENT_SECRET = "fleetreg-console-test-secret"
OTHER_CLIENT_ID = "fleetreg-other"
OTHER_CLIENT_SECRET = "fleetreg-other-test-secret"
ADMIN_CLIENT_ID = "fleetreg-test-admin"
ADMIN_CLIENT_SECRET = "fleetreg-test-admin-secret"
# Every user's password is its name before the @, then "-password".
USERS = {
    "alice@sso.example.com": ("alice-password", "fleet-admins"),
    "olga@sso.example.com": ("olga-password", "fleet-operators"),
    "victor@sso.example.com": ("victor-password", "fleet-viewers"),
    "mallory@evil.test": ("mallory-password", "fleet-admins"),
    "dora@sso.example.com": ("dora-password", "fleet-operators"),
}


@dataclass(frozen=True)
class KeycloakRealm:
    """Where the running provider is: its base URL (``http://127.0.0.1:18280``)."""

    base_url: str

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{REALM}"

    def console(self) -> Provider:
        """fleetreg's console as the realm knows it."""
        return Provider(
            issuer=self.issuer, client_id=CONSOLE_CLIENT_ID, client_secret=Secret(CONSOLE_CLIENT_SECRET)
        )

    def other_client(self) -> Provider:
        """Another application of the same realm: its ID tokens are not the console's."""
        return Provider(
            issuer=self.issuer, client_id=OTHER_CLIENT_ID, client_secret=Secret(OTHER_CLIENT_SECRET)
        )


class LoginForm(HTMLParser):
    """The action of Keycloak's login form (``id="kc-form-login"``), and the text of the
    page's error message when it shows one."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form" and found.get("id") == "kc-form-login":
            self.action = found.get("action")

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


class NoCode(AssertionError):
    """The provider did not send the person back with a code; ``page`` is its page's text."""

    def __init__(self, message: str, page: str) -> None:
        super().__init__(f"{message}: {page[:300]}")
        self.page = page


async def sign_in(authorization_url: str, email: str, password: str) -> dict[str, str]:
    """A person at the provider: open ``authorization_url``, fill the login form, and
    return the query parameters of the redirect back to the callback. Raises NoCode when
    the provider answers with a page instead (a disabled account, a wrong password)."""
    # As a browser keeps them: cookies of an IP address host, and Keycloak's Secure cookies
    # sent back over http to a loopback origin (a browser's secure context).
    parts = urllib.parse.urlsplit(authorization_url)
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[f"{parts.scheme}://{parts.netloc}"])
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(authorization_url, allow_redirects=True) as page:
            html = await page.text()
            if page.status != 200:
                raise NoCode(f"the authorization URL answered HTTP {page.status}", html)
        form = LoginForm()
        form.feed(html)
        if form.action is None:
            raise NoCode("the provider served no login form", " ".join(form.text))
        async with session.post(
            form.action,
            data={"username": email, "password": password, "credentialId": ""},
            allow_redirects=False,
        ) as answer:
            location = answer.headers.get("Location")
            body = await answer.text()
        if answer.status not in (302, 303) or location is None:
            page_text = LoginForm()
            page_text.feed(body)
            raise NoCode(f"the login answered HTTP {answer.status}, not a redirect", " ".join(page_text.text))
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        return {name: values[0] for name, values in query.items()}


async def admin_token(provider: KeycloakRealm) -> str:
    """An access token of the realm's administration client (client credentials)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{provider.issuer}/protocol/openid-connect/token",
            data={
                "grant_type": "client_credentials",
                "client_id": ADMIN_CLIENT_ID,
                "client_secret": ADMIN_CLIENT_SECRET,
            },
        ) as answer,
    ):
        answer.raise_for_status()
        body: dict[str, Any] = await answer.json()
    return str(body["access_token"])


async def set_user_enabled(provider: KeycloakRealm, email: str, enabled: bool) -> None:
    """Enable or disable a user at the provider through Keycloak's admin REST API."""
    token = await admin_token(provider)
    base = f"{provider.base_url}/admin/realms/{REALM}/users"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(base, params={"email": email, "exact": "true"}) as answer:
            answer.raise_for_status()
            users: list[dict[str, Any]] = await answer.json()
        if len(users) != 1:
            raise AssertionError(f"{len(users)} users at the provider have the e-mail {email}")
        async with session.put(f"{base}/{users[0]['id']}", json={"enabled": enabled}) as answer:
            answer.raise_for_status()


async def add_signing_key(provider: KeycloakRealm, name: str) -> str:
    """A new RSA signing key at the provider, preferred over the realm's own (a key
    rotation); returns its component ID, for :func:`remove_signing_key`."""
    token = await admin_token(provider)
    base = f"{provider.base_url}/admin/realms/{REALM}"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(base) as answer:
            answer.raise_for_status()
            realm: dict[str, Any] = await answer.json()
        component = {
            "name": name,
            "providerId": "rsa-generated",
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm["id"],
            "config": {"priority": ["1000"], "keySize": ["2048"], "active": ["true"], "enabled": ["true"]},
        }
        async with session.post(f"{base}/components", json=component) as answer:
            answer.raise_for_status()
            location = answer.headers["Location"]
    return location.rsplit("/", 1)[1]


async def remove_signing_key(provider: KeycloakRealm, component_id: str) -> None:
    token = await admin_token(provider)
    url = f"{provider.base_url}/admin/realms/{REALM}/components/{component_id}"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
        session.delete(url) as answer,
    ):
        answer.raise_for_status()
