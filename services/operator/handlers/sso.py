"""Single sign-on: the account's OpenID Connect provider, set, read and removed
(shared/domain/sso.py says what may be configured; the console's sign-in uses it)."""

from __future__ import annotations

from typing import Any

from shared.db import sso, users
from shared.db.pool import Pool
from shared.db.sso import SsoProvider
from shared.db.users import SsoSignIn
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.domain.sso import SSO_CLIENT_SECRETS, checked_settings
from shared.domain.webhooks import SecretBox
from shared.errors import NotFound
from shared.settings import Secret


async def find_sso(pool: Pool, account: Account) -> SsoProvider:
    """The account's single sign-on; NotFound when it has none."""
    found = await sso.find(pool, account.id)
    if found is None:
        raise NotFound("this account has no single sign-on", field="sso")
    return found


async def configure_sso(
    pool: Pool, secret_key: Secret, account: Account, body: dict[str, Any]
) -> tuple[SsoProvider, bool]:
    """Set the account's single sign-on from a ``PUT /v1/sso`` body (InvalidInput naming
    the field; Conflict for a domain of another account); the client secret sealed with
    FLEETREG_SECRET_KEY, bound to the account. Returns it and whether it was created."""
    existing = await sso.find(pool, account.id)
    settings = checked_settings(body, creating=existing is None)
    sealed = None
    if settings.client_secret is not None:
        sealed = SecretBox(secret_key.reveal().encode(), SSO_CLIENT_SECRETS).seal(
            account.id, settings.client_secret
        )
    created = await sso.configure(pool, account, settings, sealed)
    return await find_sso(pool, account), created


async def remove_sso(pool: Pool, account: Account) -> None:
    await sso.remove(pool, account)


async def sso_for_domain(pool: Pool, domain: str) -> SsoProvider | None:
    """The single sign-on of the account whose people's addresses end with ``domain``
    (lower case, IDNA: ``shared.domain.sso.domain_of``), or None: the password form."""
    account_id = await sso.account_for_domain(pool, domain)
    return None if account_id is None else await sso.find(pool, account_id)


async def sso_of_account(pool: Pool, account_id: str) -> SsoProvider | None:
    """The account's single sign-on, or None (removed since the sign-in began)."""
    return await sso.find(pool, account_id)


def client_secret(secret_key: Secret, found: SsoProvider) -> Secret:
    """The provider's client secret, opened with FLEETREG_SECRET_KEY (bound to the account:
    a sealed secret copied to another account's row does not open). ValueError when it
    does not open (sealed under another FLEETREG_SECRET_KEY)."""
    box = SecretBox(secret_key.reveal().encode(), SSO_CLIENT_SECRETS)
    return Secret(box.open(found.account_id, bytes(found.client_secret_sealed)))


async def sign_in_through_sso(
    pool: Pool, account_id: str, email: str, subject: str, role: Role | None
) -> SsoSignIn:
    """The person the provider vouched for, made or updated (shared.db.users.sign_in_through_sso:
    Forbidden when no role is theirs, or the address is someone else's)."""
    return await users.sign_in_through_sso(pool, account_id, email, subject, role)


async def sso_required(pool: Pool, account_id: str) -> bool:
    """Whether the account's people but its owners must sign in through its provider."""
    found = await sso.find(pool, account_id)
    return found is not None and found.required
