"""shared.oidc against a real OpenID Connect provider: Keycloak with the test realm
(deploy/local/keycloak.sh, the ``keycloak`` fixture), the authorization code flow driven
without a browser (tests/support/keycloak.py). Each refusal names the check that failed,
and no token, code or secret reaches a log or an error's message."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from shared import oidc
from shared.errors import InvalidInput
from shared.oidc import OidcClient, Pending, Provider, ProviderUnavailable, SignInRefused, code_challenge
from tests.support.keycloak import (
    CONSOLE_CLIENT_SECRET,
    OTHER_CLIENT_SECRET,
    USERS,
    KeycloakRealm,
    NoCode,
    add_signing_key,
    remove_signing_key,
    set_user_enabled,
    sign_in,
)
from tests.support.system import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Nothing listens there: the provider redirects the "browser" to it, and the test reads the
# redirect. Keycloak ignores the port of a loopback redirect URI (RFC 8252 section 7.3).
CALLBACK = "http://127.0.0.1:18081/console/sso/callback"


@pytest.fixture
async def client() -> AsyncIterator[OidcClient]:
    """The test provider is on 127.0.0.1: private addresses allowed, as the local stack does."""
    async with OidcClient(allow_private=True) as opened:
        yield opened


async def signed_in(
    client: OidcClient, provider: Provider, email: str, password: str | None = None
) -> tuple[Pending, dict[str, str]]:
    """A sign-in begun and the person through the provider's login: the pending sign-in
    and the callback's query parameters."""
    url, pending = await client.begin(provider, CALLBACK)
    callback = await sign_in(url, email, password if password is not None else USERS[email][0])
    return pending, callback


async def refusal(
    client: OidcClient, provider: Provider, pending: Pending, callback: dict[str, str]
) -> SignInRefused:
    with pytest.raises(SignInRefused) as refused:
        await client.finish(provider, pending, callback)
    return refused.value


async def test_the_authorization_url_asks_for_the_code_flow_with_pkce(
    keycloak: KeycloakRealm, client: OidcClient
) -> None:
    url, pending = await client.begin(keycloak.console(), CALLBACK)
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert url.startswith(f"{keycloak.issuer}/protocol/openid-connect/auth?")
    assert query["response_type"] == "code"
    assert query["scope"] == "openid email profile"
    assert query["client_id"] == "fleetreg-console"
    assert query["redirect_uri"] == CALLBACK == pending.redirect_uri
    assert query["state"] == pending.state and query["nonce"] == pending.nonce
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == code_challenge(pending.code_verifier)
    assert pending.code_verifier not in url
    assert 43 <= len(pending.code_verifier) <= 128
    assert abs(pending.issued_at - time.time()) < 60
    assert Pending.from_dict(pending.to_dict()) == pending
    again = (await client.begin(keycloak.console(), CALLBACK))[1]
    assert {again.state, again.nonce, again.code_verifier}.isdisjoint(
        {pending.state, pending.nonce, pending.code_verifier}
    )


@pytest.mark.parametrize(
    ("email", "group"),
    [
        ("alice@sso.example.com", "fleet-admins"),
        ("olga@sso.example.com", "fleet-operators"),
        ("victor@sso.example.com", "fleet-viewers"),
    ],
)
async def test_a_person_signs_in_with_their_groups(
    keycloak: KeycloakRealm, client: OidcClient, email: str, group: str
) -> None:
    provider = dataclasses.replace(keycloak.console(), allowed_domains=("sso.example.com",))
    pending, callback = await signed_in(client, provider, email)
    assert callback["iss"] == keycloak.issuer

    identity = await client.finish(provider, pending, callback)

    assert identity.email == email
    assert identity.groups == (group,)
    assert identity.issuer == keycloak.issuer
    assert identity.subject
    assert identity.name is not None


async def test_a_person_outside_the_allowed_domains_is_refused(
    keycloak: KeycloakRealm, client: OidcClient
) -> None:
    provider = dataclasses.replace(keycloak.console(), allowed_domains=("sso.example.com",))
    pending, callback = await signed_in(client, provider, "mallory@evil.test")

    refused = await refusal(client, provider, pending, callback)

    assert refused.rule == "email_domain"
    assert "evil.test" in refused.message


async def test_a_tampered_state_is_refused(keycloak: KeycloakRealm, client: OidcClient) -> None:
    provider = keycloak.console()
    pending, callback = await signed_in(client, provider, "alice@sso.example.com")

    refused = await refusal(client, provider, pending, {**callback, "state": callback["state"][:-1] + "x"})
    assert refused.rule == "state"
    assert refused.status == 401 and refused.code == "sso_refused"
    missing = await refusal(client, provider, pending, {k: v for k, v in callback.items() if k != "state"})
    assert missing.rule == "state"
    # The untampered callback still signs in: the refusals spent nothing at the provider.
    assert (await client.finish(provider, pending, callback)).email == "alice@sso.example.com"


