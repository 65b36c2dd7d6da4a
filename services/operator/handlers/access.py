"""Access: the account's API keys (listed, created with a label and a scope, revoked).
Who a key or a console session is, is decided in shared.http (``authenticate``) and
services/operator/console/auth.py; no handler stands between them and the repository."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from shared.db import accounts, certificates
from shared.db.accounts import ApiKey, IssuedApiKey
from shared.db.pool import Pool
from shared.domain.accounts import Account, checked_key_label
from shared.domain.certificates import IssuingCa
from shared.domain.inputs import refuse_unknown_fields
from shared.domain.roles import KEY_ROLES, Role, a_role, at_least, parse_role
from shared.domain.uploaded_ca import checked_upload
from shared.errors import Conflict, Forbidden, InvalidInput, NotFound
from shared.settings import Secret


async def list_api_keys(pool: Pool, account: Account) -> list[ApiKey]:
    """The account's keys for an admin; below admin, the caller's own (shared.db.accounts.own_keys)."""
    return await accounts.list_api_keys(pool, account.id, owned_by=account)


def api_key_request(body: dict[str, Any]) -> tuple[str, bool, Role | None]:
    """The (label, read_only, role) a ``POST /v1/api-keys`` body asks for; InvalidInput
    naming the field for an unknown field (``readonly`` must never leave a full key), a
    label that is not up to 100 printable ASCII characters or only spaces, a read_only not a
    boolean, a role not one a key may carry, or ``read_only`` with a role other than viewer."""
    refuse_unknown_fields(body, ("label", "read_only", "role"), what="an API key")
    label = checked_key_label(body.get("label", ""))
    read_only = body.get("read_only", False)
    if not isinstance(read_only, bool):
        raise InvalidInput("read_only must be true or false", field="read_only", rule="type=boolean")
    role = parse_role(body["role"], allowed=KEY_ROLES) if "role" in body else None
    if read_only and role not in (None, Role.VIEWER):
        raise InvalidInput(
            "read_only is the viewer role: give one or the other", field="read_only", rule="read_only=viewer"
        )
    return label, read_only, role


async def create_api_key(
    pool: Pool, account: Account, body: dict[str, Any], *, max_active: int | None = None
) -> IssuedApiKey:
    label, read_only, role = api_key_request(body)
    return await accounts.create_api_key(
        pool, account, label, role=role, read_only=read_only, max_active=max_active
    )


async def revoke_api_key(pool: Pool, account: Account, key_id: str) -> None:
    """Revoke one of the account's active keys (NotFound otherwise). An admin (or owner)
    revokes any; below admin (a viewer too: a leaked dashboard key is ended by its holder)
    only a key of its own (the same person's, or the same service account's) of a role not
    above its own: others' keys are an admin's to manage (Forbidden, 403). Checked against
    the key as listed, then revoked by ID."""
    if not at_least(account.role, Role.ADMIN):
        found = next((k for k in await accounts.list_api_keys(pool, account.id) if k.id == key_id), None)
        if found is not None and found.revoked_at is None and not _own_key(account, found):
            raise Forbidden(
                f"{a_role(account.role)} revokes only its own keys of its role or lower; this key "
                f"({found.role}) is an admin's to revoke",
                field="key_id",
                rule=f"role>={Role.ADMIN}",
            )
    await accounts.revoke_api_key(pool, account, key_id)


def _own_key(actor: Account, key: ApiKey) -> bool:
    same_person = key.user_email is not None and key.user_email == actor.user_email
    same_service = key.service_account is not None and key.service_account == actor.service_account
    return (same_person or same_service) and at_least(actor.role, key.role)


async def issuing_ca(pool: Pool, secret_key: Secret, account: Account) -> IssuingCa:
    """The account's issuing CA of device certificates (created on first use, its key
    sealed with FLEETREG_SECRET_KEY); NotFound when the account is gone."""
    found = await certificates.issuing_ca(pool, secret_key.reveal().encode(), account.id)
    if found is None:
        raise NotFound("no such account")
    return found


class IssuingCaInUse(Conflict):
    """The account holds unexpired device certificates of its current CA (409): its CRL is
    signed by that one CA, so replacing it would orphan their revocations."""

    code = "issuing_ca_in_use"

    def __init__(self, held: int) -> None:
        super().__init__(
            f"the account holds {held} unexpired device certificates (revoked ones too) issued by "
            "its current CA: the CRL at /v1/accounts/{account_id}/crl is signed by one CA, so "
            "replacing it would orphan the revocations of certificates already out; upload "
            "before the first device certificate, or once they have all expired",
            field="certificate",
            rule="no_unexpired_certificates",
        )


async def upload_issuing_ca(
    pool: Pool, secret_key: Secret, account: Account, body: dict[str, Any]
) -> IssuingCa:
    """``PUT /v1/account/issuing-ca``: the intermediate and key of ``body`` (checked by
    shared.domain.uploaded_ca.checked_upload: InvalidInput 400) become the account's issuing
    CA, while it holds no unexpired device certificate (IssuingCaInUse 409) and no other
    account's uploaded CA has its subject (Conflict 409, ``subject_unique``); audited
    ``issuing_ca.uploaded`` (subject, fingerprint). The same intermediate and chain as the
    account's uploaded CA (a retried PUT) changes nothing and answers it, certificates out
    or not."""
    # In a thread: checking an RSA-4096 key (OpenSSL tests its primes) takes about half a
    # second, which held every other request of this process.
    upload = await asyncio.to_thread(checked_upload, body)
    key = secret_key.reveal().encode()
    await issuing_ca(pool, secret_key, account)  # the row to replace (created on first use)
    ca = upload.issuing_ca(account.id, datetime.now(UTC))
    refused = await certificates.replace_issuing_ca(pool, key, ca, account, upload.fingerprint)
    if refused is not None and refused.held:
        raise IssuingCaInUse(refused.held)
    if refused is not None:
        raise Conflict(
            "another account's issuing CA has this subject: a relying party finds a CRL by its "
            "issuer's name, so each account needs an intermediate of its own",
            field="certificate",
            rule="subject_unique",
        )
    return await issuing_ca(pool, secret_key, account)  # as stored (a retried PUT: since when)
