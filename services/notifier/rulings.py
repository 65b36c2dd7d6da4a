"""Registration hooks' calls and rulings (docs/registration-hook.md): what the notifier
does with a ``registration.hook_requested`` record, and the sweep of reservations no hook
answered in time.

:func:`make_call` takes the call's row (a conditional update: a repeat, or another
instance's record of the same call, finds it taken and returns), calls the hook, and
applies its ruling in one transaction of ``shared.db.hooks`` before it publishes what the
device waits on: the withheld ``registration.decided`` of an allowed claim (to
provisioning, which renders its files), the refusal of a denied one, or ``pending`` with
its wait (fail closed) for the intake to answer at once. Nothing here raises for what the
hook does; a registry or broker failure is logged and the device's next retry asks for
the call again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from shared.batching import Coalescer
from shared.db import hooks
from shared.db.hooks import CallResult, Settled, TakenCall
from shared.db.pool import Pool
from shared.domain import hooks as rules
from shared.domain.webhooks import SecretBox
from shared.events import Event, HookRequested, RegistrationDecided, RegistrationOutcome
from shared.hook_caller import Hook, HookCaller, HookResult
from shared.logging import exception_summary
from shared.metrics import ERRORS

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Event]], Awaitable[None]]


class Desk:
    """The registry's side of the calls in flight: their takes and their allows, each
    coalesced into one statement (one transaction) per batch of the calls that reach it
    together (``shared.batching.Coalescer``: a lone call waits for nothing). A storm's calls
    took one round trip and one commit each: +2.6 ms of Postgres CPU per hooked device
    (docs/performance.md, "Registration hook")."""

    def __init__(self, pool: Pool, max_items: int = 200) -> None:
        self.pool = pool
        self._takes: Coalescer[str, TakenCall | None] = Coalescer(self._take, max_items)
        self._confirms: Coalescer[hooks.Confirmation, Settled | Exception | None] = Coalescer(
            self._confirm, max_items
        )

    async def take(self, call_id: str) -> TakenCall | None:
        """``shared.db.hooks.take``, batched with the other calls taken meanwhile."""
        return await self._takes.submit(call_id)

    async def confirm(
        self, call: TakenCall, result: CallResult, enrichment: dict[str, Any] | None
    ) -> Settled | None:
        """``shared.db.hooks.confirm``, in one transaction with the others meanwhile; raises
        what applying this one raised."""
        settled = await self._confirms.submit((call, result, enrichment))
        if isinstance(settled, Exception):
            raise settled
        return settled

    async def _take(self, call_ids: Sequence[str]) -> list[TakenCall | None]:
        taken = await hooks.take_many(self.pool, call_ids, rules.STALE_CALL_MARGIN_S)
        # The same call twice in a batch (a redelivered record beside its redial) is made
        # once: the first asker takes it, as the second would have found it calling.
        return [taken.pop(call_id, None) for call_id in call_ids]

    async def _confirm(self, confirmations: Sequence[hooks.Confirmation]) -> list[Settled | Exception | None]:
        try:
            return list(await hooks.confirm_many(self.pool, confirmations))
        except Exception as exc:
            if len(confirmations) == 1:
                return [exc]
        # One bad ruling must not fail the others of its batch (again at every redial): each
        # is applied alone, and only the failing one's call learns its error.
        return [(await self._confirm([one]))[0] for one in confirmations]


async def make_call(
    desk: Desk, caller: HookCaller, secrets: SecretBox, publish: Publish, requested: HookRequested
) -> str | None:
    """Make the call ``requested`` names, apply its ruling and publish what it answers;
    returns the ruling's action (``confirm``, ``refuse``, ``pending``), or None when the
    call was not this one's to make (answered already, in flight elsewhere, released)."""
    pool = desk.pool
    call = await desk.take(requested.call_id)
    if call is None:
        return None
    if call.hook_url is None or call.secret_sealed is None:
        # The hook was removed after the claim was reserved: decided without it.
        settled = await desk.confirm(call, CallResult("no_hook", None, None, None), None)
        if settled is not None:
            await publish([RegistrationDecided(**d) for d in (settled.decided, *settled.also_decided)])
        return "confirm"
    hook = Hook(
        key=call.registration_id,
        url=call.hook_url,
        secret=secrets.open(call.registration_id, call.secret_sealed),
        timeout_ms=call.timeout_ms,
    )
    result = await caller.call(hook, rules.HookRequest(call_id=call.call_id, **call.request))
    failure = rules.checked_failure(call.failure)
    ruling = rules.rule_on(result.outcome, result.answer, failure)
    recorded = _recorded(result, ruling)
    if ruling.action == "confirm":
        enrichment = asdict(ruling.enrichment) if ruling.enrichment is not None else None
        settled = await desk.confirm(call, recorded, enrichment)
        if settled is not None:
            await publish([RegistrationDecided(**d) for d in (settled.decided, *settled.also_decided)])
    elif ruling.action == "refuse":
        settled = await hooks.refuse(pool, call, recorded, ruling.reason)
        if settled is not None:
            await publish(_refusals(settled.refused_requests, settled.account_id, ruling.reason))
    else:
        settled = await hooks.fail(pool, call, recorded)
        if settled is not None:
            await publish([_pending(settled.request_id, settled.account_id, ruling.retry_after_s)])
    _log(call, result, ruling.action, settled is not None)
    return ruling.action