async def test_a_wrong_nonce_is_refused(keycloak: KeycloakRealm, client: OidcClient) -> None:
    provider = keycloak.console()
    pending, callback = await signed_in(client, provider, "alice@sso.example.com")

    refused = await refusal(
        client, provider, dataclasses.replace(pending, nonce=secrets.token_urlsafe(32)), callback
    )

    assert refused.rule == "nonce"


async def test_a_wrong_code_verifier_is_refused_by_the_provider(
    keycloak: KeycloakRealm, client: OidcClient
) -> None:
    provider = keycloak.console()
    pending, callback = await signed_in(client, provider, "alice@sso.example.com")

    refused = await refusal(
        client, provider, dataclasses.replace(pending, code_verifier=secrets.token_urlsafe(64)), callback
    )

    assert refused.rule == "token_exchange"
    assert "invalid_grant" in refused.message
    assert callback["code"] not in refused.message


async def test_a_wrong_client_secret_is_refused_by_the_provider(
    keycloak: KeycloakRealm, client: OidcClient
) -> None:
    provider = keycloak.console()
    pending, callback = await signed_in(client, provider, "alice@sso.example.com")
    wrong = dataclasses.replace(provider, client_secret=type(provider.client_secret)("not-the-secret"))

    refused = await refusal(client, wrong, pending, callback)

    assert refused.rule == "token_exchange"
    assert "not-the-secret" not in refused.message


async def test_an_id_token_of_another_client_is_refused(keycloak: KeycloakRealm, client: OidcClient) -> None:
    other = keycloak.other_client()
    pending, callback = await signed_in(client, other, "alice@sso.example.com")
    tokens = await client.exchange_code(other, pending, callback["code"])
    # The token is good for the application it was issued to ...
    assert (await client.verify_id_token(other, tokens["id_token"], nonce=pending.nonce))[
        "aud"
    ] == "fleetreg-other"

    # ... and not for the console, signed by the same realm's key though it is.
    with pytest.raises(SignInRefused) as refused:
        await client.verify_id_token(keycloak.console(), tokens["id_token"], nonce=pending.nonce)
    assert refused.value.rule == "aud"


async def test_an_id_token_of_another_issuer_is_refused(keycloak: KeycloakRealm, client: OidcClient) -> None:
    """The same Keycloak under another name is another issuer (dev mode names itself after
    the host it is asked on): same signing keys, so only the ``iss`` check stops the token."""
    base = urllib.parse.urlsplit(keycloak.base_url)
    if base.hostname != "127.0.0.1":
        pytest.skip("needs the provider on 127.0.0.1, also reachable as localhost")
    provider = keycloak.console()
    pending, callback = await signed_in(client, provider, "alice@sso.example.com")
    tokens = await client.exchange_code(provider, pending, callback["code"])
    elsewhere = dataclasses.replace(provider, issuer=keycloak.issuer.replace("127.0.0.1", "localhost"))
    assert (await client.discover(elsewhere.issuer)).issuer == elsewhere.issuer

    with pytest.raises(SignInRefused) as refused:
        await client.verify_id_token(elsewhere, tokens["id_token"], nonce=pending.nonce)
    assert refused.value.rule == "iss"
    # The callback's RFC 9207 "iss" parameter is checked too, before any exchange.
    again, callback = await signed_in(client, provider, "alice@sso.example.com")
    assert (await refusal(client, elsewhere, again, callback)).rule == "iss"


async def test_a_user_disabled_at_the_provider_cannot_sign_in_again(
    keycloak: KeycloakRealm, client: OidcClient
) -> None:
    provider = keycloak.console()
    await set_user_enabled(keycloak, "dora@sso.example.com", True)  # a run stopped halfway left it disabled
    try:
        pending, callback = await signed_in(client, provider, "dora@sso.example.com")
        assert (await client.finish(provider, pending, callback)).email == "dora@sso.example.com"

        await set_user_enabled(keycloak, "dora@sso.example.com", False)

        with pytest.raises(NoCode) as no_code:
            await signed_in(client, provider, "dora@sso.example.com")
        assert "disabled" in no_code.value.page.lower()
    finally:
        await set_user_enabled(keycloak, "dora@sso.example.com", True)


async def test_a_stale_sign_in_and_a_provider_error_are_refused(
    keycloak: KeycloakRealm, client: OidcClient
) -> None:
    provider = keycloak.console()
    pending, callback = await signed_in(client, provider, "alice@sso.example.com")

    stale = dataclasses.replace(pending, issued_at=time.time() - 3600)
    assert (await refusal(client, provider, stale, callback)).rule == "expired"
    denied = {"state": pending.state, "error": "access_denied"}
    assert (await refusal(client, provider, pending, denied)).rule == "provider_error"
    # An error without this sign-in's state is anybody's link: refused for its state.
    assert (await refusal(client, provider, pending, {"error": "access_denied"})).rule == "state"
    with pytest.raises(SignInRefused) as refused:
        Pending.from_dict({"state": "s"})
    assert refused.value.rule == "pending"


