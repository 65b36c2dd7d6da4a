"""The live view of a boot storm: the account's registrations, provisionings, clones,
refusals and online devices per second over a window, and the pipeline's health from
probes taken elsewhere (services/operator/console/health.py: handlers make no HTTP call)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from shared.db import storm
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.domain.devices import online_cutoff
from shared.errors import InvalidInput

# The live view's window and how long a decision may wait for its provisioning files
# before the pipeline is called degraded (a healthy pipeline takes milliseconds).
STORM_WINDOW_MIN_S = 10
STORM_WINDOW_MAX_S = 600
STORM_WAITING_S = 5.0
STORM_SERIES = ("registered", "provisioned", "clones", "refused", "online")


@dataclass(frozen=True)
class StormSecond:
    """One second of the account's storm: new devices registered, devices provisioned
    (confirmed their files), clones detected, requests refused (decided in that second),
    and devices online at its end (shared.domain.devices.is_online)."""

    second: datetime
    registered: int = 0
    provisioned: int = 0
    clones: int = 0
    refused: int = 0
    online: int = 0


@dataclass(frozen=True)
class Storm:
    """The last ``window_s`` seconds, oldest first (one entry per second, zeros included),
    the totals of the window (``online``: at its end), and the decisions of the window
    still waiting for their provisioning files after STORM_WAITING_S seconds."""

    seconds: list[StormSecond]
    totals: dict[str, int]
    waiting: int
    oldest_waiting_s: float | None


def storm_window(query: dict[str, str]) -> int:
    """The ``seconds`` query parameter (default 120), between STORM_WINDOW_MIN_S and
    STORM_WINDOW_MAX_S (InvalidInput otherwise)."""
    raw = query.get("seconds", "120")
    if not raw.isascii() or not raw.isdigit() or not STORM_WINDOW_MIN_S <= int(raw) <= STORM_WINDOW_MAX_S:
        raise InvalidInput(
            f"seconds must be a whole number from {STORM_WINDOW_MIN_S} to {STORM_WINDOW_MAX_S}",
            field="seconds",
        )
    return int(raw)


async def live_storm(
    pool: Pool, account: Account, window_s: int, online_ttl_s: float, now: datetime | None = None
) -> Storm:
    """The account's storm over the last ``window_s`` whole seconds up to ``now``; never
    another account's rows (both statements are bounded by the account: shared.db.storm)."""
    now = now or datetime.now(UTC)
    last = int(now.timestamp())
    first = last - window_s + 1
    start = datetime.fromtimestamp(first, UTC)
    counts = await storm.decisions_per_second(
        pool, account.id, start, now, now - timedelta(seconds=STORM_WAITING_S)
    )
    spans = await storm.devices_per_second(
        pool, account.id, first, last, online_ttl_s, online_cutoff(start, online_ttl_s)
    )
    return tally_storm(first, last, counts, spans, now)


def tally_storm(
    first: int, last: int, counts: list[storm.DecisionCount], spans: list[storm.DeviceSpan], now: datetime
) -> Storm:
    """The per-second series from the repository's groups: decisions are counted in their
    second; online devices by a difference array over [came, gone) (one pass, however many
    devices)."""
    size = last - first + 1
    series = {name: [0] * size for name in STORM_SERIES}
    kind = {"new": "registered", "clone": "clones", "refused": "refused"}
    waiting = 0
    oldest: datetime | None = None
    for c in counts:
        name = kind.get(c.decision)
        if name is not None and first <= c.second <= last:
            series[name][c.second - first] += c.count
        waiting += c.waiting
        if c.oldest_waiting is not None and (oldest is None or c.oldest_waiting < oldest):
            oldest = c.oldest_waiting
    delta = [0] * (size + 1)
    for s in spans:
        if s.provisioned_second is not None and first <= s.provisioned_second <= last:
            series["provisioned"][s.provisioned_second - first] += s.count
        came, gone = max(s.came, first), min(s.gone, last + 1)
        if s.disabled or gone <= came or came > last:
            continue
        delta[came - first] += s.count
        delta[gone - first] -= s.count
    running = 0
    for i in range(size):
        running += delta[i]
        series["online"][i] = running
    seconds = [
        StormSecond(
            datetime.fromtimestamp(first + i, UTC), **{name: series[name][i] for name in STORM_SERIES}
        )
        for i in range(size)
    ]
    totals = {name: sum(series[name]) for name in STORM_SERIES if name != "online"}
    totals["online"] = series["online"][-1]
    return Storm(seconds, totals, waiting, (now - oldest).total_seconds() if oldest is not None else None)


@dataclass(frozen=True)
class Probe:
    """One pipeline service's readiness: ``ok`` when its /readyz answered 200 in time;
    ``problem`` says what went wrong otherwise."""

    url: str
    ok: bool
    problem: str = ""


@dataclass(frozen=True)
class PipelineHealth:
    """healthy when every probe is ok and no decision waits too long; else degraded, with
    one reason per problem (in words an operator can act on)."""

    probes: list[Probe]
    reasons: list[str]

    @property
    def healthy(self) -> bool:
        return not self.reasons


def pipeline_health(probes: Sequence[Probe], storm_now: Storm) -> PipelineHealth:
    """The pipeline's readiness (``probes``, taken by services/operator/console/health.py) and, from the
    account's own storm, its decisions waiting for provisioning: never another account's."""
    reasons = [f"{_service_name(p.url)} is not ready: {p.problem}" for p in probes if not p.ok]
    if storm_now.waiting:
        oldest = f" (the oldest for {storm_now.oldest_waiting_s:.0f} s)" if storm_now.oldest_waiting_s else ""
        reasons.append(
            f"{storm_now.waiting} registration{'s' if storm_now.waiting != 1 else ''} waiting for "
            f"provisioning longer than {STORM_WAITING_S:g} s{oldest}"
        )
    return PipelineHealth(list(probes), reasons)


def _service_name(url: str) -> str:
    """host:port of a probe URL: the operator knows the services by where they run."""
    return urlsplit(url).netloc or url
