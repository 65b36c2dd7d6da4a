"""Throttling of the HTTP APIs exposed to the internet: who is limited, by what, where.

The limits are sets of ``limits`` rate items ("30/minute;300/hour") parsed by the
``limits`` library (https://limits.readthedocs.io), whose strategies do the counting;
fleetreg invents no algorithm:

* **refused calls per source, and per source and target**: calls that fail to prove
  anything (unknown code, a bulk claim refused "not listed", wrong device secret, a
  request ID never issued, bad API key, ...) are counted in the source's bucket and in
  the bucket of the source and what it guessed (:func:`target_of`: a digest of the code,
  device ID, API key, or code and hardware ID). The fixed-window strategy on
  :class:`shared.db.throttle.PostgresStorage` keeps the count global across every
  instance and service. A bucket past one of its windows is blocked until that window
  ends (the window starts at the first refusal counted in it, so no block outlasts the
  window that produced it); every instance learns it at once through a Postgres
  notification (``source:`` payloads). A credential that cannot be guessed is evaluated
  first: only a call that fails to prove anything is answered ``429`` + ``Retry-After``
  (instead of its 401 or 403) while its source or pair is blocked, and a call answered
  so is not counted again. A call that proves something (a device secret, the current
  code, a bulk key, an issued request ID, a valid API key) is never refused because of
  its address. A bulk registration key, chosen by the operator and maybe weak, is the
  exception: every claim of a listed hardware ID counts one attempt on its (source, code
  and hardware ID) pair BEFORE its key is evaluated (:meth:`Throttle.attempt`: one atomic
  hit per window, so a concurrent burst gets no more than the allowance evaluated), and
  past it is refused with that pair's wait; while its source is blocked the intake checks
  the key itself, without a pipeline trip (services/intake/handlers.py,
  ``hold_unproven_claim``). A 401 without any credential (no ``Authorization`` header) and
  stale credentials (the operator replaced them: :attr:`shared.errors.Unauthorized.counted`)
  are not counted; a revoked code's calls count on their own pair only
  (``target_of("revoked", code)``), before they are published (:meth:`Throttle.attempt`),
  which bounds its writes. A block is logged and announced only when it is new or ends a
  second or more later than the known one (a burst's in-flight refusals land together).
* **the clone rate's wait** (registration calls): deduplication decides the clone rate
  per source; the intake holds the ``Retry-After`` of each such refusal per (source, code
  and claimed hardware ID) in :attr:`Throttle._blocked` under a target kind of its own
  (``clone``), announced like a block, so that every instance answers that source's
  next claims of the ID (or of a suffixed spelling of it) itself until the wait ends
  (:meth:`Throttle.hold_clone_rate`, :meth:`Throttle.clone_rate_wait`; the claim that
  proves its device goes through: services/intake/handlers.py ``held_clone_rate``).
* **requests per operator API key** (operator and bulk APIs): the moving-window
  strategy in each instance's memory. Tolerance: with N instances behind a load
  balancer a key can get up to N times the configured rate.
* **new devices per Bulk Identification Code** (registration calls; off by default):
  the moving-window strategy in each instance's memory, counting calls answered with
  a new device or a clone; while a code's window is full its registration calls get
  ``429``. Same N-instances tolerance.

IPv6 sources are counted per /64 (one subscriber's whole prefix, RFC 6177). The
client address comes from ``X-Forwarded-For`` only when the peer is a trusted proxy.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import ipaddress
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from shared.connections import address_source
from shared.db.pool import Pool
from shared.db.throttle import Listener, PostgresStorage, notify
from shared.domain.credentials import DEFAULT_STALE_CREDENTIAL_SECONDS
from shared.domain.identifiers import hardware_id_ancestors
from shared.errors import TooManyRequests, Unauthorized
from shared.http import KEY_RATE, bearer
from shared.metrics import THROTTLE_BLOCKED_SOURCES, THROTTLE_REFUSALS, THROTTLED
from shared.settings import Env, SettingsError

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_BLOCKED_SOURCES = 100_000


def _items(name: str, raw: str) -> tuple[RateLimitItem, ...]:
    raw = raw.strip()
    if raw.lower() in ("", "off", "none", "0"):
        return ()
    try:
        return tuple(parse_many(raw))
    except ValueError as exc:
        raise SettingsError(
            f"{name}={raw!r} is not a list of limits such as '30/minute;300/hour' (or 'off')"
        ) from exc


def _networks(name: str, raw: str) -> tuple[Network, ...]:
    if raw == "-":
        return ()
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip()
        )
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a comma-separated list of addresses or CIDRs") from exc


@dataclass(frozen=True)
class ThrottleSettings:
    """Every limit of :mod:`shared.throttle`; empty tuples turn a limit off."""

    refusals_per_source: tuple[RateLimitItem, ...]
    requests_per_key: tuple[RateLimitItem, ...]
    new_devices_per_code: tuple[RateLimitItem, ...]
    trusted_proxies: tuple[Network, ...] = ()
    refusals_per_target: tuple[RateLimitItem, ...] = ()
    # How long a credential the operator replaced (reset, delete) or a rotated code is
    # recognised as stale, not as a guess (seconds).
    stale_credential_seconds: float = DEFAULT_STALE_CREDENTIAL_SECONDS

    @classmethod
    def from_env(cls, env: Env) -> ThrottleSettings:
        return cls(
            refusals_per_source=_items(
                "FLEETREG_LIMIT_REFUSALS_PER_SOURCE",
                env.text("FLEETREG_LIMIT_REFUSALS_PER_SOURCE", "30/minute;300/hour;1000/day"),
            ),
            requests_per_key=_items(
                "FLEETREG_LIMIT_REQUESTS_PER_KEY",
                env.text("FLEETREG_LIMIT_REQUESTS_PER_KEY", "25/second;1000/minute"),
            ),
            new_devices_per_code=_items(
                "FLEETREG_LIMIT_NEW_DEVICES_PER_CODE", env.text("FLEETREG_LIMIT_NEW_DEVICES_PER_CODE", "off")
            ),
            trusted_proxies=_networks("FLEETREG_TRUSTED_PROXIES", env.text("FLEETREG_TRUSTED_PROXIES", "-")),
            refusals_per_target=_items(
                "FLEETREG_LIMIT_REFUSALS_PER_TARGET",
                env.text("FLEETREG_LIMIT_REFUSALS_PER_TARGET", "10/minute;100/hour;300/day"),
            ),
            # a week (DEFAULT_STALE_CREDENTIAL_SECONDS), spelled out for tests/unit/test_deploy.py
            stale_credential_seconds=env.number("FLEETREG_STALE_CREDENTIAL_SECONDS", 604800, minimum=0),
        )

    @classmethod
    def off(cls) -> ThrottleSettings:
        return cls((), (), ())


# A boot storm comes from a few addresses (one factory NAT, a few proxies): parsing them
# with ipaddress on every call was ~2-3 % of the intake's time under load. A pure
# function of its arguments, so a bounded memo (arguments an attacker picks only evict).
SOURCE_MEMO_SIZE = 4096


@functools.lru_cache(maxsize=SOURCE_MEMO_SIZE)
def source_of(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The source a request is counted under: the client's IPv4 address, or its IPv6 /64.

    ``forwarded_for`` (the ``X-Forwarded-For`` header) is read only when the peer is a
    trusted proxy: from the right, the first address that is not itself a trusted
    proxy is the client (a hop may carry a port: ``1.2.3.4:5555``, ``[2001:db8::1]:443``).
    Anything unparsable falls back to the peer. Memoized
    (``SOURCE_MEMO_SIZE`` argument sets): the answer depends on nothing else.
    """
    address = _address(peer)
    if address is not None and forwarded_for and _trusted(address, trusted):
        for hop in reversed(forwarded_for.split(",")):
            candidate = _address(hop.strip())
            if candidate is None:
                break
            address = candidate
            if not _trusted(candidate, trusted):
                break
    if address is None:
        return "unknown"
    return address_source(address)


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a peer or a proxy writes it: bare, ``IPv4:port`` (Azure Application
    Gateway), ``[IPv6]`` or ``[IPv6]:port``; a zone ID is dropped. A bare IPv6 address has
    several colons, so one colon is always a port."""
    if not text:
        return None
    if text.startswith("["):
        text, bracket, port = text[1:].partition("]")
        if not bracket or (port and not (port[:1] == ":" and port[1:].isdigit())):
            return None
    elif text.count(":") == 1:
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def key_identity(api_key: str) -> str:
    """What a key's bucket is named after: a digest, so no key sits in memory as text."""
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


