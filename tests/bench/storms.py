"""Boot storms for ``make bench`` (issue 12): closed loop (a fixed number of devices
booting at once, as fast as the system answers) and open loop (devices started at a fixed
rate whatever the system does), each on an account of its own so the registry can be
checked against what the devices were told.

Devices are ``cli.simulate``'s: they retry faults, verify every file (inline with the
two-call boot, downloaded with the five-call one) and confirm. What one device costs the
system is measured, not assumed: the intake's HTTP requests, the Kafka records written
and the Postgres rows changed during the storm, each divided by the devices.
"""

from __future__ import annotations

import asyncio
import resource
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from cli.simulate import (
    DeviceApi,
    DeviceResult,
    FleetPlan,
    RunOptions,
    boot_device,
    percentile,
    plan_fleet,
    summarize,
)
from shared.db.pool import Pool
from tests.bench.cpu import per_device_ms, stack_cpu_s
from tests.chaos import checks
from tests.support.api import new_operator

# A product of three services; with the bulk service every product carries (rmt3), four
# files: the five-call boot makes seven calls (register, manifest, four files, ready).
Attestation = Literal["code", "derived_key"]

SERVICES = [{"type": "ssh", "port": 22}, {"type": "web", "port": 80}, {"type": "vnc", "port": 5900}]


@dataclass(frozen=True)
class Stack:
    device_url: str
    operator_url: str
    intake_ops_url: str  # the intake's operations listener: its /metrics
    bootstrap: str
    topic_prefix: str
    pool: Pool


def cpu_seconds() -> float:
    """This process's CPU time (user + system), seconds: the load generator's own cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def counter_total(
    session: aiohttp.ClientSession, url: str, family: str, labels_match: Callable[[dict[str, str]], bool]
) -> float:
    """The sum of a Prometheus counter ``family`` on one process's ``/metrics``, over the
    samples whose labels ``labels_match``."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    return sum(
        sample.value
        for found in text_string_to_metric_families(text)
        if found.name == family
        for sample in found.samples
        if sample.name.endswith("_total") and labels_match(sample.labels)
    )


async def _http_requests(session: aiohttp.ClientSession, ops_url: str) -> float:
    """The intake's answered HTTP requests so far (its /metrics is on the operations
    listener, ``ops_url``, and counts in none of them)."""
    return await counter_total(
        session, ops_url, "fleetreg_http_requests", lambda labels: labels.get("route") is not None
    )


