"""An account's single sign-on (migration 0037): its OpenID Connect provider, sealed client
secret, the e-mail domains it signs in, and the groups' roles. Every change is audited in
its transaction (``sso.configured``, ``sso.removed``), never with the secret."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db import audit
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.domain.roles import Role
from shared.domain.sso import SsoSettings, domain_spellings
from shared.errors import Conflict, NotFound

SELECT = """SELECT p.account_id::text, p.issuer, p.client_id, p.client_secret_sealed, p.groups_claim,
                   p.group_roles::text, p.default_role, p.required, p.created_at, p.updated_at,
                   coalesce(array_agg(d.domain ORDER BY d.domain) FILTER (WHERE d.domain IS NOT NULL), '{}')
                       AS domains
            FROM sso_providers p LEFT JOIN sso_domains d ON d.account_id = p.account_id
            WHERE p.account_id = $1
            GROUP BY p.account_id"""
UPSERT = """INSERT INTO sso_providers (account_id, issuer, client_id, client_secret_sealed, groups_claim,
                                       group_roles, default_role, required)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)
            ON CONFLICT (account_id) DO UPDATE SET issuer = excluded.issuer, client_id = excluded.client_id,
                client_secret_sealed = excluded.client_secret_sealed, groups_claim = excluded.groups_claim,
                group_roles = excluded.group_roles,
                default_role = excluded.default_role, required = excluded.required, updated_at = now()
            RETURNING (xmax = 0) AS created"""
# A change that keeps the stored secret (Postgres checks NOT NULL on an upsert's proposed row,
# so it cannot be the upsert with a NULL secret).
UPDATE_SETTINGS_ONLY = """UPDATE sso_providers SET issuer = $2, client_id = $3, groups_claim = $4,
                               group_roles = $5::jsonb, default_role = $6, required = $7, updated_at = now()
                           WHERE account_id = $1"""
DELETE_DOMAINS = "DELETE FROM sso_domains WHERE account_id = $1"
INSERT_DOMAINS = "INSERT INTO sso_domains (domain, account_id) SELECT unnest($1::text[]), $2"
DELETE = "DELETE FROM sso_providers WHERE account_id = $1"
ACCOUNT_OF_DOMAIN = "SELECT account_id::text FROM sso_domains WHERE domain = $1"
# A person of another account at one of the domains: that account's people sign in e-mail
# first too, and the domain would send them to this account's provider.
PEOPLE_OF_ANOTHER_ACCOUNT = """SELECT lower(split_part(email, '@', 2)) FROM users
                               WHERE account_id <> $1 AND removed_at IS NULL
                                 AND lower(split_part(email, '@', 2)) = ANY($2::text[])
                               LIMIT 1"""


@dataclass(frozen=True)
class SsoProvider:
    """An account's single sign-on as stored; the client secret only sealed."""

    account_id: str
    issuer: str
    client_id: str
    client_secret_sealed: bytes
    allowed_domains: tuple[str, ...]
    groups_claim: str
    group_roles: dict[str, Role]
    default_role: Role | None
    required: bool
    created_at: datetime
    updated_at: datetime


async def find(pool: Pool, account_id: str) -> SsoProvider | None:
    """The account's single sign-on, or None."""
    row = await pool.fetchrow(SELECT, uuid.UUID(account_id))
    if row is None:
        return None
    return SsoProvider(
        account_id=row["account_id"],
        issuer=row["issuer"],
        client_id=row["client_id"],
        client_secret_sealed=row["client_secret_sealed"],
        allowed_domains=tuple(row["domains"]),
        groups_claim=row["groups_claim"],
        group_roles={name: Role(role) for name, role in json.loads(row["group_roles"]).items()},
        default_role=Role(row["default_role"]) if row["default_role"] else None,
        required=row["required"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def account_for_domain(pool: Pool, domain: str) -> str | None:
    """The account whose single sign-on signs in the people of ``domain`` (lower case, the
    IDNA form ``shared.domain.sso.domain_of`` gives), or None: the password form."""
    found: str | None = await pool.fetchval(ACCOUNT_OF_DOMAIN, domain)
    return found


async def configure(pool: Pool, actor: Account, settings: SsoSettings, sealed_secret: bytes | None) -> bool:
    """Set the actor's account's single sign-on (the whole of it; ``sealed_secret`` None
    keeps the stored secret, NotFound when there is none yet); True when it was created.
    Conflict (409) when one of the domains signs in to another account already, or is the
    domain of a person of another account (who would be sent to this account's provider)."""
    account = uuid.UUID(actor.id)
    try:
        async with pool.acquire() as conn, conn.transaction():
            groups = json.dumps({name: str(role) for name, role in settings.group_roles.items()})
            if sealed_secret is None:
                created = False
                status = await conn.execute(
                    UPDATE_SETTINGS_ONLY,
                    account,
                    settings.issuer,
                    settings.client_id,
                    settings.groups_claim,
                    groups,
                    settings.default_role,
                    settings.required,
                )
                if status.endswith(" 0"):
                    raise NotFound(
                        "no single sign-on yet: give client_secret to set one", field="client_secret"
                    )
            else:
                created = await conn.fetchval(
                    UPSERT,
                    account,
                    settings.issuer,
                    settings.client_id,
                    sealed_secret,
                    settings.groups_claim,
                    groups,
                    settings.default_role,
                    settings.required,
                )
            taken = await conn.fetchval(
                PEOPLE_OF_ANOTHER_ACCOUNT, account, domain_spellings(settings.allowed_domains)
            )
            if taken is not None:
                raise Conflict(
                    f"people of another account sign in with addresses at {taken}: a domain "
                    "belongs to one account, and this one would send them to this account's provider",
                    field="allowed_domains",
                    rule="domain-people",
                )
            await conn.execute(DELETE_DOMAINS, account)
            await conn.execute(INSERT_DOMAINS, list(settings.allowed_domains), account)
            await audit.record(
                conn,
                actor,
                "sso.configured",
                "sso",
                actor.id,
                {
                    "issuer": settings.issuer,
                    "client_id": settings.client_id,
                    "allowed_domains": list(settings.allowed_domains),
                    "group_roles": {name: str(role) for name, role in settings.group_roles.items()},
                    "default_role": settings.default_role,
                    "required": settings.required,
                    "client_secret": "set" if sealed_secret is not None else "kept",
                },
            )
    except asyncpg.UniqueViolationError:
        raise Conflict(
            "one of allowed_domains signs in to another account already: a domain belongs to one account",
            field="allowed_domains",
            rule="domain-unique",
        ) from None
    return created


async def remove(pool: Pool, actor: Account) -> None:
    """Remove the actor's account's single sign-on (NotFound when there is none): its people
    sign in with a password again (those who have none are sent an invitation anew)."""
    async with pool.acquire() as conn, conn.transaction():
        status = await conn.execute(DELETE, uuid.UUID(actor.id))
        if status.endswith(" 0"):
            raise NotFound("this account has no single sign-on")
        await audit.record(conn, actor, "sso.removed", "sso", actor.id, {})
