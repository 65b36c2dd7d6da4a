"""Calling one registration hook (docs/registration-hook.md): a signed POST (Standard
Webhooks, as deliveries are signed), through the notifier's address checks (no private
address unless allowed, checked on every connection; no redirects, no proxy), within the
hook's timeout, at most ``concurrency`` calls in flight per hook, behind a circuit breaker
per hook (open: the call fails at once, so a closed hook answers the device pending
without waiting for its timeout). The answer is read as the contract's fixed shape;
anything else is a failure. Never raises for what the hook or the network does."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from standardwebhooks.webhooks import Webhook as Signer

from shared.domain.hooks import (
    BREAKER_FAILURES,
    BREAKER_OPEN_S,
    MAX_ANSWER_BYTES,
    Breaker,
    HookAnswer,
    HookRequest,
    MalformedAnswer,
    parse_answer,
    request_body,
)
from shared.domain.webhooks import address_refusal, checked_url, name_refusal
from shared.errors import InvalidInput
from shared.metrics import HOOK_BREAKERS_OPEN, HOOK_CALL_SECONDS, HOOK_CALLS
from shared.webhook_sender import USER_AGENT, CheckedResolver, RefusedAddress

# Outcomes that are the hook's own answer; every other outcome is a failure, which the
# registration's policy turns into pending (closed) or a decision without it (open).
ANSWERED = ("allow", "deny")
# Failures that say nothing about the hook (it was not called): not counted by its breaker.
NOT_CALLED = ("breaker_open", "busy")


@dataclass(frozen=True)
class HookResult:
    """One call's outcome: ``allow`` or ``deny`` with the answer, or a failure (``timeout``,
    ``error``, ``http_error``, ``redirect``, ``malformed``, ``refused``, ``breaker_open``,
    ``busy``: no slot of the hook's concurrency within its timeout) with what went wrong;
    the HTTP status when there was one, and the latency in milliseconds."""

    outcome: str
    answer: HookAnswer | None = None
    http_status: int | None = None
    error: str = ""
    latency_ms: float = 0.0

    @property
    def answered(self) -> bool:
        return self.outcome in ANSWERED


@dataclass(frozen=True)
class Hook:
    """Where and how to call one registration's hook: ``key`` names it for its concurrency
    and breaker (the registration's ID); ``secret`` is its signing secret, opened."""

    key: str
    url: str
    secret: str
    timeout_ms: int


class HookCaller:
    """Calls registration hooks through one connection pool (opened and closed by the
    notifier's resources)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        concurrency: int = 16,
        breaker_failures: int = BREAKER_FAILURES,
        breaker_open_s: float = BREAKER_OPEN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allow_private = allow_private
        self._concurrency = concurrency
        self._breaker_failures = breaker_failures
        self._breaker_open_s = breaker_open_s
        self._clock = clock
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._breakers: dict[str, Breaker] = {}
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(self._allow_private),
            use_dns_cache=False,  # every new connection resolves and checks again
            limit=0,  # bounded per hook by the slots instead: one hook never takes another's
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            trust_env=False,  # never through a proxy named by the environment
            headers={"User-Agent": USER_AGENT},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def breaker(self, key: str) -> Breaker:
        """The hook's breaker (made closed on first use)."""
        found = self._breakers.get(key)
        if found is None:
            found = self._breakers[key] = Breaker(self._breaker_failures, self._breaker_open_s)
        return found

    def paused(self, key: str) -> bool:
        """Whether the hook's breaker is open and its pause not over: a call now would fail
        at once (read only: no trial is let through by asking)."""
        found = self._breakers.get(key)
        return found is not None and found.paused(self._clock())

    def paused_hooks(self) -> list[str]:
        """The keys of the hooks :meth:`paused` says a call now would fail at once."""
        now = self._clock()
        return [key for key, breaker in self._breakers.items() if breaker.paused(now)]

    def tripped(self, key: str) -> bool:
        """Whether the hook's breaker is open (within its pause or past it, waiting for the
        trial call that closes it)."""
        found = self._breakers.get(key)
        return found is not None and found.is_open

    async def call(self, hook: Hook, request: HookRequest) -> HookResult:
        """Ask ``hook`` about ``request``; the result is counted in the metrics and, unless
        the hook was not called, by its breaker."""
        breaker = self.breaker(hook.key)
        was_open = breaker.is_open
        if not breaker.allow(self._clock()):
            result = HookResult("breaker_open", error="the hook's circuit breaker is open")
        else:
            result = await self._call(hook, request)
            if result.outcome in NOT_CALLED:
                breaker.trial = False  # a trial that never reached the hook: the next one tries
            else:
                breaker.record(result.answered, self._clock())
        if breaker.is_open != was_open:
            HOOK_BREAKERS_OPEN.inc() if breaker.is_open else HOOK_BREAKERS_OPEN.dec()
        HOOK_CALLS.labels(result.outcome).inc()
        if result.outcome not in NOT_CALLED:
            HOOK_CALL_SECONDS.observe(result.latency_ms / 1000)
        return result

    async def _call(self, hook: Hook, request: HookRequest) -> HookResult:
        started = time.perf_counter()

        def took() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        try:
            _, target = checked_url(hook.url)
        except InvalidInput as exc:
            return HookResult("refused", error=f"refused: {exc.message}", latency_ms=took())
        literal = target.literal
        if literal is not None:  # an address in the URL: aiohttp does not ask the resolver
            refusal = address_refusal(str(literal), allow_private=self._allow_private)
            if refusal is not None:
                return HookResult("refused", error=f"refused: {refusal}", latency_ms=took())
        session = self._session
        if session is None:
            raise RuntimeError("the hook caller is not open")
        timeout_s = hook.timeout_ms / 1000
        slots = self._slots.setdefault(hook.key, asyncio.Semaphore(self._concurrency))
        try:
            async with asyncio.timeout(timeout_s):
                await slots.acquire()
        except TimeoutError:
            return HookResult("busy", error=f"no free slot within {hook.timeout_ms} ms", latency_ms=took())
        try:
            # The hook's timeout is its own answer's: a call that waited for a slot behind the
            # hook's other calls still gives it the whole timeout, so that a burst of calls (a
            # redial round after an outage) is never read as a slow hook by its breaker.
            return await self._post(session, hook, request, target.host, timeout_s, took)
        finally:
            slots.release()

    async def _post(
        self,
        session: aiohttp.ClientSession,
        hook: Hook,
        request: HookRequest,
        host: str,
        timeout_s: float,
        took: Callable[[], float],
    ) -> HookResult:
        at = datetime.now(UTC)
        body = request_body(request, at)
        headers = {
            "webhook-id": request.call_id,
            "webhook-timestamp": str(math.floor(at.timestamp())),
            "webhook-signature": Signer(hook.secret).sign(request.call_id, at, body),
            "Content-Type": "application/json",
        }
        try:
            async with session.post(
                hook.url,
                data=body.encode(),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                status = response.status
                raw = await _read_at_most(response.content, MAX_ANSWER_BYTES + 1)
        except TimeoutError:
            return HookResult("timeout", error=f"timed out after {hook.timeout_ms} ms", latency_ms=took())
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            if isinstance(cause, RefusedAddress) or (
                isinstance(exc, aiohttp.ClientConnectorDNSError) and not self._allow_private
            ):
                return HookResult("refused", error=f"refused: {name_refusal(host)}", latency_ms=took())
            return HookResult("error", error=f"cannot connect: {_short(cause)}", latency_ms=took())
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return HookResult("error", error=f"{type(exc).__name__}: {_short(exc)}", latency_ms=took())
        if 300 <= status < 400:
            return HookResult(
                "redirect", http_status=status, error="redirects are not followed", latency_ms=took()
            )
        if not 200 <= status < 300:
            return HookResult("http_error", http_status=status, error=f"answered {status}", latency_ms=took())
        try:
            answer = parse_answer(raw)
        except MalformedAnswer as exc:
            return HookResult("malformed", http_status=status, error=str(exc), latency_ms=took())
        return HookResult("allow" if answer.allow else "deny", answer, status, latency_ms=took())


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to its end or ``limit`` bytes, whichever comes first. One
    ``read(limit)`` returns what has arrived so far: an answer sent in two pieces would be
    cut to its first and read as malformed."""
    parts: list[bytes] = []
    size = 0
    while size < limit:
        part = await content.read(limit - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _short(error: BaseException) -> str:
    return str(error)[:300] or type(error).__name__
