"""``make chaos``: faults injected in turn during a boot storm and during a bulk publish,
on a separate local stack (var/chaos-stack, ports + 1000); see docs/chaos.md.

For each fault: the recovery time seen by the load generator (first failed call after the
fault to the first success after it), what the registry holds against what was
acknowledged (lost, duplicated), and for a poison record its dead-letter entry and its
partition's progress. Prints a table and writes var/chaos/summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from cli.output import print_table
from shared.db.pool import open_pool
from shared.kafka import Topics
from shared.service import use_fast_event_loop
from shared.settings import DatabaseSettings, Secret
from tests.chaos.scenario import Fault, Target, bulk_wave, storm_wave
from tests.chaos.stack import ROOT, ChaosStack

OUT = ROOT / "var" / "chaos"
SERVICES = ("intake", "dedup", "provisioning", "operator", "ingestion", "notifier")
STORM_FAULTS = [
    *(f"kill-{s}" for s in SERVICES),
    "broker-restart",
    "postgres-restart",
    "poison-registration.requested",
    "poison-device.signals",
    "poison-registration.decided",
    "poison-registration.outcomes",
    # Every schema-valid-but-wrong record on every partition of every consumed topic
    # (tests/chaos/poison.py), then the storm: all its devices must be provisioned.
    "poison-schema",
]
BULK_FAULTS = [
    *(f"kill-{s}" for s in ("ingestion", "provisioning", "dedup", "intake", "operator")),
    "broker-restart",
    "postgres-restart",
    "poison-bulk.publish",
]


def _faults(names: str | None, during: str, defaults: list[str]) -> list[Fault]:
    chosen = defaults if names is None else [n for n in names.split(",") if n in defaults]
    return [Fault(n, during) for n in chosen]


async def main(args: argparse.Namespace, stack: ChaosStack) -> dict[str, Any]:
    infra = stack.infra
    pool = await open_pool(DatabaseSettings(url=Secret(infra["DATABASE_URL"]), pool_min=1, pool_max=5))
    target = Target(
        device_url=stack.device_url,
        operator_url=stack.operator_url,
        bulk_url=stack.bulk_url,
        bootstrap=infra["KAFKA_BOOTSTRAP_SERVERS"],
        topics=Topics("fleetreg"),
        pool=pool,
        group=lambda service: f"fleetreg-{service}",
        kill=stack.kill,
        start=stack.start,
        restart_broker=stack.restart_broker,
        restart_postgres=stack.restart_postgres,
    )
    storm_faults = _faults(args.faults, "storm", STORM_FAULTS) if args.devices else []
    bulk_faults = _faults(args.faults, "bulk", BULK_FAULTS) if args.bulk_rows else []
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=60)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            if storm_faults:
                per_wave = max(50, args.devices // (len(storm_faults) + 1))
                baseline = await storm_wave(
                    target, session, per_wave, None, seed=0, concurrency=args.concurrency
                )
                _say(baseline)
                rows.append(baseline)
                per_device = baseline["storm_s"] / per_wave
                # The fault lands early in its wave, while most of its devices are still to boot.
                after = max(0.1, min(1.0, baseline["storm_s"] * 0.15))
                for i, fault in enumerate(storm_faults, start=1):
                    row = await storm_wave(
                        target,
                        session,
                        per_wave,
                        fault,
                        seed=i,
                        concurrency=args.concurrency,
                        fault_after_s=after,
                    )
                    row["storm_delay_s"] = round(row["storm_s"] - per_device * per_wave, 2)
                    _say(row)
                    rows.append(row)
            if bulk_faults:
                per_wave = max(100, args.bulk_rows // len(bulk_faults))
                for fault in bulk_faults:
                    row = await bulk_wave(target, session, per_wave, fault)
                    _say(row)
                    rows.append(row)
    finally:
        await pool.close()
    faults = [r for r in rows if r["fault"] != "none (baseline)"]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "devices": args.devices,
        "bulk_rows": args.bulk_rows,
        "duration_s": round(time.monotonic() - started, 1),
        "baseline": next((r for r in rows if r["fault"] == "none (baseline)"), None),
        "faults": faults,
        "ok": all(_ok(r) for r in faults),
    }


def _ok(row: dict[str, Any]) -> bool:
    return (
        row.get("lost") == 0
        and row.get("duplicated") == 0
        and row.get("recovery_s") is not None
        and row.get("dead_lettered") is not False
        and row.get("partition_progress") is not False
    )


def _say(row: dict[str, Any]) -> None:
    print(
        f"chaos: {row['fault']} during {row['during']}: recovery {row.get('recovery_s')} s, "
        f"lost {row.get('lost')}, duplicated {row.get('duplicated')}",
        file=sys.stderr,
        flush=True,
    )


def report(summary: dict[str, Any]) -> None:
    table = [
        (
            r["fault"],
            r["during"],
            r.get("devices", r.get("rows")),
            r.get("recovery_s"),
            r.get("failed_calls"),
            r.get("storm_delay_s", "-"),
            r.get("lost"),
            r.get("duplicated"),
            {True: "yes", False: "NO", None: "-"}[r.get("dead_lettered")],
            {True: "yes", False: "NO", None: "-"}[r.get("partition_progress")],
            "ok" if _ok(r) else "FAIL",
        )
        for r in summary["faults"]
    ]
    headers = [
        "fault",
        "during",
        "devices/rows",
        "recovery s",
        "failed calls",
        "storm delay s",
        "lost",
        "duplicated",
        "dead-lettered",
        "partition moved on",
        "verdict",
    ]
    print_table(table, headers)
    base = summary["baseline"]
    if base:
        print(f"baseline wave without a fault: {base['devices']} devices in {base['storm_s']} s")
    print(
        f"{len(summary['faults'])} faults in {summary['duration_s']} s: {'all ok' if summary['ok'] else 'FAILURES'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__)
    parser.add_argument(
        "--devices", type=int, default=20_000, help="devices of the boot storm, over all faults (0: skip)"
    )
    parser.add_argument(
        "--bulk-rows", type=int, default=200_000, help="rows published in bulk, over all faults (0: skip)"
    )
    parser.add_argument("--concurrency", type=int, default=100, help="devices booting at once")
    parser.add_argument("--faults", help="comma-separated fault names to run (default: all)")
    parser.add_argument(
        "--var", type=Path, default=ROOT / "var" / "chaos-stack", help="the chaos stack's folder"
    )
    parser.add_argument("--port-offset", type=int, default=1000, help="added to every default port")
    parser.add_argument("--keep", action="store_true", help="leave the chaos stack running afterwards")
    arguments = parser.parse_args()
    chaos_stack = ChaosStack(arguments.var.resolve(), arguments.port_offset)
    chaos_stack.up()
    use_fast_event_loop()
    try:
        outcome = asyncio.run(main(arguments, chaos_stack))
    finally:
        if not arguments.keep:
            chaos_stack.down()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "summary.json").write_text(json.dumps(outcome, indent=2) + "\n", encoding="utf-8")
    report(outcome)
    print(f"written to {OUT / 'summary.json'}")
    sys.exit(0 if outcome["ok"] else 1)