async def _kafka_records(stack: Stack) -> int:
    """Records written so far to fleetreg's topics (the sum of their partitions' end offsets)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(stack.topic_prefix + ".")]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    partitions = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return int(sum(ends.values()))


async def _postgres_rows(pool: Pool) -> int:
    """Rows inserted, updated and deleted so far in the current database."""
    value = await pool.fetchval(
        "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(value or 0)


async def _certificates_issued(stack: Stack, session: aiohttp.ClientSession) -> float:
    """Device certificates the intake has signed so far (every way a device asks)."""
    return await counter_total(
        session, stack.intake_ops_url, "fleetreg_device_certificates_issued", lambda labels: True
    )


async def _without_certificate(pool: Pool, device_ids: Iterable[str]) -> int:
    """How many of the devices the registry holds no certificate of."""
    ids = [uuid.UUID(d) for d in set(device_ids)]
    held = await pool.fetchval(
        "SELECT count(DISTINCT device_id) FROM device_certificates WHERE device_id = ANY($1::uuid[])", ids
    )
    return len(ids) - int(held or 0)


async def checkpoint(pool: Pool) -> bool:
    """A Postgres CHECKPOINT before a storm, so that every storm starts from the same
    write-ahead-log state: the first change of each page after a checkpoint writes the whole
    page to the WAL, and a timed checkpoint (every 5 minutes) starting during one storm and
    not another slows the storms just after it (in issue 25's first runs, the storms that
    followed one were the slowest of their mode whatever the mode). False when the role
    may not (not a superuser nor pg_checkpoint): the storm runs all the same."""
    try:
        await pool.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        return False
    return True


async def _counters(stack: Stack, session: aiohttp.ClientSession) -> tuple[float, int, int]:
    return (
        await _http_requests(session, stack.intake_ops_url),
        await _kafka_records(stack),
        await _postgres_rows(stack.pool),
    )


async def storm(
    stack: Stack,
    devices: int,
    *,
    two_call: bool,
    concurrency: int = 200,
    rate_per_s: float | None = None,
    seed: int | None = None,
    attestation: Attestation = "code",
    csr: str = "",
    hook_url: str | None = None,
) -> dict[str, Any]:
    """Boot ``devices`` devices (5 % clones, 1 % lost responses) of a fresh account.

    Closed loop when ``rate_per_s`` is None (``concurrency`` devices at once); open loop
    otherwise: device ``i`` starts at ``i / rate_per_s`` s, and its time to provisioned
    counts from that scheduled start (a client that falls behind is not excused).
    ``attestation``: the auto registration's mode; with ``derived_key`` every device proves
    the key derived from the registration's primary group key and its hardware ID (a fresh
    proof on every send). ``csr``: a PKCS#10 request (PEM) every registration carries; each
    ready answer with the device secret must then carry a certificate (issue 25).
    Returns devices/s, time-to-provisioned percentiles (ms), errors, the registry checks
    (``lost``, ``duplicated``), the measured cost per device and the load generator's CPU;
    with a CSR also ``certificates`` (signed by the intake during the storm, from its
    ``fleetreg_device_certificates_issued_total``), ``certificates_per_s`` and
    ``devices_without_certificate`` (provisioned devices the registry holds no
    certificate of). ``hook_url``: the auto registration's registration hook (issue 27);
    the result names the registration (``registration_id``) for its hook's call rows.
    """
    options = RunOptions(request_timeout_s=60.0, deadline_s=600.0, two_call=two_call, csr=csr)
    limit = concurrency if rate_per_s is None else 0  # 0: no limit (open loop)
    async with aiohttp.ClientSession() as control:
        operator = await new_operator(control, stack.pool, stack.operator_url)
        product = await operator.call(
            "POST", "/v1/products", {"name": "bench", "services": SERVICES}, expect=201
        )
        await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
        registration = await operator.call(
            "POST",
            "/v1/auto-registrations",
            {"product_id": product["id"], "attestation": attestation}
            | ({"hook_url": hook_url} if hook_url is not None else {}),
            expect=201,
        )
        plan = plan_fleet(registration["bulk_identification_code"], devices, 0.05, 0.01, seed=seed)
        if attestation == "derived_key":
            plan = replace(plan, group_key=registration["primary_key"])
        checkpointed = await checkpoint(stack.pool)
        before = await _counters(stack, control)
        issued_before = await _certificates_issued(stack, control)
        cpu_before = cpu_seconds()
        stack_before = stack_cpu_s()
        timeout = aiohttp.ClientTimeout(total=options.request_timeout_s, connect=options.connect_timeout_s)
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            api = DeviceApi(session, stack.device_url, options)
            started = time.monotonic()
            results = await (
                _closed(api, plan, concurrency)
                if rate_per_s is None
                else _open(api, plan, rate_per_s, started)
            )
            duration = time.monotonic() - started
        cpu = cpu_seconds() - cpu_before
        stack_cpu = per_device_ms(
            stack_before | {"load_generator": cpu_before},
            stack_cpu_s() | {"load_generator": cpu_before + cpu},
            devices,
        )
        issued = await _certificates_issued(stack, control) - issued_before
        await asyncio.sleep(2.0)  # Postgres backends report their row counts about once a second
        after = await _counters(stack, control)
        acknowledged = {r.index: r.device_id for r in results if r.provisioned and r.device_id}
        registry = await checks.storm_registry(stack.pool, operator.account_id, devices, acknowledged)
        uncertified = await _without_certificate(stack.pool, acknowledged.values()) if csr else None
    summary = summarize(plan, results, duration)
    latencies = [r.latency_s * 1000 for r in results if r.provisioned and r.latency_s is not None]
    http, records, rows = (a - b for a, b in zip(after, before, strict=True))
    certified = (
        {
            "certificates": int(issued),
            "certificates_per_s": round(issued / duration, 1) if duration else 0.0,
            "devices_without_certificate": uncertified,
        }
        if csr
        else {}
    )
    return {
        "devices": devices,
        "registration_id": registration["id"],
        "attestation": attestation,
        "csr": bool(csr),
        **certified,
        "checkpoint_before": checkpointed,
        "boot": "two-call" if two_call else "five-call",
        "loop": "closed" if rate_per_s is None else "open",
        "concurrency": concurrency if rate_per_s is None else None,
        "offered_per_s": rate_per_s,
        "seconds": round(duration, 2),
        "devices_per_s": round(summary.provisioned / duration, 1) if duration else 0.0,
        **{f"p{p}_ms": round(percentile(latencies, p), 1) if latencies else None for p in (50, 95, 99)},
        "errors": summary.errors,
        "error_kinds": summary.error_kinds,
        "retries": summary.retries,
        "lost": registry["lost"],
        "duplicated": registry["duplicated"],
        "hardware_ids_unique": registry["hardware_ids_unique"] and summary.hardware_ids_unique,
        "per_device": {
            "http_requests": round(http / devices, 2),
            "kafka_records": round(records / devices, 2),
            "postgres_rows": round(rows / devices, 2),
        },
        # CPU ms one device cost each process of the local stack (tests/bench/cpu.py): drifts
        # far less with the machine's other load than devices/s does.
        "cpu_ms_per_device": stack_cpu,
        "load_generator_cpu_s": round(cpu, 1),
        "load_generator_cpu_share_of_one_core": round(cpu / duration, 2) if duration else None,
    }


async def _closed(api: DeviceApi, plan: FleetPlan, concurrency: int) -> list[DeviceResult]:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> DeviceResult:
        async with gate:
            return await boot_device(api, plan, plan.devices[index])

    return list(await asyncio.gather(*(one(i) for i in range(len(plan.devices)))))


async def _open(api: DeviceApi, plan: FleetPlan, rate_per_s: float, started: float) -> list[DeviceResult]:
    async def one(index: int) -> DeviceResult:
        scheduled = started + index / rate_per_s
        await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        result = await boot_device(api, plan, plan.devices[index])
        if result.provisioned:
            result.latency_s = time.monotonic() - scheduled
        return result

    tasks: list[asyncio.Task[DeviceResult]] = []
    for index in range(len(plan.devices)):
        # Create each device's task shortly before its start: 100,000 sleeping tasks at
        # once would cost the load generator more than the devices do.
        await asyncio.sleep(max(0.0, started + index / rate_per_s - 1.0 - time.monotonic()))
        tasks.append(asyncio.create_task(one(index)))
    return list(await asyncio.gather(*tasks))