async def make_call_logged(
    desk: Desk, caller: HookCaller, secrets: SecretBox, publish: Publish, requested: HookRequested
) -> None:
    """:func:`make_call`, whose registry or broker failure is logged and counted: the call is
    made again (:func:`redial`, or the device's retry)."""
    try:
        await make_call(desk, caller, secrets, publish, requested)
    except Exception as exc:
        ERRORS.labels("notifier", "hook_call_failed").inc()
        log.warning(
            "a registration hook call could not be applied; it will be made again",
            extra={"call_id": requested.call_id, "error": exception_summary(exc)},
        )


# How many calls one redial round takes at most: the rest wait for the next round.
REDIAL_BATCH = 1000


async def redial(
    pool: Pool, caller: HookCaller, start: Callable[[HookRequested], None], limit: int = REDIAL_BATCH
) -> int:
    """Start again (``start``) the calls due again (``shared.db.hooks.due_again``): a fail
    closed failure after the pause its device was told, so the reservations of a hook that
    was down are decided as soon as it is back, whatever their devices do meanwhile; a
    request whose record or instance was lost. A hook whose breaker is open is skipped
    until its pause is over (its calls would fail at once), left out of the round's query
    (a hook down with a round's worth of calls would otherwise fill every round), then lets
    one trial through. At most ``limit`` calls a round, the oldest first. Returns how many
    it started."""
    due = await hooks.due_again(
        pool, rules.REDIAL_EVERY_S, rules.STALE_CALL_MARGIN_S, limit, skip=caller.paused_hooks()
    )
    started = 0
    trials: set[str] = set()
    for call_id, registration_id, request_id in due:
        if caller.paused(registration_id) or registration_id in trials:
            continue
        if caller.tripped(registration_id):
            # Past its pause: one call is the breaker's trial; the others would fail at once,
            # so they wait for the next round (the trial's success closes the breaker).
            trials.add(registration_id)
        start(HookRequested(call_id=call_id, registration_id=registration_id, request_id=request_id))
        started += 1
    return started


def _recorded(result: HookResult, ruling: rules.HookRuling) -> CallResult:
    """The call row's record of ``result``: the hook's answer as it read it, or the
    failure's text (never the secret, never the request)."""
    answer: dict[str, Any] | None = None
    if result.answer is not None:
        answer = asdict(result.answer)
    elif result.error:
        answer = {"error": result.error}
    outcome = "failed_open" if ruling.failed_open else result.outcome
    if ruling.failed_open and answer is not None:
        answer["failure"] = result.outcome
    return CallResult(outcome, answer, result.http_status, round(result.latency_ms))


def _refusals(request_ids: Sequence[str], account_id: str, reason: str) -> list[Event]:
    return [
        RegistrationOutcome(
            request_id=request_id, status="refused", reason=reason, decision="refused", account_id=account_id
        )
        for request_id in request_ids
    ]


def _pending(request_id: str, account_id: str, retry_after_s: int) -> RegistrationOutcome:
    return RegistrationOutcome(
        request_id=request_id, status="pending", retry_after=retry_after_s, account_id=account_id
    )


def _log(call: TakenCall, result: HookResult, action: str, applied: bool) -> None:
    # The call, the registration and the outcome; never the URL's path or query (often a
    # receiver's token), the secret, or the answer's data.
    log.info(
        "registration hook called",
        extra={
            "call_id": call.call_id,
            "registration_id": call.registration_id,
            "request_id": call.request_id,
            "outcome": result.outcome,
            "http_status": result.http_status,
            "latency_ms": round(result.latency_ms),
            "ruling": action,
            "applied": applied,
        },
    )


# A confirmed call's registration.decided is looked for again this long after its ruling
# (its own publish normally took milliseconds), and up to a reservation's hold after it.
RELEASE_AFTER_S = 10.0


async def release_lost(pool: Pool, publish: Publish, limit: int = REDIAL_BATCH) -> int:
    """Send the ``registration.decided`` of every request still only decided of a device
    whose call was confirmed (``shared.db.hooks.unreleased``: the notifier died, or the
    broker failed, between the ruling's commit and its publish; an earlier request of the
    attempt the ruling did not answer; or the hook was removed while it waited), so the
    devices' polls are answered; returns how many."""
    lost = await hooks.unreleased(pool, RELEASE_AFTER_S, rules.RESERVATION_HOLD_S, limit)
    if lost:
        await publish([RegistrationDecided(**decided) for decided in lost])
        log.info("registration hook rulings released again", extra={"count": len(lost)})
    return len(lost)


async def expire(pool: Pool, publish: Publish, limit: int = 500) -> int:
    """Release the reservations past their hold without an allow (their devices deleted or
    preregistered again, their waiting requests refused with
    :data:`shared.domain.hooks.UNANSWERED_REASON`); returns how many."""
    released = await hooks.expire(pool, rules.UNANSWERED_REASON, limit)
    events: list[Event] = []
    for item in released:
        events.extend(_refusals(item.refused_requests, item.account_id, rules.UNANSWERED_REASON))
    if events:
        await publish(events)
    if released:
        log.info("registration hook reservations expired", extra={"count": len(released)})
    return len(released)