async def test_no_secret_or_token_reaches_the_logs(
    keycloak: KeycloakRealm, client: OidcClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = keycloak.console()
    pending, callback = await signed_in(client, provider, "alice@sso.example.com")
    tokens = await client.exchange_code(provider, pending, callback["code"])
    await client.verify_id_token(provider, tokens["id_token"], nonce=pending.nonce)
    again, callback_again = await signed_in(client, provider, "alice@sso.example.com")
    wrong = await refusal(
        client, provider, dataclasses.replace(again, code_verifier="x" * 64), callback_again
    )

    secret_values = [
        CONSOLE_CLIENT_SECRET,
        OTHER_CLIENT_SECRET,
        callback["code"],
        callback_again["code"],
        pending.code_verifier,
        tokens["id_token"],
        tokens["access_token"],
        tokens["refresh_token"],
    ]
    for value in secret_values:
        assert value not in caplog.text
        assert value not in str(wrong) and value not in str(wrong.to_dict())
    assert "Secret('********')" in repr(provider)
    # The provider's own log (when the fixture started it here) holds no password or secret,
    # not even the master realm administrator's that deploy/local/keycloak.sh made.
    log = ROOT / "var" / "log" / "keycloak.log"
    if log.exists():
        text = log.read_text(errors="replace")
        admin = ROOT / "var" / "keycloak" / "admin-password"
        admin_password = [admin.read_text().strip()] if admin.exists() else []
        for value in [CONSOLE_CLIENT_SECRET, *admin_password, *(password for password, _ in USERS.values())]:
            assert value not in text


async def test_a_loopback_issuer_is_refused_without_the_private_address_permission(
    keycloak: KeycloakRealm,
) -> None:
    async with OidcClient(allow_private=False) as strict:
        with pytest.raises(InvalidInput) as literal:
            await strict.begin(keycloak.console(), CALLBACK)
        assert literal.value.field == "issuer"
        assert literal.value.rule == "public-address"
        assert "FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS" in literal.value.message

        by_name = keycloak.issuer.replace("127.0.0.1", "localhost")
        with pytest.raises(InvalidInput) as named:
            await strict.discover(by_name)
        assert named.value.rule == "public-address"


async def test_keys_are_fetched_again_once_for_an_unknown_key_id(
    keycloak: KeycloakRealm, client: OidcClient, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    """The provider rotates its signing key: the cached key set lacks the new key's ID, the
    client fetches the set once more and accepts the token. A made-up key ID costs at most
    one fetch per interval, and is refused."""
    fetches: list[str] = []
    fetch_keys = client._fetch_keys

    async def counted(jwks_uri: str) -> Any:
        fetches.append(jwks_uri)
        return await fetch_keys(jwks_uri)

    monkeypatch.setattr(client, "_fetch_keys", counted)
    provider = keycloak.console()
    pending, callback = await signed_in(client, provider, "alice@sso.example.com")
    assert (await client.finish(provider, pending, callback)).email == "alice@sso.example.com"
    assert len(fetches) == 1

    component = await add_signing_key(keycloak, f"rotated-{unique}")
    try:
        pending, callback = await signed_in(client, provider, "alice@sso.example.com")
        tokens = await client.exchange_code(provider, pending, callback["code"])
        # Within the interval the set is not fetched again: the new key is unknown.
        monkeypatch.setattr(oidc, "KEYS_REFETCH_MIN_INTERVAL_S", 3600.0)
        with pytest.raises(SignInRefused) as refused:
            await client.verify_id_token(provider, tokens["id_token"], nonce=pending.nonce)
        assert refused.value.rule == "kid"
        assert len(fetches) == 1

        monkeypatch.setattr(oidc, "KEYS_REFETCH_MIN_INTERVAL_S", 0.0)
        claims = await client.verify_id_token(provider, tokens["id_token"], nonce=pending.nonce)
        assert claims["email"] == "alice@sso.example.com"
        assert len(fetches) == 2

        _, payload, signature = tokens["id_token"].split(".")
        forged_header = jwt.utils.base64url_encode(
            jwt.utils.force_bytes('{"alg":"RS256","typ":"JWT","kid":"made-up-' + unique + '"}')
        ).decode()
        with pytest.raises(SignInRefused) as made_up:
            await client.verify_id_token(
                provider, f"{forged_header}.{payload}.{signature}", nonce=pending.nonce
            )
        assert made_up.value.rule == "kid"
        assert len(fetches) == 3  # one more fetch, not a loop
    finally:
        await remove_signing_key(keycloak, component)


async def test_a_provider_that_is_down_missing_or_misnamed_is_a_clear_error(
    keycloak: KeycloakRealm, client: OidcClient
) -> None:
    with pytest.raises(ProviderUnavailable) as down:
        await client.discover(f"http://127.0.0.1:{free_port()}/realms/fleetreg")
    assert down.value.status == 503 and "cannot connect" in down.value.message

    with pytest.raises(ProviderUnavailable) as missing:
        await client.discover(f"{keycloak.base_url}/realms/no-such-realm")
    assert "HTTP 404" in missing.value.message

    # OpenID Connect Discovery 4.3: the document must name the issuer exactly as configured.
    with pytest.raises(InvalidInput) as misnamed:
        await client.discover(keycloak.issuer + "/")
    assert misnamed.value.field == "issuer" and misnamed.value.rule == "issuer-match"