TargetKind = Literal["code", "device", "key", "hardware", "provisioning", "revoked", "clone", "person"]


def target_of(kind: TargetKind, *parts: str) -> str:
    """What a refused call tried to guess, as its (source, target) bucket names it: the
    kind and a digest of the guessed thing (a code, a device ID, an API key, a code and
    hardware ID), so that no code or key is stored as text, and an attacker's long path
    costs a fixed-size key."""
    joined = "\0".join(parts)
    return f"{kind}:{hashlib.sha256(joined.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


def _pair(source: str, target: str) -> str:
    # "|" is in no source (IPv4, IPv6/64, "unknown") and in no target: the announcement's
    # payload ("source:<key> <until>") carries the pair as one key.
    return f"{source}|{target}"


def _clone_key(source: str, code: str, hardware_id: str) -> str:
    # A pair of its own target kind: no refusal bucket is ever asked about it.
    return _pair(source, target_of("clone", code, hardware_id))


def _limit_text(item: RateLimitItem) -> str:
    return f"{item.amount}/{item.GRANULARITY.name}"


@dataclass
class Throttle:
    """The limits of one service instance; see the module docstring.

    ``refusal_storage`` is shared by every instance (Postgres); ``announce`` tells the
    other instances that a source is blocked until an epoch time.
    """

    settings: ThrottleSettings
    service: str
    refusal_storage: Storage | None = None
    announce: Callable[[str, float], Awaitable[None]] | None = None
    _blocked: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # Calls refused by a code's new-device limit, by (code, start of the minute): the intake
    # reports them for webhooks' registration.refused summary (take_refused_codes).
    _refused_codes: Counter[tuple[str, float]] = field(default_factory=Counter)
    # Console keys past their rate, until when (epoch seconds): their sessions' next requests
    # are refused before the session is even read (console_key_wait). Bounded as _blocked.
    _console_blocked: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # Operator keys (key_identity) past their rate, until when: the same for the APIs' calls
    # (key_wait), so a busy key's flood costs no key lookup either. Only keys that
    # authenticated are ever counted, so only they are here.
    _keys_blocked: OrderedDict[str, float] = field(default_factory=OrderedDict)
    # The words of the last clone-rate refusal deduplication gave this instance (its limit
    # and window are deployment-wide): what the claims answered from memory say, "" before any.
    clone_rate_reason: str = ""

    def __post_init__(self) -> None:
        memory = MemoryStorage()
        self._moving = MovingWindowRateLimiter(memory)
        self._refusals = (
            FixedWindowRateLimiter(self.refusal_storage) if self.refusal_storage is not None else None
        )

    # -- refused calls per source and per (source, target) ---------------------------

    def retry_after(self, source: str, target: str | None = None) -> int | None:
        """Seconds a call of ``source`` that fails to prove anything (about ``target``, if
        given) must still wait, or None when neither its source nor its (source, target)
        bucket is blocked. A call that proves something is never asked."""
        wait = self._wait(source)
        if target is not None:
            wait = max(wait, self._wait(_pair(source, target)))
        return math.ceil(wait) if wait > 0 else None

    def blocked(self, source: str, target: str | None = None) -> tuple[bool, bool]:
        """Whether ``source``'s own bucket, and its (source, ``target``) bucket, are blocked
        now (both False for an unblocked caller: the ordinary path, no registry read)."""
        by_target = self._wait(_pair(source, target)) > 0 if target is not None else False
        return self._wait(source) > 0, by_target

    def check_source(self, source: str, target: str | None = None) -> None:
        """Raise TooManyRequests while a failing call of ``source`` (on ``target``) is blocked;
        its ``rule`` names the bucket that blocks it longer (``refusals_per_source`` or
        ``refusals_per_target``)."""
        by_source = self._wait(source)
        by_target = self._wait(_pair(source, target)) if target is not None else 0.0
        wait = max(by_source, by_target)
        if wait <= 0:
            return
        rule = "refusals_per_source" if by_source >= by_target else "refusals_per_target"
        THROTTLED.labels(self.service, rule).inc()
        raise TooManyRequests(
            "too many refused calls from this address: slow down and try again later",
            retry_after=math.ceil(wait),
            rule=rule,
        )

    def _wait(self, key: str) -> float:
        until = self._blocked.get(key)
        if until is None:
            return 0.0
        wait = until - time.time()
        if wait <= 0:
            self._blocked.pop(key, None)
            THROTTLE_BLOCKED_SOURCES.labels(self.service).set(len(self._blocked))
        return wait

    async def refused(self, source: str, target: str | None = None, *, per_source: bool = True) -> None:
        """Count one refused call of ``source`` in its source bucket (unless ``per_source``
        is False: a stale credential, or a guess answered 429 already) and, with ``target``
        (what was guessed: :func:`target_of`), in its (source, target) bucket; a bucket
        past one of its windows is blocked everywhere until that window ends (no longer:
        the window starts at the first refusal counted in it)."""
        THROTTLE_REFUSALS.labels(self.service).inc()
        if self._refusals is None:
            return
        buckets = [("refusals", source, self.settings.refusals_per_source)] if per_source else []
        if target is not None:
            buckets.append(("refusals-target", _pair(source, target), self.settings.refusals_per_target))
        for namespace, key, items in buckets:
            until = 0.0
            for item in items:
                # "30/minute" allows 30 refusals: the 30th already closes the window.
                hit = await self._refusals.hit(item, namespace, key)
                if not hit or not await self._refusals.test(item, namespace, key):
                    stats = await self._refusals.get_window_stats(item, namespace, key)
                    until = max(until, stats.reset_time)
            if until > time.time():
                await self._block_and_announce(source, key, until, per_target=namespace != "refusals")

    async def attempt(self, source: str, target: str) -> int | None:
        """Count one attempt of ``source`` on ``target`` (:func:`target_of`) in its (source,
        target) bucket BEFORE the call is evaluated, at the limits of
        ``refusals_per_target``; the seconds it must wait when that bucket is past one of
        its windows (nothing evaluated then), else None.

        Each hit is one atomic ``INSERT .. ON CONFLICT .. RETURNING count`` (the
        fixed-window strategy on :class:`shared.db.throttle.PostgresStorage`), so calls
        arriving together each see their own count: a burst gets at most the allowance
        evaluated, not everything that arrived before the count caught up. The windows
        are hit in order and the first one past its limit stops the others (an hour
        counts the attempts its minutes let through). A bucket past its limit is blocked
        everywhere until that window ends (the pair's own wait: never the source's), and
        its next attempts are refused from memory, counted nowhere. Raises what the
        storage raises (the registry unreachable): nothing is evaluated uncounted."""
        key = _pair(source, target)
        wait = self._wait(key)
        if wait > 0:
            THROTTLED.labels(self.service, "refusals_per_target").inc()
            return math.ceil(wait)
        if self._refusals is None:
            return None
        for item in self.settings.refusals_per_target:
            if await self._refusals.hit(item, "refusals-target", key):
                continue
            stats = await self._refusals.get_window_stats(item, "refusals-target", key)
            await self._block_and_announce(source, key, stats.reset_time, per_target=True)
            THROTTLED.labels(self.service, "refusals_per_target").inc()
            return max(1, math.ceil(stats.reset_time - time.time()))
        return None

    async def _block_and_announce(self, source: str, key: str, until: float, *, per_target: bool) -> None:
        """Block ``key`` until ``until``; logged and announced only when the block is new or
        extends the known one by a second or more: the in-flight refusals of a burst land
        together and would each write a line and send a notification (attack 3, G6)."""
        known = self._blocked.get(key, 0.0)
        self.block(key, until)
        if until < max(known, time.time()) + 1.0:
            return
        log.warning(
            "source throttled after repeated refusals",
            extra={
                "source": source,
                "per_target": per_target,
                "retry_after_s": math.ceil(until - time.time()),
            },
        )
        if self.announce is not None:
            await self.announce(key, until)

    def block(self, source: str, until: float) -> None:
        """Refuse failing calls of ``source`` (a source, or a ``source|target`` pair) until
        the epoch time ``until`` (kept in memory, bounded)."""
        if until <= self._blocked.get(source, 0.0):
            return
        self._blocked[source] = until
        self._blocked.move_to_end(source)
        while len(self._blocked) > MAX_BLOCKED_SOURCES:
            self._blocked.popitem(last=False)
        THROTTLE_BLOCKED_SOURCES.labels(self.service).set(len(self._blocked))

    def apply_announcement(self, payload: str) -> bool:
        """Apply a ``source:<source> <until>`` payload; False if it is not one."""
        if not payload.startswith("source:"):
            return False
        source, _, until = payload.removeprefix("source:").rpartition(" ")
        try:
            self.block(source, float(until))
        except ValueError:
            log.warning("malformed throttle announcement ignored")
        return True

    # -- the clone rate's wait, per (source, code and claimed hardware ID) -------------

    async def hold_clone_rate(self, source: str, code: str, hardware_id: str, retry_after: float) -> None:
        """Deduplication refused a claim of ``hardware_id`` with ``code`` from ``source`` by
        the clone rate per source, for ``retry_after`` seconds (its ``Retry-After``): until
        then every instance answers that source's other claims of the ID itself
        (:meth:`clone_rate_wait`), nothing published. Announced once per refusal that
        lengthens the wait by a second or more (the in-flight refusals of a flood land
        together: one notification, not one each)."""
        key = _clone_key(source, code, hardware_id.lower())
        until = time.time() + retry_after
        if until < self._blocked.get(key, 0.0) + 1.0:
            return
        self.block(key, until)
        if self.announce is not None:
            await self.announce(key, until)

    def clone_rate_wait(self, source: str, code: str, hardware_id: str) -> int | None:
        """Seconds a claim of ``hardware_id`` with ``code`` from ``source`` must still wait,
        or None: the wait of a clone-rate refusal of the ID itself (lower case) or of one of
        its index-suffix ancestors (``H-01`` waits with ``H``: deduplication counts a
        spelling of an existing ID with it; a refused ``H`` exists). A sibling
        (``b8-27-eb-00-00-03`` beside a refused ``b8-27-eb-00-00-02``) never waits. No
        registry read; the caller lets a claim that proves its device through first."""
        wait = max(
            self._wait(_clone_key(source, code, claimed))
            for claimed in (hardware_id.lower(), *hardware_id_ancestors(hardware_id))
        )
        return math.ceil(wait) if wait > 0 else None

    # -- requests per operator key ---------------------------------------------------

    async def check_key(self, api_key: str) -> None:
        """Count one request of an operator key that authenticated (shared.http.account_for:
        never an unknown token, so the limiter's memory is bounded by the keys that exist);
        raise TooManyRequests past its rate, and :meth:`key_wait` refuses the key's next
        calls before their lookup until the window allows it again."""
        identity = key_identity(api_key)
        try:
            await self._hit_all(self.settings.requests_per_key, "key", identity, "requests_per_key")
        except TooManyRequests as exc:
            self._hold(self._keys_blocked, identity, exc.retry_after)
            raise

    def key_wait(self, api_key: str) -> int | None:
        """Seconds the operator key must still wait after :meth:`check_key` refused it, or
        None (an unknown token is never held: it was never counted); a refusal here is
        counted like the check's own."""
        return self._held_wait(self._keys_blocked, key_identity(api_key))

    async def check_console_key(self, key_id: str) -> None:
        """Count one console request of a session opened with the key ``key_id``; raise
        TooManyRequests past the per-key rate. Every session of one key shares the bucket
        (a bucket of its own, beside the key's API calls, at the same rate)."""
        try:
            await self._hit_all(self.settings.requests_per_key, "console-key", key_id, "requests_per_key")
        except TooManyRequests as exc:
            self._hold(self._console_blocked, key_id, exc.retry_after)
            raise

    def console_key_wait(self, key_id: str) -> int | None:
        """Seconds the console key ``key_id`` must still wait after :meth:`check_console_key`
        refused it, or None; a refusal here is counted like the check's own."""
        return self._held_wait(self._console_blocked, key_id)

    @staticmethod
    def _hold(held: OrderedDict[str, float], key: str, seconds: float) -> None:
        held[key] = time.time() + seconds
        held.move_to_end(key)
        while len(held) > MAX_BLOCKED_SOURCES:
            held.popitem(last=False)

    def _held_wait(self, held: OrderedDict[str, float], key: str) -> int | None:
        until = held.get(key)
        if until is None:
            return None
        wait = until - time.time()
        if wait <= 0:
            del held[key]
            return None
        THROTTLED.labels(self.service, "requests_per_key").inc()
        return math.ceil(wait)

    # -- new devices per code --------------------------------------------------------

    async def check_code(self, code: str) -> None:
        """Raise TooManyRequests while the code's new-device window is full."""
        for item in self.settings.new_devices_per_code:
            if not await self._moving.test(item, "code", code):
                stats = await self._moving.get_window_stats(item, "code", code)
                THROTTLED.labels(self.service, "new_devices_per_code").inc()
                self._refused_codes[code, math.floor(time.time() / 60) * 60] += 1
                raise TooManyRequests(
                    f"too many new devices for this bulk identification code (limit {_limit_text(item)})",
                    retry_after=math.ceil(stats.reset_time - time.time()),
                    rule="new_devices_per_code",
                )

    def take_refused_codes(self) -> dict[tuple[str, float], int]:
        """The calls refused by a code's new-device limit since the last take, by code and
        minute (Unix seconds of its start); the counts start again from zero."""
        taken, self._refused_codes = dict(self._refused_codes), Counter()
        return taken

    async def count_new_device(self, code: str) -> None:
        for item in self.settings.new_devices_per_code:
            await self._moving.hit(item, "code", code)

    async def _hit_all(self, items: Sequence[RateLimitItem], kind: str, identity: str, rule: str) -> None:
        for item in items:
            if not await self._moving.hit(item, kind, identity):
                stats = await self._moving.get_window_stats(item, kind, identity)
                THROTTLED.labels(self.service, rule).inc()
                raise TooManyRequests(
                    f"too many requests for this API key (limit {_limit_text(item)})",
                    retry_after=math.ceil(stats.reset_time - time.time()),
                    rule=rule,
                )


