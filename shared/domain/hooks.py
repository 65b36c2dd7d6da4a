"""The registration hook's rules, defined once (docs/registration-hook.md): its settings
(timeout, failure policy), the secret's encryption purpose, the request's body, the
answer's fixed shape (docs/registration-hook.md, "The request and the answer") and the
circuit breaker's state. Pure functions and small state: no registry, broker or HTTP.

The URL follows the webhooks' rules (shared.domain.webhooks.checked_url and
address_refusal); the request is signed as a webhook delivery is (Standard Webhooks)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from shared.domain.bulk_csv import CATEGORY_MAX, category_problem
from shared.domain.dedup import Claim, Verdict
from shared.domain.identifiers import validate_device_name
from shared.domain.webhooks import event_id
from shared.errors import InvalidInput

HookFailure = Literal["closed", "open"]
FAILURE_POLICIES: tuple[HookFailure, ...] = ("closed", "open")
DEFAULT_FAILURE: HookFailure = "closed"
TIMEOUT_MIN_MS = 50
TIMEOUT_MAX_MS = 10_000
DEFAULT_TIMEOUT_MS = 2000
# The hook's fields of an auto registration's body (creation and update).
HOOK_FIELDS = ("hook_url", "hook_timeout_ms", "hook_failure")
# The signing secrets' encryption purpose (shared.domain.webhooks.SecretBox): a sealed hook
# secret never opens as a webhook's, nor the other way round.
HOOK_SECRETS = b"fleetreg registration hook secrets v1"

REQUEST_TYPE = "registration.hook"
# An answer longer than this is malformed (read no further): name, categories, a reason and
# the data file's key/value pairs fit in far less.
MAX_ANSWER_BYTES = 16 * 1024
MAX_REASON = 200
MAX_DATA_KEYS = 64
MAX_DATA_KEY = 100


def checked_timeout_ms(value: object) -> int:
    """``hook_timeout_ms``: a whole number of milliseconds, 50 to 10000. InvalidInput otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not TIMEOUT_MIN_MS <= value <= TIMEOUT_MAX_MS:
        raise InvalidInput(
            f"hook_timeout_ms must be a whole number of milliseconds, {TIMEOUT_MIN_MS}-{TIMEOUT_MAX_MS}",
            field="hook_timeout_ms",
            rule=f"range={TIMEOUT_MIN_MS}..{TIMEOUT_MAX_MS}",
        )
    return value


def checked_failure(value: object) -> HookFailure:
    """``hook_failure``: ``closed`` (a failed call answers the device pending) or ``open``
    (decided without the hook). InvalidInput otherwise."""
    if value == "closed":
        return "closed"
    if value == "open":
        return "open"
    raise InvalidInput(
        "hook_failure must be closed or open", field="hook_failure", rule="enum=" + ",".join(FAILURE_POLICIES)
    )


@dataclass(frozen=True)
class HookRequest:
    """What the hook is asked about one claim. ``decision``: what fleetreg would decide
    (``new``, ``clone`` with ``assigned_hardware_id`` its ``H-N``, ``claim`` of a
    preregistered or reset device)."""

    call_id: str  # the webhook-id: the same on a repeat of one call
    request_id: str
    hardware_id: str
    fingerprint: str
    decision: str
    assigned_hardware_id: str
    product_id: str
    registration_id: str
    attestation: str
    source: str
    protocol: str


