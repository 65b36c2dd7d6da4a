"""Issue 27's benchmarks for ``make bench``: the registration hook under load
(docs/performance.md, "Registration hook").

1. **A hook answering in 20 ms** (an aiohttp server in a process of its own): the two-call
   storm of tests/bench/storms.py (closed loop, 200 at once) without a hook and with it,
   alternated so that neither is favoured by the machine's drift (none, hook, hook, none,
   ...). Reported: each storm, the medians, **devices/s with / without** (target >= 0.9)
   and the devices' p99 beside the no-hook p99 plus **the hook's own p99** (its answering
   time as it measured it, in a process of its own: tests/support/hook_server.py; and the
   notifier's latency of its calls from their call rows) plus 10 ms (the target's bound).
2. **The hook down for 30 s in a storm of 20,000 devices** (nothing listening on its port:
   connection refused) from the storm's start, then back (allowing everything): devices
   as real ones, two-call boot, 200 at once, each pending answer polled after its
   Retry-After (tests/support/hook_storm.py). Reported: devices refused (403) and lost
   (told provisioned, not in the registry), duplicated, every call row's outcome, and the
   **recovery** after the hook's return: until the first device is provisioned, and until
   every device waiting at the return is (target: within one Retry-After, 5 s).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

import aiohttp

from cli.simulate import percentile, plan_fleet, summarize
from shared.domain.hooks import PENDING_RETRY_AFTER_S
from tests.bench import storms
from tests.chaos import checks
from tests.support.api import new_operator
from tests.support.hook_storm import boot, hooked_registration, start_hook

# Issue 27's targets.
DEVICES_PER_S_TARGET_RATIO = 0.9
P99_MARGIN_MS = 10.0
HOOK_DELAY_S = 0.020


def _ms_p99(values: list[float]) -> float | None:
    return round(percentile(values, 99), 1) if values else None


async def _call_latencies_ms(stack: storms.Stack, registration_id: str) -> list[float]:
    """The notifier's latency (ms) of each call to the registration's hook (its call rows:
    the slot wait, the connection and the hook's answer)."""
    rows = await stack.pool.fetch(
        "SELECT latency_ms FROM registration_hook_calls WHERE registration_id = $1 AND latency_ms IS NOT NULL",
        uuid.UUID(registration_id),
    )
    return [float(r["latency_ms"]) for r in rows]


async def with_and_without(
    stack: storms.Stack, devices: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    """``rounds`` rounds of a storm without a hook and one with a 20 ms hook (every odd round
    reversed); each storm's figures, the medians and the targets."""
    hook = await start_hook(delay_s=HOOK_DELAY_S)
    results: list[dict[str, Any]] = []
    try:
        for index in range(rounds):
            for hooked in (False, True) if index % 2 == 0 else (True, False):
                answered = len(await hook.read_calls())
                result = await storms.storm(
                    stack,
                    devices,
                    two_call=True,
                    concurrency=concurrency,
                    hook_url=hook.url if hooked else None,
                )
                if hooked:
                    await hook.read_calls()
                    own = hook.answering_ms(since=answered)
                    seen = await _call_latencies_ms(stack, result["registration_id"])
                    result["hook"] = {
                        "calls": len(own),
                        "own_p50_ms": round(percentile(own, 50), 1) if own else None,
                        "own_p99_ms": _ms_p99(own),
                        "notifier_p50_ms": round(percentile(seen, 50), 1) if seen else None,
                        "notifier_p99_ms": _ms_p99(seen),
                    }
                results.append(result | {"hooked": hooked})
    finally:
        await hook.stop()
    return summarize_pairs(results)


def summarize_pairs(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of the storms with and without the hook, and issue 27's first target."""
    plain = [r for r in results if not r["hooked"]]
    hooked = [r for r in results if r["hooked"]]

    def median(storms_: list[dict[str, Any]], key: str) -> float:
        return round(float(statistics.median(s[key] for s in storms_)), 1)

    plain_rate, hooked_rate = median(plain, "devices_per_s"), median(hooked, "devices_per_s")
    plain_p99, hooked_p99 = median(plain, "p99_ms"), median(hooked, "p99_ms")
    own_p99 = round(statistics.median(s["hook"]["own_p99_ms"] or 0.0 for s in hooked), 1)
    notifier_p99 = round(statistics.median(s["hook"]["notifier_p99_ms"] or 0.0 for s in hooked), 1)
    ratio = round(hooked_rate / plain_rate, 3) if plain_rate else 0.0
    bound = round(plain_p99 + own_p99 + P99_MARGIN_MS, 1)
    return {
        "storms": [
            {
                k: r.get(k)
                for k in (
                    "hooked",
                    "devices",
                    "seconds",
                    "devices_per_s",
                    "p50_ms",
                    "p95_ms",
                    "p99_ms",
                    "errors",
                    "lost",
                    "duplicated",
                    "per_device",
                    "cpu_ms_per_device",
                    "hook",
                )
            }
            for r in results
        ],
        "median_devices_per_s": {"without_hook": plain_rate, "with_hook": hooked_rate},
        "median_p99_ms": {"without_hook": plain_p99, "with_hook": hooked_p99},
        "hook_own_p99_ms": own_p99,
        "hook_notifier_p99_ms": notifier_p99,
        "devices_per_s_ratio": ratio,
        "p99_added_ms": round(hooked_p99 - plain_p99, 1),
        "p99_bound_ms": bound,
        "errors": sum(r["errors"] + r["lost"] + r["duplicated"] for r in results),
        "targets": {
            "devices_per_s_ratio_at_least": DEVICES_PER_S_TARGET_RATIO,
            "ratio_met": ratio >= DEVICES_PER_S_TARGET_RATIO,
            "p99_at_most_ms": bound,
            "p99_met": hooked_p99 <= bound,
        },
    }


async def outage(
    stack: storms.Stack, devices: int, concurrency: int, down_s: float, progress: Any = print
) -> dict[str, Any]:
    """A storm of ``devices`` (``concurrency`` at once) of an auto registration whose hook is
    down (connection refused) for ``down_s`` seconds from the storm's start, then allows."""
    hook = await start_hook(down=True, outage="refused")
    try:
        async with aiohttp.ClientSession() as control:
            operator = await new_operator(control, stack.pool, stack.operator_url)
            registration = await hooked_registration(operator, storms.SERVICES, hook.url)
        plan = plan_fleet(registration["bulk_identification_code"], devices, 0.05, 0.01)
        await storms.checkpoint(stack.pool)
        running = asyncio.create_task(boot(plan, stack.device_url, concurrency=concurrency))
        await asyncio.sleep(down_s)
        await hook.come_back()
        progress(f"  the hook is back after {down_s:.0f} s")
        storm = await running
        await hook.read_calls()
    finally:
        await hook.stop()
    returned_at = hook.returned_at or storm.ended_at
    summary = summarize(plan, storm.results, storm.seconds)
    acknowledged = {r.index: r.device_id for r in storm.results if r.provisioned and r.device_id}
    registry = await checks.storm_registry(stack.pool, operator.account_id, devices, acknowledged)
    outcomes = await stack.pool.fetch(
        "SELECT outcome, count(*) AS n FROM registration_hook_calls WHERE registration_id = $1 GROUP BY outcome",
        uuid.UUID(registration["id"]),
    )
    ready_after = sorted(
        b.ended_at for b in storm.booted if b.result.provisioned and b.ended_at >= returned_at
    )
    waiting = [b for b in storm.booted if b.started_at < returned_at <= b.ended_at]
    first_ready = ready_after[0] - returned_at if ready_after else None
    backlog_ready = max(b.ended_at for b in waiting) - returned_at if waiting else None
    latencies = [b.result.latency_s * 1000 for b in storm.booted if b.result.latency_s is not None]
    after_s = storm.ended_at - returned_at
    return {
        "devices": devices,
        "concurrency": concurrency,
        "hook_down_s": down_s,
        "outage": "connection refused",
        "seconds": round(storm.seconds, 2),
        "devices_per_s": round(summary.provisioned / storm.seconds, 1) if storm.seconds else 0.0,
        "devices_per_s_after_return": round(len(ready_after) / after_s, 1) if after_s > 0 else None,
        "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "p99_ms": _ms_p99(latencies),
        "provisioned": summary.provisioned,
        "errors": summary.errors,
        "error_kinds": summary.error_kinds,
        "refused": summary.error_kinds.get("refused", 0),
        "lost": registry["lost"],
        "duplicated": registry["duplicated"],
        "devices_in_registry": registry["devices_in_registry"],
        "retries": summary.retry_kinds,
        "calls_reaching_the_hook": len(hook.calls),
        "call_rows": {r["outcome"]: int(r["n"]) for r in outcomes},
        "waiting_at_return": len(waiting),
        "first_ready_after_return_s": round(first_ready, 2) if first_ready is not None else None,
        "all_waiting_ready_after_return_s": round(backlog_ready, 2) if backlog_ready is not None else None,
        "targets": {
            "refused": 0,
            "lost": 0,
            "recovery_within_s": PENDING_RETRY_AFTER_S,
            "refused_met": summary.error_kinds.get("refused", 0) == 0,
            "lost_met": registry["lost"] == 0 and summary.provisioned == devices,
            "recovery_met": backlog_ready is not None and backlog_ready <= PENDING_RETRY_AFTER_S,
        },
    }


async def run(
    stack: storms.Stack,
    *,
    devices: int,
    concurrency: int,
    rounds: int,
    outage_devices: int,
    outage_s: float,
    progress: Any = print,
) -> dict[str, Any]:
    """Part 1 (``rounds`` rounds of ``devices``-device storms with and without a 20 ms hook;
    0 rounds: skipped) and part 2 (``outage_devices`` devices, the hook down ``outage_s``;
    0 devices: skipped)."""
    out: dict[str, Any] = {}
    if rounds and devices:
        progress(
            f"registration hook: {rounds} rounds of {devices}-device storms without and with a 20 ms hook"
        )
        started = time.monotonic()
        out["with_and_without"] = await with_and_without(stack, devices, concurrency, rounds)
        pairs = out["with_and_without"]
        progress(
            f"  devices/s with/without {pairs['devices_per_s_ratio']}, p99 +{pairs['p99_added_ms']} ms "
            f"(bound {pairs['p99_bound_ms']} ms), {time.monotonic() - started:.0f} s"
        )
    if outage_devices:
        progress(f"registration hook: down {outage_s:.0f} s in a {outage_devices}-device storm")
        out["outage"] = await outage(stack, outage_devices, concurrency, outage_s, progress)
        found = out["outage"]
        progress(
            f"  refused {found['refused']}, lost {found['lost']}, recovery: first ready "
            f"{found['first_ready_after_return_s']} s, all waiting ready {found['all_waiting_ready_after_return_s']} s"
        )
    return out


def summary(found: dict[str, Any]) -> dict[str, Any]:
    """summary.json's ``hook``: the headline figures."""
    out: dict[str, Any] = {}
    if "with_and_without" in found:
        pairs = found["with_and_without"]
        out["with_and_without"] = {
            k: pairs[k]
            for k in (
                "median_devices_per_s",
                "median_p99_ms",
                "hook_own_p99_ms",
                "hook_notifier_p99_ms",
                "devices_per_s_ratio",
                "p99_added_ms",
                "p99_bound_ms",
                "errors",
                "targets",
            )
        }
    if "outage" in found:
        o = found["outage"]
        out["outage"] = {
            k: o[k]
            for k in (
                "devices",
                "hook_down_s",
                "devices_per_s",
                "refused",
                "lost",
                "duplicated",
                "errors",
                "waiting_at_return",
                "first_ready_after_return_s",
                "all_waiting_ready_after_return_s",
                "call_rows",
                "targets",
            )
        }
    return out
