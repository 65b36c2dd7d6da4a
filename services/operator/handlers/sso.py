"""Single sign-on: the account's OpenID Connect provider, set, read and removed
(shared/domain/sso.py says what may be configured; the console's sign-in uses it)."""

from __future__ import annotations

from typing import Any

from shared.db import sso
from shared.db.pool import Pool
from shared.db.sso import SsoProvider
from shared.domain.accounts import Account
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