def request_body(request: HookRequest, at: datetime) -> str:
    """The JSON body of a hook call (the Standard Webhooks payload shape, as deliveries)."""
    data = {
        "request_id": request.request_id,
        "hardware_id": request.hardware_id,
        "fingerprint": request.fingerprint,
        "decision": request.decision,
        "assigned_hardware_id": request.assigned_hardware_id,
        "product_id": request.product_id,
        "registration_id": request.registration_id,
        "attestation": request.attestation,
        "source": request.source,
        "protocol": request.protocol,
    }
    return json.dumps(
        {"type": REQUEST_TYPE, "timestamp": at.astimezone(UTC).isoformat(), "data": data},
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class HookAnswer:
    """A well-formed answer: allowed or not, the reason a refused device is told, and the
    enrichment ("" and {}: none)."""

    allow: bool
    reason: str = ""
    name: str = ""
    category_a: str = ""
    category_b: str = ""
    data: dict[str, str] = field(default_factory=dict)


class MalformedAnswer(ValueError):
    """The hook's answer is not the contract's shape (a failure of the call)."""


_ANSWER_FIELDS = {"allow", "reason", "name", "category_a", "category_b", "data"}


def _text(answer: dict[str, Any], name: str, limit: int) -> str:
    value = answer.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise MalformedAnswer(f"{name} must be printable text of at most {limit} characters")
    return value


def _storable(text: str) -> bool:
    """Text Postgres' jsonb and text can keep: no NUL, valid UTF-8 (no lone surrogate)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _RepeatedName(Exception):
    """A name given twice in one object of the answer."""


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of repeated names ({"allow": true, "allow": false} meant false):
    # which one the hook meant is unknowable, and another reader of the same bytes may take
    # the first, so the answer is malformed (as a repeated name in any fleetreg JSON body).
    names: dict[str, Any] = {}
    for name, value in pairs:
        if name in names:
            raise _RepeatedName(name)
        names[name] = value
    return names


def parse_answer(raw: bytes) -> HookAnswer:
    """The hook's answer body: a JSON object ``{"allow": bool, "reason", "name",
    "category_a", "category_b", "data": {str: str}}``, every field but ``allow`` optional
    (null counts as absent); unknown fields are ignored (a hook may say more than fleetreg
    reads). MalformedAnswer naming the first problem otherwise, also for a name given twice
    in one object or nesting too deep to read."""
    if len(raw) > MAX_ANSWER_BYTES:
        raise MalformedAnswer(f"the answer is longer than {MAX_ANSWER_BYTES} bytes")
    try:
        answer = json.loads(raw, object_pairs_hook=_unique_names)
    except _RepeatedName as exc:
        raise MalformedAnswer(f"the answer gives {exc.args[0][:64]!r} twice in one object") from None
    except RecursionError:
        # 16 KiB of brackets nests deeper than the interpreter's stack: the hook's fault, a
        # failure, never an exception out of the caller (which would leave the call stuck).
        raise MalformedAnswer("the answer is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedAnswer("the answer is not JSON") from exc
    if not isinstance(answer, dict):
        raise MalformedAnswer("the answer is not a JSON object")
    allow = answer.get("allow")
    if not isinstance(allow, bool):
        raise MalformedAnswer("allow must be true or false")
    name = _text(answer, "name", 100)
    if name:
        try:
            validate_device_name(name)
        except InvalidInput as exc:
            raise MalformedAnswer(exc.message) from exc
    data = answer.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict) or len(data) > MAX_DATA_KEYS:
        raise MalformedAnswer(f"data must be an object of at most {MAX_DATA_KEYS} keys")
    for key, value in data.items():
        if not key or len(key) > MAX_DATA_KEY or not key.isprintable() or not isinstance(value, str):
            raise MalformedAnswer(
                f"data's keys must be printable text of 1-{MAX_DATA_KEY} characters, its values text"
            )
        if not _storable(value):
            # The registry keeps the data as jsonb, which has no NUL and no lone surrogate: an
            # answer it cannot keep is the hook's fault, a failure, never a stuck call.
            raise MalformedAnswer("data's values must be text without NUL characters or lone surrogates")
    return HookAnswer(
        allow=allow,
        reason=_text(answer, "reason", MAX_REASON),
        name=name,
        category_a=_category(answer, "category_a"),
        category_b=_category(answer, "category_b"),
        data=dict(data),
    )


def _category(answer: dict[str, Any], name: str) -> str:
    # The device fields' rules, as a CSV's categories: a category starting as a formula
    # (= + - @) would run in the spreadsheet of whoever opens an export of the devices.
    value = _text(answer, name, CATEGORY_MAX)
    problem = category_problem(value) if value else ""
    if problem:
        raise MalformedAnswer(f"{name} {problem}")
    return value


# The breaker's defaults: this many failures in a row open it, for this long; then one
# trial call is let through (half-open), and its success closes it.
BREAKER_FAILURES = 5
# 2 s, not the 10 s of many HTTP breakers: a hook that comes back should be asked again
# well within the Retry-After its devices were told (5 s, issue 27's recovery target), and a
# trial every 2 s per notifier instance is no load on a hook that is down.
BREAKER_OPEN_S = 2.0


@dataclass
class Breaker:
    """One hook's circuit breaker. ``allow(now)`` says whether a call may be made (False
    while open: the caller fails the call at once); ``record(ok, now)`` counts its outcome.
    Half-open lets one trial through at a time; its failure opens the breaker again."""

    failures_to_open: int = BREAKER_FAILURES
    open_s: float = BREAKER_OPEN_S
    failures: int = 0
    opened_at: float | None = None
    trial: bool = False

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def paused(self, now: float) -> bool:
        """Open, and within its pause (or a trial in flight): :meth:`allow` would say no."""
        return self.opened_at is not None and (now - self.opened_at < self.open_s or self.trial)

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if now - self.opened_at < self.open_s or self.trial:
            return False
        self.trial = True  # half-open: this call is the trial
        return True

    def record(self, ok: bool, now: float) -> None:
        self.trial = False
        if ok:
            self.failures, self.opened_at = 0, None
            return
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.failures_to_open:
            self.opened_at = now


# ---------------------------------------------------------------- the decision path
# Which claims consult the hook, what it is told, and what its result makes of the claim
# (docs/registration-hook.md): deduplication applies these; the caller makes the call.

HookDecision = Literal["new", "clone", "claim"]
HookAction = Literal["confirm", "refuse", "pending"]
# Failures of a call (services/notifier/hook_caller.HookResult.outcome): every outcome but
# the hook's own answers.
ANSWERS = ("allow", "deny")
# What a fail-closed pending tells the device when the hook failed at once (its breaker is
# open) or after its timeout: the intake's own pending wait (FLEETREG_RETRY_AFTER_SECONDS'
# default), so a device comes back about when a breaker's pause is over.
PENDING_RETRY_AFTER_S = 5
# A denial's stored reason starts with this, then the hook's own reason: the device is told
# both, and the reason code (shared.domain.refusals.reason_code_of) is read from it, also
# when the decision is polled later, as every refusal's is.
DENIED_REASON = "refused by the operator's registration hook"


# How long a reservation holds without an allow before the sweep releases it (seconds,
# after the hook's timeout): the longest a device keeps retrying a pending registration
# before its request is forgotten (FLEETREG_PENDING_FORGET_SECONDS' default, 15 minutes).
RESERVATION_HOLD_S = 900
# A call in flight longer than the hook's timeout plus this margin was lost with its
# instance: the next request for it makes it again.
STALE_CALL_MARGIN_S = 30.0
# How often the notifier makes failed fail-closed calls again (the redial), and how long a
# failed call rests before it is: one second, so a hook that is back decides its
# reservations within about a second of its breaker's trial (issue 27: within one
# Retry-After of its return); a failing hook's breaker keeps the rounds cheap.
REDIAL_EVERY_S = 1.0

# A stored and published refusal reason is printable ASCII of at most this many characters
# (shared.events.REASON_MAX: twice the longest device name).
STORED_REASON_MAX = 200
# What a sweep tells a device whose reservation expired without the hook ever answering.
UNANSWERED_REASON = "the operator's registration hook did not answer in time; register again"


def denied_reason(hook_reason: str) -> str:
    """The stored reason of a claim the hook denied, with the hook's reason ("" : none):
    printable ASCII (other characters become ``?``), cut to :data:`STORED_REASON_MAX`."""
    if not hook_reason:
        return DENIED_REASON
    told = "".join(c if " " <= c <= "~" else "?" for c in hook_reason)
    return f"{DENIED_REASON}: {told}"[:STORED_REASON_MAX]


def is_hook_denial(reason: str) -> bool:
    """Whether a stored refusal's reason is a hook's denial (:func:`denied_reason`)."""
    return reason == DENIED_REASON or reason.startswith(DENIED_REASON + ": ")


def hook_decision(verdict: Verdict) -> HookDecision | None:
    """What the hook is asked about a verdict, or None when the claim does not consult it:
    a claim that creates a device (``new``, or ``clone`` with its ``H-N``) or takes over a
    preregistered or reset device (``claim``). A refusal, a retry of the same device and a
    reboot presenting its secret (``same``) never call it."""
    if verdict.decision == "refused" or verdict.device is None:
        return None
    if verdict.created:
        return "clone" if verdict.decision == "clone" else "new"
    if verdict.claimed_preregistered:
        return "claim"
    return None


def call_id(registration_id: str, claim: Claim) -> str:
    """The ``webhook-id`` of a claim's hook call, the key of its one answer: derived from the
    registration, the claimed hardware ID (case-insensitively) and the device's
    Idempotency-Key (its request ID without one), so a retry with the same key is the same
    attempt, which reuses an answer (allow or deny). The hardware ID is part of it because a
    key is the device's own choice: boards of one copied image (an agent's state file taken
    mid-registration) send the same key for different hardware IDs, and deduplication takes
    a key as a retry only of the same claimed hardware ID; without it their claims would
    share one call row, one board's reservation taking the other's over (or reusing its
    denial)."""
    if not claim.idempotency_key:
        return event_id("registration.hook", registration_id, f"request:{claim.request_id}")
    attempt = f"key:{claim.idempotency_key}"
    return event_id("registration.hook", registration_id, claim.hardware_id.lower(), attempt)


def hook_request(
    claim: Claim,
    verdict: Verdict,
    decision: HookDecision,
    product_id: str,
    registration_id: str,
    attestation: str,
) -> HookRequest:
    """The hook's request about ``claim``, decided as ``verdict`` would (``decision``:
    :func:`hook_decision`)."""
    return HookRequest(
        call_id=call_id(registration_id, claim),
        request_id=claim.request_id,
        hardware_id=claim.hardware_id,
        fingerprint=claim.fingerprint,
        decision=decision,
        assigned_hardware_id=verdict.hardware_id,
        product_id=product_id,
        registration_id=registration_id,
        attestation=attestation,
        source=claim.source,
        protocol=claim.protocol,
    )


@dataclass(frozen=True)
class HookRuling:
    """What a hook call's result makes of a reserved claim: ``confirm`` it (with the
    ``enrichment`` of an allow; ``failed_open``: decided without the hook, which failed),
    ``refuse`` it with ``reason`` (:func:`denied_reason`, whose reason code is
    ``hook_denied``), or answer it ``pending`` with ``retry_after_s`` (fail closed: the
    reservation stays, the device retries and its retry calls again)."""

    action: HookAction
    enrichment: HookAnswer | None = None
    failed_open: bool = False
    reason: str = ""
    retry_after_s: int = 0


def rule_on(outcome: str, answer: HookAnswer | None, failure: HookFailure) -> HookRuling:
    """The ruling of a call's ``outcome`` (``allow``, ``deny`` with ``answer``, or a failure)
    under the registration's ``failure`` policy. ValueError for an answer outcome without
    its answer."""
    if outcome in ANSWERS:
        if answer is None or answer.allow != (outcome == "allow"):
            raise ValueError(f"a hook outcome {outcome!r} needs its answer")
        if answer.allow:
            return HookRuling("confirm", enrichment=answer)
        return HookRuling("refuse", reason=denied_reason(answer.reason))
    if failure == "open":
        return HookRuling("confirm", failed_open=True)
    return HookRuling("pending", retry_after_s=PENDING_RETRY_AFTER_S)
