"""People: an account's users, their invitations (the link's token shown once, consumed
when accepted), and the service accounts automation's keys belong to. The rules of who may
grant, change or remove which role are shared.domain.people's; the last owner's is the
registry's (shared/db/users.py), under the account's row lock.

:func:`invitation_for` and :func:`accept_invitation` are the console's (the invitation's
page and its sign-up form): no route of the API calls them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.db import service_accounts, users
from shared.db.accounts import IssuedApiKey
from shared.db.pool import Pool
from shared.db.service_accounts import ServiceAccount
from shared.db.users import Invitation, IssuedInvitation, Removal, User
from shared.domain import people
from shared.domain.accounts import Account, checked_key_label
from shared.domain.inputs import refuse_unknown_fields
from shared.domain.roles import KEY_ROLES, parse_role
from shared.errors import InvalidInput


@dataclass(frozen=True)
class People:
    """An account's users and its open invitations."""

    users: list[User]
    invitations: list[Invitation]


def invitation_url(console_base: str, token: str) -> str:
    """The link an invitation's token opens: ``<console base>/console/invitations/<token>``."""
    return f"{console_base.rstrip('/')}/console/invitations/{token}"


async def invite(pool: Pool, account: Account, body: dict[str, Any]) -> IssuedInvitation:
    """``POST /v1/users``: an invitation of ``email`` as ``role``, valid ``expires_in_hours``
    (1 to 720, default 72). InvalidInput naming the field; Forbidden and Conflict as
    shared.db.users.invite says."""
    refuse_unknown_fields(body, ("email", "role", "expires_in_hours"), what="an invitation")
    email = people.checked_email(body.get("email"))
    role = parse_role(body.get("role"))
    hours = people.checked_hours(body.get("expires_in_hours"))
    return await users.invite(pool, account, email, role, hours)


async def list_people(pool: Pool, account: Account) -> People:
    return People(await users.list_users(pool, account.id), await users.list_invitations(pool, account.id))


async def change_role(pool: Pool, account: Account, user_id: str, body: dict[str, Any]) -> User:
    """``PATCH /v1/users/{user_id}``: the person's new ``role`` (the only field)."""
    refuse_unknown_fields(body, ("role",), what="a user's change")
    if "role" not in body:
        raise InvalidInput("role is required", field="role", rule="required")
    return await users.change_role(pool, account, user_id, parse_role(body["role"]))


async def remove_user(pool: Pool, account: Account, user_id: str) -> Removal:
    return await users.remove_user(pool, account, user_id)


async def revoke_invitation(pool: Pool, account: Account, invitation_id: str) -> None:
    await users.revoke_invitation(pool, account, invitation_id)


async def invitation_for(pool: Pool, token: str) -> Invitation | None:
    """The open invitation of a link's token (the console's page of it), or None for an
    unknown, accepted, revoked or expired one; reading consumes nothing."""
    if not token or len(token) > 128 or not token.isascii():
        return None
    return await users.invitation_for(pool, token)


async def accept_invitation(
    pool: Pool, token: str, *, password_hash: str | None = None, sso_subject: str | None = None
) -> User:
    """Accept an invitation (the console's sign-up form, or its single sign-on callback): the
    user it makes, signing in with ``password_hash`` or ``sso_subject`` (exactly one); the
    invitation is consumed. NotFound and Conflict as shared.db.users.accept says."""
    if not token or len(token) > 128 or not token.isascii():
        raise users.invitation_gone()
    return await users.accept(pool, token, password_hash=password_hash, sso_subject=sso_subject)


async def list_service_accounts(pool: Pool, account: Account) -> list[ServiceAccount]:
    return await service_accounts.list_service_accounts(pool, account.id)


async def create_service_account(pool: Pool, account: Account, body: dict[str, Any]) -> ServiceAccount:
    """``POST /v1/service-accounts``: ``name`` and ``role`` (viewer, operator or admin)."""
    refuse_unknown_fields(body, ("name", "role"), what="a service account")
    name = people.checked_service_account_name(body.get("name"))
    role = parse_role(body.get("role"), allowed=KEY_ROLES)
    return await service_accounts.create_service_account(pool, account, name, role)


async def remove_service_account(pool: Pool, account: Account, service_account_id: str) -> int:
    return await service_accounts.remove_service_account(pool, account, service_account_id)


async def create_service_account_key(
    pool: Pool, account: Account, service_account_id: str, body: dict[str, Any], *, max_active: int
) -> tuple[IssuedApiKey, str]:
    """``POST /v1/service-accounts/{id}/api-keys``: a key of that service account with
    ``label`` and ``role`` (by default the service account's, at most the caller's)."""
    refuse_unknown_fields(body, ("label", "role"), what="a service account's key")
    label = checked_key_label(body.get("label", ""))
    role = parse_role(body["role"], allowed=KEY_ROLES) if "role" in body else None
    return await service_accounts.create_key(
        pool, account, service_account_id, label, role, max_active=max_active
    )
