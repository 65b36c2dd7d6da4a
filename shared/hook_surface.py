"""A registration hook's operator surface, for every kind of registration that has one
(docs/registration-hook.md, "Operator surface"): a test call with a sample request, the
recent calls, and their JSON shapes. The operator API serves them for an auto
registration (services/operator/routes/hooks.py), the bulk API for a bulk registration
(services/ingestion/routes.py): one rule and one shape for both, so they live here.

The test makes one real call through the caller it is handed (``HookCalls``: each
service's ``shared.hook_caller.HookCaller``, opened by its resources), so this module does
no HTTP itself. Setting a hook is the registration's own update (shared/hook_settings.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from shared.db import hook_calls, registrations
from shared.db.hook_calls import HookCall
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.domain.hooks import HOOK_SECRETS, HookRequest
from shared.domain.identifiers import validate_hardware_id
from shared.domain.inputs import refuse_unknown_parameters
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
Json = dict[str, Any]
# What a device's call of each kind says (shared.domain.hooks.hook_decision; the
# attestation a bulk claim is told, shared/db/hooks.py): an auto registration's first
# claim creates a device, a bulk registration's device claims its preregistered row with
# its registration key.
_SAMPLE_DECISION: dict[RegistrationKind, str] = {"auto": "new", "bulk": "claim"}
BULK_ATTESTATION = "registration_key"


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
    address checks and the hook's timeout, a fresh request ID, a call ID of its own
    starting ``test_``, no fingerprint or source; ``decision`` as a device's call of the
    kind says it (``new`` for an auto registration, ``claim`` for a bulk one, whose
    ``attestation`` is ``registration_key``). Nothing is registered and no call row is
    written; audited as ``auto_registration.hook_tested`` or ``bulk.hook_tested`` (the
    host, the outcome). NotFound outside the account; Conflict when the registration has
    no hook (or its secret no longer opens under FLEETREG_SECRET_KEY)."""
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
        decision=_SAMPLE_DECISION[kind],
        assigned_hardware_id=hardware_id,
        product_id=registration.product_id,
        registration_id=registration_id,
        attestation=BULK_ATTESTATION if kind == "bulk" else registration.attestation,
        source="",
        protocol="native",
    )
    # Its own breaker and slots ("test:" + ID): a failing test never opens the breaker a
    # device's call would meet (those are the notifier's; this caller is the service's).
    result = await caller.call(Hook(f"test:{registration_id}", hook.url, secret, hook.timeout_ms), request)
    await hook_calls.record_test(
        pool, account, kind, registration_id, urlsplit(hook.url).hostname or "", result.outcome
    )
    return HookTest(request, result)


def calls_limit(query: dict[str, str]) -> int:
    """``limit`` of the recent calls: 1-500, 50 by default; no other parameter."""
    refuse_unknown_parameters(query, ("limit",))
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


def hook_test_json(tested: HookTest) -> Json:
    """A test call: the request's IDs and hardware ID, the ``outcome`` (``allow``, ``deny``
    or a failure: ``timeout``, ``error``, ``http_error``, ``redirect``, ``malformed``,
    ``refused``, ``breaker_open``, ``busy``), ``http_status`` (null without an answer),
    ``latency_ms``, the parsed ``answer`` (null for a failure) and the failure's ``error``
    ("" for an answer)."""
    result = tested.result
    answer = result.answer
    return {
        "call_id": tested.request.call_id,
        "request_id": tested.request.request_id,
        "hardware_id": tested.request.hardware_id,
        "outcome": result.outcome,
        "http_status": result.http_status,
        "latency_ms": result.latency_ms,
        "answer": None
        if answer is None
        else {
            "allow": answer.allow,
            "reason": answer.reason,
            "name": answer.name,
            "category_a": answer.category_a,
            "category_b": answer.category_b,
            "data": dict(answer.data),
        },
        "error": result.error,
    }


def hook_call_json(found: HookCall) -> Json:
    """One recent call (its times in ISO 8601, null before an answer)."""
    return {
        "call_id": found.call_id,
        "request_id": found.request_id,
        "hardware_id": found.hardware_id,
        "assigned_hardware_id": found.assigned_hardware_id,
        "decision": found.decision,
        "outcome": found.outcome,
        "http_status": found.http_status,
        "latency_ms": found.latency_ms,
        "attempts": found.attempts,
        "created_at": found.created_at.isoformat(),
        "answered_at": found.answered_at.isoformat() if found.answered_at is not None else None,
        "device_id": found.device_id,
    }


def hook_calls_json(found: list[HookCall]) -> Json:
    """The recent calls, newest first, under ``calls``."""
    return {"calls": [hook_call_json(c) for c in found]}
