"""Simulated devices booting against the native device API, and the report of the run.

A run has two halves:

* a **plan** (pure, deterministic for a given seed): which devices boot, with which
  hardware ID, fingerprint, registration key, whether they are clones of another
  device of the run and whether their first registration answer gets "lost";
* the **run** itself: every device registers (polling while the answer is pending),
  adopts the hardware ID it is told, downloads its manifest and every provisioning
  file, verifies them and confirms with ``ready``. One failing device never stops
  the run; its failure is counted by kind in the :class:`Summary`.

Like a real device, a simulated one retries every call of its boot that meets a fault
(a refused or reset connection, a timeout, a 5xx, a 429) after a capped exponential
backoff with full jitter, never sooner than the server's ``Retry-After``, until its
deadline (:class:`RunOptions`); a definitive answer (403 refused, any other 4xx) ends
it at once. Retries are counted by kind in the :class:`Summary`.

Device secrets live only in memory for the duration of one device's boot; they are
never logged, printed or put into the summary.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from shared.domain import derived_keys
from shared.domain.identifiers import normalize_code, validate_hardware_id
from shared.errors import InvalidInput

ProgressCallback = Callable[[int, int], None]
"""Called as ``callback(done, total)`` each time a device has finished (either way)."""

PERCENTILES = (50, 95, 99)

Clock = Callable[[], float]
"""A monotonic clock in seconds (``time.monotonic``; tests pass a fake one)."""
Sleep = Callable[[float], Awaitable[None]]
"""Waits the given seconds (``asyncio.sleep``; tests pass a fake one)."""

_T = TypeVar("_T")


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class DevicePlan:
    """One simulated device: what it claims and how it behaves.

    ``clone_of`` is the index of the device of the same run whose hardware ID this
    one reuses (with its own fingerprint). Every device sends an ``idempotency_key`` (as
    docs/device-api.md asks of real devices): a retry after a lost response
    (``lost_response``) carries the first call's key and so gets its secret back.
    """

    index: int
    hardware_id: str
    cpu_id: str
    mac: str
    clone_of: int | None = None
    lost_response: bool = False
    idempotency_key: str | None = None
    registration_key: str | None = None

    def registration_body(self, code: str, group_key: str | None = None) -> dict[str, Any]:
        """The JSON body of this device's ``POST /v1/registrations`` (the same on a retry,
        but for a derived_key product's proof: with ``group_key``, the device key of its
        hardware ID proves a fresh nonce on every send, docs/device-identity.md)."""
        body: dict[str, Any] = {
            "bulk_identification_code": code,
            "hardware_id": self.hardware_id,
            "fingerprint": {"cpu_id": self.cpu_id, "mac": self.mac},
        }
        if self.registration_key is not None:
            body["registration_key"] = self.registration_key
        if group_key is not None:
            body["proof"] = new_proof(
                derived_keys.derive_device_key(group_key, self.hardware_id), self.hardware_id
            )
        return body


def new_proof(device_key: str, hardware_id: str, now: float | None = None) -> dict[str, Any]:
    """A proof of ``device_key`` for one registration call, valid five minutes from ``now``
    (the wall clock by default), with a random nonce (docs/device-identity.md)."""
    expires = int(time.time() if now is None else now) + 300
    nonce = secrets.token_hex(16)
    return {
        "expires": expires,
        "nonce": nonce,
        "mac": derived_keys.proof_mac(device_key, hardware_id, expires, nonce),
    }


@dataclass(frozen=True)
class FleetPlan:
    """The devices of one run, all presenting the same Bulk Identification Code.

    ``seed`` is the seed the plan was made from (drawn at random when none was
    given), so any run can be planned again identically.
    """

    code: str
    devices: tuple[DevicePlan, ...]
    seed: int
    bulk: bool = False
    # A derived_key product's group key (base64): every device proves the key derived from
    # it and its hardware ID (clones, sharing a hardware ID, share its key: a copied image).
    group_key: str | None = None

    @property
    def clones(self) -> int:
        """How many devices reuse the hardware ID of another device of the run."""
        return sum(1 for d in self.devices if d.clone_of is not None)

    @property
    def lost_responses(self) -> int:
        """How many devices send their registration twice (lost first response)."""
        return sum(1 for d in self.devices if d.lost_response)


def _share(total: int, rate: float, name: str) -> int:
    """``round(total * rate)`` (halves up) after checking that ``rate`` is in [0, 1]."""
    if not 0.0 <= rate <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be between 0 and 1, not {rate}")
    return math.floor(total * rate + 0.5)


def _resolve_seed(seed: int | None) -> int:
    return secrets.randbits(63) if seed is None else seed


def _checked_code(code: str) -> str:
    try:
        return normalize_code(code)
    except InvalidInput as exc:
        raise ValueError(f"bulk identification code {code!r}: {exc}") from exc


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def _new_hardware_id(rng: random.Random, taken: set[str]) -> str:
    """A MAC-like 12-hex-digit ID (locally administered, unicast), unique within ``taken``."""
    while True:
        value = (rng.getrandbits(48) | (0x02 << 40)) & ~(0x01 << 40)
        hardware_id = f"{value:012x}"
        if hardware_id not in taken:
            taken.add(hardware_id)
            return hardware_id


def _new_fingerprint(rng: random.Random, taken: set[tuple[str, str]]) -> tuple[str, str]:
    """A (cpu_id, mac) pair no other device of the run has."""
    while True:
        cpu_id = _hex(rng, 64)
        mac = ":".join(f"{b:02x}" for b in rng.getrandbits(48).to_bytes(6, "big"))
        if (cpu_id, mac) not in taken:
            taken.add((cpu_id, mac))
            return cpu_id, mac


def _lost_response_positions(rng: random.Random, total: int, rate: float) -> set[int]:
    return set(rng.sample(range(total), _share(total, rate, "lost_response_rate")))


def _idempotency_key(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def plan_fleet(
    code: str,
    devices: int,
    clone_rate: float,
    lost_response_rate: float = 0.05,
    seed: int | None = None,
) -> FleetPlan:
    """Plan an auto-registration boot storm of ``devices`` devices presenting ``code``.

    Promises: exactly ``round(devices * clone_rate)`` devices are clones (at most
    ``devices - 1``: the first device is always an original), every clone reuses the
    hardware ID of an original that comes *earlier* in the plan and has a fingerprint
    of its own; originals have distinct 12-hex-digit hardware IDs; exactly
    ``round(devices * lost_response_rate)`` devices simulate a lost first response;
    every device carries an idempotency key of its own. The same arguments and seed give an equal plan.
    Raises ValueError on a malformed code, a negative device count or a rate outside [0, 1].
    """
    if devices < 0:
        raise ValueError(f"devices must be 0 or more, not {devices}")
    checked = _checked_code(code)
    clones = min(_share(devices, clone_rate, "clone_rate"), max(devices - 1, 0))
    used_seed = _resolve_seed(seed)
    rng = random.Random(used_seed)  # noqa: S311 - simulation data, not secrets
    clone_positions = set(rng.sample(range(1, devices), clones)) if clones else set()
    lost = _lost_response_positions(rng, devices, lost_response_rate)
    hardware_ids: set[str] = set()
    fingerprints: set[tuple[str, str]] = set()
    originals: list[DevicePlan] = []
    planned: list[DevicePlan] = []
    for index in range(devices):
        cpu_id, mac = _new_fingerprint(rng, fingerprints)
        clone_of: int | None = None
        if index in clone_positions:
            source = rng.choice(originals)
            hardware_id, clone_of = source.hardware_id, source.index
        else:
            hardware_id = _new_hardware_id(rng, hardware_ids)
        device = DevicePlan(
            index=index,
            hardware_id=hardware_id,
            cpu_id=cpu_id,
            mac=mac,
            clone_of=clone_of,
            lost_response=index in lost,
            idempotency_key=_idempotency_key(rng),
        )
        if clone_of is None:
            originals.append(device)
        planned.append(device)
    return FleetPlan(code=checked, devices=tuple(planned), seed=used_seed)


def plan_bulk(
    code: str,
    listed: Sequence[tuple[str, str]],
    lost_response_rate: float = 0.05,
    seed: int | None = None,
) -> FleetPlan:
    """Plan the boot of the devices of a bulk registration: ``listed`` holds one
    ``(hardware_id, registration_key)`` pair per device, in boot order.

    Promises: one device per pair, in the given order, each sending its registration
    key; no clones; random fingerprints and the lost-response share as in
    :func:`plan_fleet`. Raises ValueError on a malformed code or hardware ID, a
    hardware ID listed twice or an empty registration key.
    """
    checked = _checked_code(code)
    seen: set[str] = set()
    for hardware_id, key in listed:
        try:
            validate_hardware_id(hardware_id)
        except InvalidInput as exc:
            raise ValueError(f"hardware ID {hardware_id!r}: {exc}") from exc
        if hardware_id in seen:
            raise ValueError(f"hardware ID {hardware_id!r} is listed twice")
        if not key:
            raise ValueError(f"hardware ID {hardware_id!r} has no registration key")
        seen.add(hardware_id)
    used_seed = _resolve_seed(seed)
    rng = random.Random(used_seed)  # noqa: S311 - simulation data, not secrets
    lost = _lost_response_positions(rng, len(listed), lost_response_rate)
    fingerprints: set[tuple[str, str]] = set()
    planned = []
    for index, (hardware_id, key) in enumerate(listed):
        cpu_id, mac = _new_fingerprint(rng, fingerprints)
        planned.append(
            DevicePlan(
                index=index,
                hardware_id=hardware_id,
                cpu_id=cpu_id,
                mac=mac,
                lost_response=index in lost,
                idempotency_key=_idempotency_key(rng),
                registration_key=key,
            )
        )
    return FleetPlan(code=checked, devices=tuple(planned), seed=used_seed, bulk=True)


# --------------------------------------------------------------------------- report


def percentile(values: Iterable[float], pct: float) -> float:
    """The nearest-rank ``pct``-th percentile: the smallest value such that at least
    ``pct`` percent of the values are less than or equal to it.

    Raises ValueError for no values or ``pct`` outside (0, 100].
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {pct}")
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class DeviceResult:
    """What became of one planned device. ``hardware_id`` is the ID it adopted from
    its final ready answer; ``error`` the kind of the failure it gave up on, if any;
    ``retries`` how many of its calls were retried, by kind of fault; ``latency_s``
    the time from its first call to its confirmed ``ready``."""

    index: int
    claimed_hardware_id: str
    device_id: str | None = None
    hardware_id: str | None = None
    clone: bool = False
    provisioned: bool = False
    latency_s: float | None = None
    error: str | None = None
    retries: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    """The report of one run. ``errors`` is the sum of ``error_kinds``; the run is a
    success exactly when it is 0. ``retries`` is the sum of ``retry_kinds`` (faults a
    device retried after: ``connection``, ``timeout``, ``http_<status>`` for a 5xx or
    429), ``devices_retried`` how many devices retried at least once, and
    ``time_to_provisioned_s`` the percentiles, in seconds, of the provisioned devices'
    time from their first call to their confirmed ``ready`` (``latency_ms`` in ms)."""

    devices: int
    provisioned: int
    clones_detected: int
    errors: int
    error_kinds: dict[str, int]
    throughput_per_s: float
    latency_ms: dict[str, float | None]
    duration_s: float
    hardware_ids_unique: bool
    clones_planned: int
    lost_responses_planned: int
    seed: int
    retries: int = 0
    retry_kinds: dict[str, int] = field(default_factory=dict)
    devices_retried: int = 0
    time_to_provisioned_s: dict[str, float | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (the stable ``--json`` shape of ``fleetreg simulate``)."""
        return {
            "devices": self.devices,
            "provisioned": self.provisioned,
            "clones_detected": self.clones_detected,
            "errors": self.errors,
            "error_kinds": dict(sorted(self.error_kinds.items())),
            "throughput_per_s": self.throughput_per_s,
            "latency_ms": dict(self.latency_ms),
            "duration_s": self.duration_s,
            "hardware_ids_unique": self.hardware_ids_unique,
            "clones_planned": self.clones_planned,
            "lost_responses_planned": self.lost_responses_planned,
            "seed": self.seed,
            "retries": self.retries,
            "retry_kinds": dict(sorted(self.retry_kinds.items())),
            "devices_retried": self.devices_retried,
            "time_to_provisioned_s": dict(self.time_to_provisioned_s),
        }


def _undetected_clones(results: Sequence[DeviceResult]) -> int:
    """Devices claiming one hardware ID: all but (at most) one of those that got a ready
    answer must have been told they are clones. Which one keeps the ID depends on
    timing, so only the count per claimed ID is checked."""
    answered: dict[str, list[DeviceResult]] = {}
    for result in results:
        if result.hardware_id is not None:
            answered.setdefault(result.claimed_hardware_id, []).append(result)
    missing = 0
    for family in answered.values():
        told = sum(1 for r in family if r.clone)
        missing += max(0, len(family) - 1 - told)
    return missing


def summarize(plan: FleetPlan, results: Sequence[DeviceResult], duration_s: float) -> Summary:
    """The summary of a finished run (pure): counts, error and retry kinds, latency
    (time-to-provisioned) percentiles over the provisioned devices, and the fleet-wide
    checks (each device of a shared hardware ID but one told it is a clone; provisioned
    devices' hardware IDs distinct)."""
    kinds = Counter(r.error for r in results if r.error is not None)
    provisioned = [r for r in results if r.provisioned]
    final_ids = [r.hardware_id for r in provisioned]
    duplicates = len(final_ids) - len(set(final_ids))
    if duplicates:
        kinds["duplicate_hardware_id"] += duplicates
    undetected = _undetected_clones(results)
    if undetected:
        kinds["clone_undetected"] += undetected
    latencies = [r.latency_s * 1000 for r in provisioned if r.latency_s is not None]
    latency_ms: dict[str, float | None] = {
        f"p{p}": round(percentile(latencies, p), 1) if latencies else None for p in PERCENTILES
    }
    to_provisioned = [r.latency_s for r in provisioned if r.latency_s is not None]
    time_to_provisioned_s: dict[str, float | None] = {
        f"p{p}": round(percentile(to_provisioned, p), 3) if to_provisioned else None for p in PERCENTILES
    }
    retry_kinds: Counter[str] = Counter()
    for result in results:
        retry_kinds.update(result.retries)
    return Summary(
        devices=len(plan.devices),
        provisioned=len(provisioned),
        clones_detected=sum(1 for r in results if r.clone),
        errors=sum(kinds.values()),
        error_kinds=dict(kinds),
        throughput_per_s=round(len(provisioned) / duration_s, 2) if duration_s > 0 else 0.0,
        latency_ms=latency_ms,
        duration_s=round(duration_s, 3),
        hardware_ids_unique=duplicates == 0,
        clones_planned=plan.clones,
        lost_responses_planned=plan.lost_responses,
        seed=plan.seed,
        retries=sum(retry_kinds.values()),
        retry_kinds=dict(retry_kinds),
        devices_retried=sum(1 for r in results if r.retries),
        time_to_provisioned_s=time_to_provisioned_s,
    )


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class RunOptions:
    """Timing of a run.

    Every HTTP call is bounded by ``request_timeout_s``. A call that meets a fault is
    retried after a capped exponential backoff with full jitter (a random wait between
    0 and ``min(max_backoff_s, initial_backoff_s * 2 ** (retry - 1))``), plus the
    server's ``Retry-After`` when it sends one, for as long as the retry would start
    before the device's deadline, ``deadline_s`` after its first call. A pending
    registration is polled after its ``Retry-After`` but at most
    ``max_poll_interval_s`` later, until ``registration_deadline_s`` after the first
    call (``None``: until the device's deadline). ``clock`` and ``sleep`` are the
    run's time (fakes in tests). ``two_call``: devices boot in two calls (docs/device-api.md,
    "Two-call boot"): registration and polls ask ``include=files``, the inline files are
    verified as downloaded ones are, then ``ready``; a ready answer without them falls
    back to the manifest and per-file downloads. ``csr``: a PKCS#10 request (PEM) every
    registration carries (one key for the run: what is measured is the issuing); a ready
    answer carrying the device secret must then carry a certificate
    (docs/device-identity.md).
    """

    request_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0
    registration_deadline_s: float | None = None
    max_poll_interval_s: float = 0.5
    deadline_s: float = 300.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    two_call: bool = False
    csr: str = ""


class DeviceFailure(Exception):
    """A device could not finish; ``kind`` is how the summary counts it. ``status`` is
    the HTTP status of the answer that failed it, if any, and ``retry_after`` the
    seconds its server asked to wait before trying again."""

    def __init__(
        self, kind: str, detail: str = "", *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


def retry_kind(exc: BaseException) -> str | None:
    """The kind of fault a device retries after (``connection``, ``timeout``,
    ``http_<status>`` for a 5xx or a 429), or None for a definitive outcome."""
    if isinstance(exc, DeviceFailure):
        if exc.status is not None and (exc.status == 429 or exc.status >= 500):
            return f"http_{exc.status}"
        return None
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return "connection"  # refused, reset, or the server went away mid-answer
    return None


class DeviceRetries:
    """One device's retries: every call of its boot goes through :meth:`call`, which
    retries faults until the device's ``deadline`` (a ``clock`` time) and counts them
    by kind in ``counts``."""

    def __init__(self, options: RunOptions, deadline: float) -> None:
        self.options = options
        self.deadline = deadline
        self.counts: Counter[str] = Counter()
        self._jitter = wait_random_exponential(
            multiplier=options.initial_backoff_s, max=options.max_backoff_s
        )

    def wait(self, retry_state: RetryCallState) -> float:
        """The wait before the next attempt: full jitter over the capped exponential
        window, added to the server's ``Retry-After`` when it sent one (so devices told
        the same Retry-After do not all come back at the same instant)."""
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        retry_after = failure.retry_after if isinstance(failure, DeviceFailure) else None
        return (retry_after or 0.0) + self._jitter(retry_state)

    def stop(self, retry_state: RetryCallState) -> bool:
        """Give up when the next attempt would start at or after the deadline."""
        return self.options.clock() + retry_state.upcoming_sleep >= self.deadline

    def _count(self, retry_state: RetryCallState) -> None:
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        if failure is not None:
            self.counts[retry_kind(failure) or "unexpected"] += 1

    async def call(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        """``await operation()``, retried after each fault (see :func:`retry_kind`);
        raises its last exception at the deadline, and a definitive failure at once."""
        # Nearly every call succeeds at once: the first attempt is made without tenacity's
        # machinery (measured: 18 % of the load generator's CPU in a storm). A fault is
        # then replayed to tenacity as its first attempt's outcome, so the waits, the
        # deadline and the counts are exactly those of a run through tenacity alone.
        try:
            return await operation()
        except Exception as exc:
            if retry_kind(exc) is None:
                raise
            replay: list[Exception] = [exc]

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: retry_kind(exc) is not None),
            wait=self.wait,
            stop=self.stop,
            sleep=self.options.sleep,
            before_sleep=self._count,
            reraise=True,
        )

        async def attempt() -> _T:  # a coroutine function: tenacity awaits only those
            if replay:
                raise replay.pop()
            return await operation()

        result: _T = await retrying(attempt)
        return result


@dataclass(frozen=True)
class _Answer:
    """A registration answer: HTTP status, its JSON body and the Retry-After delay."""

    status: int
    body: dict[str, Any]
    retry_after: float


@dataclass(frozen=True)
class _Ready:
    request_id: str
    device_id: str
    hardware_id: str
    claimed_hardware_id: str
    clone: bool
    manifest_url: str
    device_secret: str = field(default="", repr=False)  # never shown, even in a traceback
    # The two-call boot's inline manifest, files' content included (service passwords).
    manifest: dict[str, Any] | None = field(default=None, repr=False)


def _status_kind(status: int) -> str:
    return "http_5xx" if status >= 500 else f"http_{status}"


def _seconds(raw: object) -> float | None:
    """A non-negative number of seconds from a header or JSON value, else None."""
    try:
        value = float(raw) if isinstance(raw, str | int | float) else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < math.inf else None


def _retry_after(response: aiohttp.ClientResponse, body: dict[str, Any]) -> float:
    for raw in (response.headers.get("Retry-After"), body.get("retry_after")):
        value = _seconds(raw)
        if value is not None:
            return value
    return 1.0


def _failed(response: aiohttp.ClientResponse, what: str) -> DeviceFailure:
    """The failure for an answer of an unexpected status, with its ``Retry-After``
    (seconds; an HTTP date is ignored) for a retry to honour."""
    retry_after = _seconds(response.headers.get("Retry-After"))
    return DeviceFailure(_status_kind(response.status), what, status=response.status, retry_after=retry_after)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as exc:
        raise DeviceFailure("bad_answer", "body is not JSON") from exc
    if not isinstance(parsed, dict):
        raise DeviceFailure("bad_answer", "body is not a JSON object")
    return parsed


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise DeviceFailure("bad_answer", f"{name} missing")
    return value


class DeviceApi:
    """The native device API as one simulated device sees it, over a shared session.

    Each method is one HTTP call, never retried here (callers go through
    :class:`DeviceRetries`): it raises :class:`DeviceFailure` for an answer a device
    cannot use (with the status and ``Retry-After`` of a 5xx or 429); transport errors
    (timeouts, refused connections) propagate as aiohttp raises them.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, options: RunOptions) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.options = options
        self._origin = urlsplit(self.base_url)[:2]
        # scheme://host[:port], exactly as given: a URL starting with it and a "/" is on the origin.
        self._origin_url = "{}://{}".format(*self._origin)
        self._include = "?include=files" if options.two_call else ""

    def url(self, path_or_url: str) -> str:
        """An absolute URL on the device API; refuses to leave its origin (secrets go
        only where the registration was made)."""
        if path_or_url.startswith(self._origin_url + "/"):  # the manifest's file URLs
            return path_or_url
        if path_or_url.startswith("/") and not path_or_url.startswith("//"):  # an absolute path
            return self._origin_url + path_or_url
        url = urljoin(self.base_url + "/", path_or_url)
        if urlsplit(url)[:2] != self._origin:
            raise DeviceFailure("foreign_url", "the answer points outside the device API")
        return url

    @staticmethod
    def _auth(secret: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"}

    async def _answer(self, response: aiohttp.ClientResponse) -> _Answer:
        raw = await response.read()
        if response.status == 429 or response.status >= 500:
            raise _failed(response, "registration")  # a fault, whatever its body (a proxy's page)
        body = _json_object(raw)
        if response.status in (200, 202, 403) or (response.status == 404 and "status" in body):
            return _Answer(response.status, body, _retry_after(response, body))
        raise DeviceFailure(_status_kind(response.status), str(body.get("error", "")), status=response.status)

    async def register(self, device: DevicePlan, code: str, group_key: str | None = None) -> _Answer:
        """Send the device's registration once; return the answer whatever its status.
        Every send carries the device's Idempotency-Key, so a retry is answered as the
        same device."""
        headers = {"Content-Type": "application/json"}
        if device.idempotency_key is not None:
            headers["Idempotency-Key"] = device.idempotency_key
        body = device.registration_body(code, group_key)
        if self.options.csr:
            body["csr"] = self.options.csr
        data = orjson.dumps(body)
        async with self.session.post(
            self.url(f"/v1/registrations{self._include}"), data=data, headers=headers
        ) as response:
            return await self._answer(response)

    async def poll(self, request_id: str) -> _Answer:
        """Ask again for the outcome of an earlier registration request."""
        url = self.url(f"/v1/registrations/{quote(request_id, safe='')}{self._include}")
        async with self.session.get(url) as response:
            return await self._answer(response)

    async def resolve(self, answer: _Answer, claimed: str, retries: DeviceRetries, deadline: float) -> _Ready:
        """Poll a pending answer (each poll retried through ``retries``) until it is
        final; return the ready answer, or raise ``refused`` / ``unknown_request`` /
        ``timeout`` (still pending at the ``clock`` time ``deadline``)."""
        clock, sleep = self.options.clock, self.options.sleep
        while True:
            body = answer.body
            if answer.status == 200 and body.get("status") == "ready":
                ready = _ready(body, claimed)
                if self.options.csr and ready.device_secret and not isinstance(body.get("certificate"), dict):
                    raise DeviceFailure("bad_answer", "no certificate beside the device secret")
                return ready
            if answer.status == 403:
                raise DeviceFailure("refused", str(body.get("reason", "")))
            if answer.status == 404:
                raise DeviceFailure("unknown_request", str(body.get("reason", "")))
            if answer.status != 202 or body.get("status") != "pending":
                raise DeviceFailure("bad_answer", f"status {answer.status} {body.get('status')!r}")
            remaining = deadline - clock()
            if remaining <= 0:
                raise DeviceFailure("timeout", "registration still pending at the deadline")
            await sleep(min(answer.retry_after, self.options.max_poll_interval_s, remaining))
            request_id = _string(body, "request_id")
            answer = await retries.call(partial(self.poll, request_id))

    async def manifest(self, ready: _Ready) -> dict[str, Any]:
        """The device's manifest (authenticated with its secret)."""
        url = self.url(ready.manifest_url)
        async with self.session.get(url, headers=self._auth(ready.device_secret)) as response:
            if response.status != 200:
                raise _failed(response, "manifest")
            return _json_object(await response.read())

    async def file(self, url: str, secret: str) -> bytes:
        """The bytes of one provisioning file."""
        async with self.session.get(self.url(url), headers=self._auth(secret)) as response:
            if response.status != 200:
                raise _failed(response, "file")
            return await response.read()

    async def ready(self, ready: _Ready) -> None:
        """Confirm the provisioning; the API must accept it with 202."""
        url = self.url(f"/v1/devices/{quote(ready.device_id, safe='')}/ready")
        async with self.session.post(url, headers=self._auth(ready.device_secret)) as response:
            await response.read()
            if response.status != 202:
                raise _failed(response, "ready")


def _ready(body: dict[str, Any], claimed: str) -> _Ready:
    """Check a ready answer's shape and consistency: it is about the hardware ID the
    device claimed, and ``clone`` is true exactly when it assigns another one."""
    clone = body.get("clone")
    if not isinstance(clone, bool):
        raise DeviceFailure("bad_answer", "clone missing")
    secret = body.get("device_secret")
    manifest = body.get("manifest")
    if manifest is not None and not isinstance(manifest, dict):
        raise DeviceFailure("bad_answer", "manifest is not an object")
    ready = _Ready(
        request_id=_string(body, "request_id"),
        device_id=_string(body, "device_id"),
        hardware_id=_string(body, "hardware_id"),
        claimed_hardware_id=_string(body, "claimed_hardware_id"),
        clone=clone,
        manifest_url=_string(body, "manifest_url"),
        device_secret=secret if isinstance(secret, str) else "",
        manifest=manifest,
    )
    if ready.claimed_hardware_id != claimed:
        raise DeviceFailure("bad_answer", "claimed_hardware_id is not the one sent")
    if ready.clone != (ready.hardware_id != claimed):
        raise DeviceFailure("bad_answer", "clone flag disagrees with the assigned hardware ID")
    if ready.clone and not ready.hardware_id.startswith(claimed + "-"):
        raise DeviceFailure("bad_answer", "a clone's hardware ID is not an indexed variant of the claim")
    return ready


async def _register(
    api: DeviceApi, plan: FleetPlan, device: DevicePlan, retries: DeviceRetries, deadline: float
) -> _Ready:
    """Register until ready (each send and poll retried through ``retries``). A
    lost-response device sends the same request twice and ignores the first answer;
    both must end as the same device with the same ID."""

    async def send() -> _Answer:
        return await retries.call(lambda: api.register(device, plan.code, plan.group_key))

    first = await send()
    if not device.lost_response:
        return await api.resolve(first, device.hardware_id, retries, deadline)
    final = await api.resolve(await send(), device.hardware_id, retries, deadline)
    try:
        earlier = await api.resolve(first, device.hardware_id, retries, deadline)
    except DeviceFailure as exc:
        if exc.kind in ("refused", "unknown_request"):
            raise DeviceFailure("retry_mismatch", f"the first request ended {exc.kind}") from exc
        raise
    if (earlier.device_id, earlier.hardware_id) != (final.device_id, final.hardware_id):
        raise DeviceFailure("retry_mismatch", "the retry was answered as another device")
    return final


def _verify_file(entry: dict[str, Any], content: bytes) -> None:
    """The file matches its manifest entry: size, SHA-256, and ``#begin`` followed by
    the 36-character provisioning ID on the next line."""
    if len(content) != entry.get("size"):
        raise DeviceFailure("file_mismatch", "size")
    if hashlib.sha256(content).hexdigest() != str(entry.get("sha256", "")).lower():
        raise DeviceFailure("file_mismatch", "sha256")
    provisioning_id = entry.get("provisioning_id")
    if not isinstance(provisioning_id, str) or len(provisioning_id) != 36:
        raise DeviceFailure("bad_answer", "provisioning_id")
    lines = content.decode("ascii", errors="replace").splitlines()
    marked = any(
        line.strip() == "#begin" and lines[i + 1].strip() == provisioning_id
        for i, line in enumerate(lines[:-1])
    )
    if not marked:
        raise DeviceFailure("file_mismatch", "no '#begin' line followed by the provisioning ID")


def _manifest_files(manifest: dict[str, Any], ready: _Ready) -> list[dict[str, Any]]:
    """The manifest's file entries, once it is checked to be about the ready answer's
    device and hardware ID and to list at least one file, each with a ``url``."""
    if manifest.get("device_id") != ready.device_id or manifest.get("hardware_id") != ready.hardware_id:
        raise DeviceFailure("manifest_mismatch", "manifest is about another device or hardware ID")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise DeviceFailure("manifest_mismatch", "manifest lists no files")
    for entry in files:
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise DeviceFailure("bad_answer", "manifest file entry")
    return files


def verify_inline_files(ready: _Ready) -> int:
    """Check a two-call boot's inline manifest as a device does before writing anything
    (docs/device-api.md): every ``content`` ASCII, of its entry's ``size`` and SHA-256,
    marked with its provisioning ID; the manifest about this device. Returns how many
    files it holds; raises :class:`DeviceFailure` for the first that fails."""
    if ready.manifest is None:
        raise DeviceFailure("bad_answer", "no inline manifest")
    files = _manifest_files(ready.manifest, ready)
    for entry in files:
        content = entry.get("content")
        if not isinstance(content, str):
            raise DeviceFailure("bad_answer", "inline file without content")
        try:
            raw = content.encode("ascii")
        except UnicodeEncodeError as exc:
            raise DeviceFailure("file_mismatch", "inline content is not ASCII") from exc
        _verify_file(entry, raw)
    return len(files)


# A downloaded file that does not match the manifest fetched just before: the device changed
# in between (renamed, a service edited) and the next manifest lists the new digests
# (docs/device-api.md, "Provision"). The manifest is fetched again this many times in all.
MANIFEST_ATTEMPTS = 3


async def _download_files(api: DeviceApi, ready: _Ready, retries: DeviceRetries) -> None:
    """Fetch the manifest and every file, each checked against it; on a file that does not
    match, fetch the manifest again (``MANIFEST_ATTEMPTS`` in all, each counted as a
    ``file_changed`` retry) and raise the mismatch after the last."""
    for attempt in range(1, MANIFEST_ATTEMPTS + 1):
        manifest = await retries.call(lambda: api.manifest(ready))
        try:
            for entry in _manifest_files(manifest, ready):
                _verify_file(entry, await retries.call(partial(api.file, entry["url"], ready.device_secret)))
            return
        except DeviceFailure as exc:
            if exc.kind != "file_mismatch" or attempt == MANIFEST_ATTEMPTS:
                raise
            retries.counts["file_changed"] += 1


async def _provision(api: DeviceApi, ready: _Ready, retries: DeviceRetries) -> None:
    """Verify the inline files of a two-call boot's answer, or else fetch the manifest
    and every file and verify them (:func:`_download_files`); then confirm ``ready``
    (each call retried through ``retries``)."""
    if ready.manifest is not None:
        verify_inline_files(ready)
    else:
        await _download_files(api, ready, retries)
    await retries.call(lambda: api.ready(ready))


def _failure_kind(exc: Exception) -> str:
    if isinstance(exc, DeviceFailure):
        return exc.kind
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors too
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return "connection"
    if isinstance(exc, aiohttp.ClientError):
        return "http_client"
    return "unexpected"


async def boot_device(api: DeviceApi, plan: FleetPlan, device: DevicePlan) -> DeviceResult:
    """Boot one device: register, adopt the assigned hardware ID, provision, confirm,
    retrying each call after a fault until ``api.options.deadline_s`` after its first.

    Never raises for a device-side failure: it is recorded as ``DeviceResult.error``,
    and its retries by kind as ``DeviceResult.retries``.
    """
    options = api.options
    result = DeviceResult(index=device.index, claimed_hardware_id=device.hardware_id)
    started = options.clock()
    retries = DeviceRetries(options, started + options.deadline_s)
    pending_until = retries.deadline
    if options.registration_deadline_s is not None:
        pending_until = min(pending_until, started + options.registration_deadline_s)
    try:
        ready = await _register(api, plan, device, retries, pending_until)
        result.device_id, result.hardware_id, result.clone = ready.device_id, ready.hardware_id, ready.clone
        if not ready.device_secret:
            raise DeviceFailure("no_secret", "the ready answer carries no device secret")
        await _provision(api, ready, retries)
    except Exception as exc:  # one device's failure must never end the run
        result.error = _failure_kind(exc)
        return result
    finally:
        result.retries = dict(retries.counts)
    result.provisioned = True
    result.latency_s = options.clock() - started
    return result


async def run_fleet(
    plan: FleetPlan,
    device_url: str,
    concurrency: int,
    progress_cb: ProgressCallback | None = None,
    options: RunOptions | None = None,
) -> Summary:
    """Boot every device of ``plan`` against the native device API at ``device_url``,
    at most ``concurrency`` at a time over one keep-alive session, and summarize.

    Promises: every planned device is booted exactly once (its calls' retries aside,
    each until its deadline, ``options.deadline_s``); failures and retries are counted
    by kind, never raised; ``progress_cb(done, total)`` is called
    once per finished device.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be 1 or more, not {concurrency}")
    options = options or RunOptions()
    timeout = aiohttp.ClientTimeout(total=options.request_timeout_s, connect=options.connect_timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    total = len(plan.devices)
    done = 0

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        api = DeviceApi(session, device_url, options)

        async def one(device: DevicePlan) -> DeviceResult:
            nonlocal done
            async with semaphore:
                result = await boot_device(api, plan, device)
            done += 1
            if progress_cb is not None:
                progress_cb(done, total)
            return result

        started = options.clock()
        results = await asyncio.gather(*(one(d) for d in plan.devices))
        duration = options.clock() - started
    return summarize(plan, results, duration)
