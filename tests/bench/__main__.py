"""``make bench``: throughput and latency of the running system, as ratios to a baseline
measured in the same run (the machine is shared and noisy; absolute figures drift).

* baseline: GET /healthz on the intake at the same concurrency, the ceiling of one
  HTTP round trip through this client and server on this machine right now;
* registration storm: devices of a fresh product (with clones) only register: the
  path through intake -> Kafka -> deduplication -> Kafka -> provisioning -> Kafka -> intake;
* full boot: devices register, download and verify every file, and confirm.

Prints a table and writes var/bench/auto_registration.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from cli.client import operator_client
from cli.config import load_endpoints, require
from cli.output import print_table
from cli.simulate import RunOptions, percentile, plan_fleet, run_fleet
from shared.service import use_fast_event_loop, use_fewer_collections

OUT = Path("var/bench")


async def _baseline(device_url: str, requests: int, concurrency: int) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with gate:
                started = time.perf_counter()
                async with session.get(f"{device_url}/healthz") as response:
                    await response.read()
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(requests)])
        elapsed = time.perf_counter() - started
    return _rates("requests", requests, elapsed, latencies)


async def _storm(device_url: str, code: str, devices: int, concurrency: int) -> dict[str, Any]:
    plan = plan_fleet(code, devices, clone_rate=0.05, lost_response_rate=0.0, seed=1)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    assigned: list[str] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def one(body: dict[str, Any]) -> None:
            nonlocal errors
            async with gate:
                started = time.perf_counter()
                async with session.post(f"{device_url}/v1/registrations", json=body) as response:
                    answer = await response.json()
                while answer.get("status") == "pending":
                    await asyncio.sleep(0.2)
                    async with session.get(
                        f"{device_url}/v1/registrations/{answer['request_id']}"
                    ) as response:
                        answer = await response.json()
                latencies.append(time.perf_counter() - started)
                if answer.get("status") == "ready":
                    assigned.append(answer["hardware_id"])
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*[one(d.registration_body(code)) for d in plan.devices])
        elapsed = time.perf_counter() - started
    result = _rates("registrations", devices, elapsed, latencies)
    result.update(errors=errors, hardware_ids_unique=len(set(assigned)) == len(assigned) == devices)
    return result


def _rates(unit: str, count: int, elapsed: float, latencies: list[float]) -> dict[str, Any]:
    return {
        unit: count,
        "seconds": round(elapsed, 3),
        "per_second": round(count / elapsed, 1),
        "latency_ms": {f"p{p}": round(percentile(latencies, p) * 1000, 1) for p in (50, 95, 99)},
    }


async def _fresh_code() -> str:
    async with operator_client() as client:
        product = await client.post(
            "/v1/products",
            {"name": f"bench-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        )
        product = await client.post(f"/v1/products/{product['id']}/lock")
        await client.post("/v1/auto-registrations", {"product_id": product["id"]})
        return str(product["bulk_identification_code"])


async def main(args: argparse.Namespace) -> dict[str, Any]:
    device_url = require(load_endpoints(), "FLEETREG_DEVICE_URL")
    baseline = await _baseline(device_url, args.devices, args.concurrency)
    storm = await _storm(device_url, await _fresh_code(), args.devices, args.concurrency)
    boot = await run_fleet(
        plan_fleet(await _fresh_code(), args.boot_devices, 0.05, seed=2), device_url, args.concurrency
    )
    two_call = await run_fleet(
        plan_fleet(await _fresh_code(), args.boot_devices, 0.05, seed=3),
        device_url,
        args.concurrency,
        options=RunOptions(two_call=True),
    )
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "concurrency": args.concurrency,
        "baseline_healthz": baseline,
        "registration_storm": storm,
        "full_boot": boot.to_dict(),
        "two_call_boot": two_call.to_dict(),
        "ratios": {
            "registrations_per_healthz": round(storm["per_second"] / baseline["per_second"], 3),
            "booted_devices_per_healthz": round(boot.throughput_per_s / baseline["per_second"], 3),
            "two_call_booted_devices_per_healthz": round(
                two_call.throughput_per_s / baseline["per_second"], 3
            ),
        },
    }


def report(result: dict[str, Any]) -> None:
    base, storm, boot = result["baseline_healthz"], result["registration_storm"], result["full_boot"]
    two_call = result["two_call_boot"]
    rows = [
        (
            "baseline: GET /healthz",
            base["requests"],
            base["per_second"],
            "1.000",
            base["latency_ms"]["p50"],
            base["latency_ms"]["p99"],
            "-",
        ),
        (
            "registration storm",
            storm["registrations"],
            storm["per_second"],
            f"{result['ratios']['registrations_per_healthz']:.3f}",
            storm["latency_ms"]["p50"],
            storm["latency_ms"]["p99"],
            storm["errors"],
        ),
        (
            "full boot (register, files, ready)",
            boot["devices"],
            boot["throughput_per_s"],
            f"{result['ratios']['booted_devices_per_healthz']:.3f}",
            boot["latency_ms"]["p50"],
            boot["latency_ms"]["p99"],
            boot["errors"],
        ),
        (
            "two-call boot (register?include=files, ready)",
            two_call["devices"],
            two_call["throughput_per_s"],
            f"{result['ratios']['two_call_booted_devices_per_healthz']:.3f}",
            two_call["latency_ms"]["p50"],
            two_call["latency_ms"]["p99"],
            two_call["errors"],
        ),
    ]
    print_table(rows, ["benchmark", "count", "per second", "ratio to baseline", "p50 ms", "p99 ms", "errors"])


def report_bulk(result: dict[str, Any]) -> None:
    rows = [
        ("baseline: csv.reader over the file, locally", result["baseline_local_csv_parse_s"], "-", "-"),
        ("baseline: COPY into a table like devices", result["baseline_copy_s"], "-", "1.00"),
        (
            "upload, stream, validate, store",
            result["validate_s"],
            result["upload_rows_per_s"],
            f"{result['validate_ratio_to_baseline']:.2f}",
        ),
        (
            "publish (rows -> offline devices)",
            result["publish_s"],
            result["publish_rows_per_s"],
            f"{result['publish_ratio_to_baseline']:.2f}",
        ),
    ]
    print_table(rows, ["bulk ingestion", "seconds", "rows per second", "COPY time / our time"])
    print(
        f"{result['rows']} rows, {result['file_mb']} MB; ingestion service peak RSS "
        f"{result['peak_rss_mb']} MB (before: {result['ingestion_rss_before_mb']} MB)"
    )


def _write(name: str, result: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {OUT / name}\n")


if __name__ == "__main__":
    from tests.bench import bulk

    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--devices", type=int, default=5000, help="devices in the registration storm")
    parser.add_argument("--boot-devices", type=int, default=2000, help="devices in the full boot")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--bulk-rows", type=int, default=1_000_000, help="rows of the bulk CSV (0: skip)")
    arguments = parser.parse_args()
    use_fast_event_loop()
    use_fewer_collections()  # as fleetreg simulate does: the load generator's GC is part of every figure
    outcome = asyncio.run(main(arguments))
    report(outcome)
    _write("auto_registration.json", outcome)
    if arguments.bulk_rows:
        bulk_outcome = asyncio.run(bulk.run(arguments.bulk_rows))
        report_bulk(bulk_outcome)
        _write("bulk_ingestion.json", bulk_outcome)