# -- HTTP wiring -----------------------------------------------------------------------

THROTTLE = web.AppKey("throttle", Throttle)
SOURCE = web.RequestKey("source", str)  # the source the request is counted under
REFUSED = web.RequestKey("refused", bool)  # the handler refused the call (counts per source)
TARGET = web.RequestKey("target", str)  # what the refused call tried to guess (target_of)
# The refusal counts on its (source, target) bucket only, and is never answered 429 in its
# place (a revoked code's board: the same 403 always, its writes bounded by the intake).
PAIR_ONLY = web.RequestKey("pair_only", bool)
# Health, readiness and metrics are not on the throttled apps at all (the operations port).
UNTHROTTLED_PATHS = frozenset({"/openapi.yaml"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_source(request: web.Request) -> str:
    """The source a request counts under (computed once, by the middleware)."""
    cached = request.get(SOURCE)
    if isinstance(cached, str):
        return cached
    throttle = request.app.get(THROTTLE)
    trusted = throttle.settings.trusted_proxies if throttle is not None else ()
    # Every X-Forwarded-For line, joined in order: a proxy may add its own line after
    # one the client sent, and only the rightmost hops are the proxies' word.
    forwarded = ", ".join(request.headers.getall("X-Forwarded-For", [])) or None
    source = source_of(request.remote, forwarded, trusted)
    request[SOURCE] = source
    return source


def from_trusted_proxy(request: web.Request) -> bool:
    """Whether the connection's peer (not what any header says) is in
    FLEETREG_TRUSTED_PROXIES: only then are a proxy's headers (``X-Forwarded-For``, a
    client certificate's, shared/client_certs.py) believed."""
    throttle = request.config_dict.get(THROTTLE)
    address = _address(request.remote)
    return (
        throttle is not None and address is not None and _trusted(address, throttle.settings.trusted_proxies)
    )


def mark_refused(request: web.Request, target: str | None = None, *, per_source: bool = True) -> None:
    """The handler refused the call for a reason that counts against its source (and,
    with ``target`` (:func:`target_of`), against its (source, target) bucket). The
    middleware counts it, or answers 429 instead when the source or the pair is blocked.

    With ``per_source`` False (and a ``target``), the refusal counts on the pair only and
    its answer is never replaced: a stale credential whose writes the caller bounds itself
    (a revoked code, shared/throttle.py's module docstring)."""
    request[REFUSED] = True
    if target is not None:
        request[TARGET] = target
        request[PAIR_ONLY] = not per_source


def clear_refused(request: web.Request) -> None:
    """The call proved something after all (the right key at the console's sign-in, sent
    with a lapsed session cookie that marked it refused): neither counted nor answered 429."""
    request[REFUSED] = False


def blocked_refusal(request: web.Request) -> TooManyRequests | None:
    """For a route that answers in its own words (the reference protocol, the console):
    the 429 to give instead of the refusal it marked (:func:`mark_refused`) while the
    caller's source or (source, target) is blocked, else None. A refusal answered so is
    no longer counted (waiting calls never lengthen a block)."""
    throttle = request.config_dict.get(THROTTLE)
    if throttle is None or not request.get(REFUSED):
        return None
    try:
        throttle.check_source(request_source(request), request.get(TARGET))
    except TooManyRequests as exc:
        request[REFUSED] = False
        return exc
    return None


def _basic_user(authorization: str | None) -> str | None:
    """The user ID of an ``Authorization: Basic`` header (RFC 7617), None for any other."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, ValueError):
        return None
    return user or None


def _credential_target(request: web.Request) -> str | None:
    """What a 401 refused: the device of the path (a device call) or of EST's Basic user ID
    (the device ID: a wrong secret guessed through EST counts on that device's pair as
    through the native API), or the API key presented."""
    device_id = request.match_info.get("device_id")
    if device_id is None and request.path.startswith("/.well-known/est/"):
        device_id = _basic_user(request.headers.get("Authorization"))
    if device_id is not None:
        return target_of("device", device_id.lower())
    token = bearer(request.headers.get("Authorization"))
    return target_of("key", token) if token is not None else None


async def _count_refusal(
    throttle: Throttle, source: str, target: str | None, *, per_source: bool = True
) -> None:
    try:
        await throttle.refused(source, target, per_source=per_source)
    except Exception:  # the refusal stands; losing one count is better than a 5xx
        log.warning("refused call not counted: the registry is unreachable")


def throttle_middleware(*, per_key: bool, own_answers: tuple[str, ...] = ()) -> Callable[..., object]:
    """Counts the calls that fail to prove anything (a 401 that presented a credential, a
    handler's :func:`mark_refused`) and answers them 429 + ``Retry-After`` instead while
    their source or (source, target) is blocked; with ``per_key``, 429 for operator keys
    over their rate (counted by shared.http.account_for once the key is known: an unknown
    token is never counted there). The proof is evaluated first, always: a call that
    proves something (a device secret, the current code, an API key, an issued request
    ID) is never refused because of what its address did.

    Paths under ``own_answers`` prefixes (the reference protocol, whose client reads no
    HTTP status; the console's pages) are counted here but refused by their routes, in
    their own words (:func:`blocked_refusal`).
    """

    @web.middleware
    async def throttled(request: web.Request, handler: Handler) -> web.StreamResponse:
        throttle = request.app.get(THROTTLE)
        if throttle is None or request.path in UNTHROTTLED_PATHS:
            return await handler(request)
        source = request_source(request)
        if per_key:
            # A key is counted once it is known (shared.http.account_for), never before: a
            # made-up token leaves nothing in the limiter's memory. A known key already past
            # its rate is refused here, before its lookup.
            token = bearer(request.headers.get("Authorization"))
            wait = throttle.key_wait(token) if token is not None else None
            if wait is not None:
                raise TooManyRequests(
                    "too many requests for this API key: slow down", retry_after=wait, rule="requests_per_key"
                )
            request[KEY_RATE] = throttle.check_key
        own = bool(own_answers) and request.path.startswith(own_answers)
        try:
            response = await handler(request)
        except Unauthorized as exc:
            if exc.counted:
                await _refuse(throttle, source, _credential_target(request), replace=not own)
            raise
        if request.get(REFUSED):
            if request.get(PAIR_ONLY):
                await _count_refusal(throttle, source, request.get(TARGET), per_source=False)
            else:
                await _refuse(throttle, source, request.get(TARGET), replace=not own)
        return response

    return throttled


async def _refuse(throttle: Throttle, source: str, target: str | None, *, replace: bool) -> None:
    """A refusal: 429 (TooManyRequests) instead while blocked, else counted."""
    if replace:
        throttle.check_source(source, target)  # blocked: not counted again
    await _count_refusal(throttle, source, target)


async def open_throttle(
    stack: contextlib.AsyncExitStack,
    settings: ThrottleSettings,
    service: str,
    pool: Pool,
    database_url: str,
    on_payload: Callable[[str], None] | None = None,
    on_connected: Callable[[bool], None] | None = None,
) -> Throttle:
    """A service's throttle with its shared counters and its invalidation listener.

    The listener applies ``source:`` announcements itself and hands every other
    payload (``device:<id>``) to ``on_payload``; ``on_connected`` learns when
    notifications may have been missed.
    """

    async def announce(key: str, until: float) -> None:
        # key: a source, or a "source|target" pair (Throttle.block)
        await notify(pool, f"source:{key} {until:.3f}")

    throttle = Throttle(settings, service, PostgresStorage(pool), announce)

    def deliver(payload: str) -> None:
        if not throttle.apply_announcement(payload) and on_payload is not None:
            on_payload(payload)

    listener = Listener(database_url, deliver, on_connected or (lambda _up: None))
    await listener.start()
    stack.push_async_callback(listener.stop)
    return throttle
