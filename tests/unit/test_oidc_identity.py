"""shared.oidc's rules on verified claims, without a provider: who a person is, and who
is refused (the whole flow runs against Keycloak in tests/integration/test_oidc.py)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from shared.oidc import OidcClient, Pending, Provider, SignInRefused, code_challenge
from shared.settings import Secret

PROVIDER = Provider(
    issuer="https://id.example.com/realms/fleet",
    client_id="fleetreg-console",
    client_secret=Secret("s3cret"),
    allowed_domains=("example.com",),
)


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": PROVIDER.issuer,
        "sub": "f3a1",
        "email": "Alice@Example.com",
        "email_verified": True,
        "groups": ["fleet-admins", "fleet-viewers"],
        "name": "Alice Admin",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def test_the_identity_carries_the_lowercased_email_groups_and_name() -> None:
    identity = OidcClient.identity(PROVIDER, claims())
    assert identity.email == "alice@example.com"
    assert identity.groups == ("fleet-admins", "fleet-viewers")
    assert (identity.issuer, identity.subject, identity.name) == (PROVIDER.issuer, "f3a1", "Alice Admin")


def test_groups_come_from_the_configured_claim_whatever_their_shape() -> None:
    roles = Provider(PROVIDER.issuer, PROVIDER.client_id, PROVIDER.client_secret, groups_claim="roles")
    assert OidcClient.identity(roles, claims(roles="fleet-operators")).groups == ("fleet-operators",)
    assert OidcClient.identity(roles, claims(roles=["a", 3, "b"])).groups == ("a", "b")
    assert OidcClient.identity(roles, claims()).groups == ()
    assert OidcClient.identity(PROVIDER, claims(groups={"not": "a list"})).groups == ()


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"email": None}, "email"),
        ({"email": "no-at-sign"}, "email"),
        ({"email_verified": None}, "email_verified"),
        ({"email_verified": False}, "email_verified"),
        ({"email_verified": "false"}, "email_verified"),
        ({"email": "mallory@evil.test"}, "email_domain"),
        ({"email": "alice@example.com.evil.test"}, "email_domain"),
    ],
)
def test_a_person_without_a_verified_email_of_an_allowed_domain_is_refused(
    changes: dict[str, Any], rule: str
) -> None:
    with pytest.raises(SignInRefused) as refused:
        OidcClient.identity(PROVIDER, claims(**changes))
    assert refused.value.rule == rule
    assert refused.value.status == 401 and refused.value.code == "sso_refused"


def test_a_verified_email_may_be_the_string_true_and_any_domain_when_none_is_named() -> None:
    assert OidcClient.identity(PROVIDER, claims(email_verified="true")).email == "alice@example.com"
    anyone = Provider(PROVIDER.issuer, PROVIDER.client_id, PROVIDER.client_secret)
    assert OidcClient.identity(anyone, claims(email="m@evil.test")).email == "m@evil.test"


def test_the_code_challenge_is_s256_of_the_verifier() -> None:
    verifier = "x" * 43
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    assert code_challenge(verifier) == expected
    assert "=" not in code_challenge("y" * 128)


def test_a_session_without_a_pending_sign_in_is_refused() -> None:
    for value in (
        {},
        {"state": "s"},
        {"state": "s", "nonce": "n", "code_verifier": "v", "redirect_uri": "r", "issued_at": "soon"},
    ):
        with pytest.raises(SignInRefused) as refused:
            Pending.from_dict(value)
        assert refused.value.rule == "pending"


def test_the_client_secret_is_never_printed() -> None:
    assert "s3cret" not in repr(PROVIDER) and "s3cret" not in str(PROVIDER)
