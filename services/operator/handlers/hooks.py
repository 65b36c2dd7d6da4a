"""A registration hook's operator surface (docs/registration-hook.md, "Operator surface"):
a test call with a sample request, and the recent calls. Setting a hook is the
registration's own update (handlers/products.py).

The test makes one real call through the caller it is handed (``HookCalls``: the
operator's ``shared.hook_caller.HookCaller``, opened by its resources), so this module
does no HTTP itself. Every function takes the registration's kind: a bulk registration's
hook is tested and listed by the same code."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from services.operator.handlers.query import only
from shared.db import hook_calls, registrations
from shared.db.hook_calls import HookCall
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.domain.hooks import HOOK_SECRETS, HookRequest
from shared.domain.identifiers import validate_hardware_id
from shared.domain.products import RegistrationKind
from shared.domain.webhooks import SecretBox
from shared.errors import Conflict, InvalidInput, shortened
from shared.hook_caller import Hook, HookResult
from shared.settings import Secret

# The hardware ID a test asks about when the operator names none.
SAMPLE_HARDWARE_ID = "SAMPLE-0001"
# A test call's ID (its webhook-id) starts with this: the hook (and its logs) can tell a
# test from a device's call, whose IDs are "msg_..." (shared.domain.hooks.call_id).
TEST_CALL_PREFIX = "test_"
CALLS_DEFAULT = 50
CALLS_MAX = 500


class HookCalls(Protocol):
    """What makes the call (shared.hook_caller.HookCaller)."""

    async def call(self, hook: Hook, request: HookRequest) -> HookResult: ...


@dataclass(frozen=True)
class HookTest:
    """A test call's request and its result (the outcome, the HTTP status, the latency,
    the hook's answer or the failure's text)."""

    request: HookRequest
    result: HookResult


def _sample_hardware_id(body: dict[str, Any]) -> str:
    unknown = sorted(set(body) - {"hardware_id"})
    if unknown:
        raise InvalidInput(
            f"unknown field {shortened(unknown[0])!r}: a test takes only hardware_id",
            field=shortened(unknown[0]),
            rule="known_fields",
        )
    if body.get("hardware_id") is None:
        return SAMPLE_HARDWARE_ID
    return validate_hardware_id(body["hardware_id"], assigned=False)


async def sample_call(
    pool: Pool,
    account: Account,
    registration_id: str,
    body: dict[str, Any],
    *,
    secret_key: Secret,
    caller: HookCalls,
    kind: RegistrationKind = "auto",
) -> HookTest:
    """Call the registration's hook once with a sample request (``body``: optional
    ``hardware_id``, default SAMPLE-0001): signed with its secret, through the caller's
    address checks and the hook's timeout, ``decision`` ``new``, a fresh request ID, a call
    ID of its own starting ``test_``, no source. Nothing is registered and no call row is
    written; audited as ``<kind>_registration.hook_tested`` (the host, the outcome).
    NotFound outside the account; Conflict when the registration has no hook (or its
    secret no longer opens under FLEETREG_SECRET_KEY)."""
    hardware_id = _sample_hardware_id(body)
    registration = await registrations.get_registration(pool, account.id, kind, registration_id)
    hook = await registrations.hook_of(pool, registration_id)
    if hook is None:
        raise Conflict(
            f"{kind} registration {registration_id} has no hook to test: set one with hook_url first",
            field="hook_url",
            rule="hook_required",
        )
    try:
        secret = SecretBox(secret_key.reveal().encode(), HOOK_SECRETS).open(
            registration_id, hook.secret_sealed
        )
    except ValueError as exc:
        raise Conflict(
            "the hook's signing secret does not open with this FLEETREG_SECRET_KEY: set hook_url again "
            "for a new secret",
            field="hook_url",
            rule="secret_unreadable",
        ) from exc
    request = HookRequest(
        call_id=TEST_CALL_PREFIX + uuid.uuid4().hex,
        request_id=str(uuid.uuid4()),
        hardware_id=hardware_id,
        fingerprint="",
        decision="new",
        assigned_hardware_id=hardware_id,
        product_id=registration.product_id,
        registration_id=registration_id,
        attestation=registration.attestation,
        source="",
        protocol="native",
    )
    # Its own breaker and slots ("test:" + ID): a failing test never opens the breaker a
    # device's call would meet (those are the notifier's; this caller is the operator's).
    result = await caller.call(Hook(f"test:{registration_id}", hook.url, secret, hook.timeout_ms), request)
    await hook_calls.record_test(
        pool, account, kind, registration_id, urlsplit(hook.url).hostname or "", result.outcome
    )
    return HookTest(request, result)


def calls_limit(query: dict[str, str]) -> int:
    """``limit`` of the recent calls: 1-500, 50 by default; no other parameter."""
    only(query, ("limit",))
    raw = query.get("limit", str(CALLS_DEFAULT))
    try:
        limit = int(raw)
    except ValueError as exc:
        raise InvalidInput("limit must be a whole number", field="limit", rule="type=integer") from exc
    if not 1 <= limit <= CALLS_MAX:
        raise InvalidInput(f"limit must be 1-{CALLS_MAX}", field="limit", rule=f"range=1..{CALLS_MAX}")
    return limit


async def recent_calls(
    pool: Pool, account: Account, registration_id: str, query: dict[str, str], kind: RegistrationKind = "auto"
) -> list[HookCall]:
    """The registration's recent hook calls, newest first (``query``: ``limit``). NotFound
    outside the account."""
    return await hook_calls.recent_calls(pool, account.id, kind, registration_id, calls_limit(query))
