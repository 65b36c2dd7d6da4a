"""One fault during one wave of load, and its checks: used by ``make chaos`` (on its own
stack) and by tests/e2e/test_chaos_short.py (on the test system's processes)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from cli.simulate import plan_fleet
from shared.db import accounts
from shared.db.pool import Pool
from shared.kafka import Topics
from tests.chaos import checks, poison
from tests.chaos.load import Timeline, boot_storm
from tests.support.api import Operator
from tests.support.bulk import bulk_call, bulk_product, csv_rows, csv_text, upload

# Which consumer group reads each consumed topic, by service (shared/kafka.py Topics).
CONSUMERS = {
    "registration.requested": "dedup",
    "device.signals": "dedup",
    "registration.decided": "provisioning",
    "bulk.publish": "ingestion",
    "registration.outcomes": "intake",  # every intake reads all of it, without a group
}


@dataclass
class Target:
    """The running system a scenario drives and breaks."""

    device_url: str
    operator_url: str
    bulk_url: str
    bootstrap: str
    topics: Topics
    pool: Pool
    group: Callable[[str], str]  # service -> its consumer group
    kill: Callable[[str], Awaitable[None]]
    start: Callable[[str], Awaitable[None]]
    restart_broker: Callable[[], Awaitable[None]] | None = None
    restart_postgres: Callable[[], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Fault:
    name: str  # kill-intake, broker-restart, postgres-restart, poison-registration.requested, poison-schema
    during: str  # storm | bulk

    @property
    def kind(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def subject(self) -> str:
        return self.name.split("-", 1)[1]


async def inject(target: Target, fault: Fault, down_s: float = 1.0, key: str | None = None) -> dict[str, Any]:
    """Inject ``fault`` and repair it (start the killed service again); return what the
    checks need to know about it. A poison record is sent with ``key`` (so it shares a
    partition with the load's records), a random one by default."""
    if fault.kind == "kill":
        await target.kill(fault.subject)
        await asyncio.sleep(down_s)  # the devices meet the dead service for a moment
        await target.start(fault.subject)
        return {}
    if fault.name == "broker-restart" and target.restart_broker is not None:
        await target.restart_broker()
        return {}
    if fault.name == "postgres-restart" and target.restart_postgres is not None:
        await target.restart_postgres()
        await target.pool.expire_connections()
        return {}
    if fault.name == "poison-schema":
        return {"schema_poison": await poison.send(target.bootstrap, target.topics, poison.catalogue())}
    if fault.kind == "poison":
        topic = f"{target.topics.prefix}.{fault.subject}"
        return {"poison": await checks.send_poison(target.bootstrap, topic, key)}
    raise ValueError(f"cannot inject {fault.name} here")


async def poison_checks(target: Target, fault: Fault, poison: checks.Poison) -> dict[str, Any]:
    """The poison record is in the dead-letter topic with its reason, and its consumer
    group committed past the record after it (the partition is not stuck)."""
    service = CONSUMERS[fault.subject]
    out: dict[str, Any] = {"poison_partition": poison.partition, "poison_offset": poison.offset}
    if service == "intake":
        # The intake's outcome listener has no group and no dead-letter topic: it skips
        # undecodable records (logged); the storm finishing proves it was not stuck.
        out.update(
            dead_lettered=None,
            dead_letter_reason="n/a: the intake skips and logs it",
            partition_progress=None,
        )
        return out
    found = await checks.find_dead_letter(target.bootstrap, target.topics.dead_letter, poison)
    committed = await checks.committed_past(target.bootstrap, target.group(service), poison)
    out.update(
        dead_lettered=found is not None,
        dead_letter_reason=found["reason"] if found else None,
        committed_offset=committed,
        partition_progress=committed is not None and committed >= poison.offset + 2,
    )
    return out


async def schema_poison_checks(target: Target, sent: list[poison.Sent]) -> dict[str, Any]:
    """Every schema-valid poison record (tests/chaos/poison.py) is in the dead-letter topic
    once per consumer group reading its topic, with its reason and position, and every
    group committed past it; the storm that followed is checked by the caller."""
    found, problems = await poison.dead_letters(target.bootstrap, target.topics, sent)
    groups = {
        service: target.group(service) for service in ("dedup", "provisioning", "ingestion", "notifier")
    }
    behind = await poison.committed_past(target.bootstrap, groups, sent)
    return {
        "poison_records": len(sent),
        "dead_letters": len(found),
        "dead_lettered": not problems,
        "dead_letter_reason": "; ".join(problems[:3]) or "every record, with the rule it breaks",
        "partition_progress": not behind,
        "behind": behind[:3],
    }


async def new_operator(session: aiohttp.ClientSession, target: Target, tag: str) -> Operator:
    account, key = await accounts.create_account(target.pool, f"chaos-{tag}-{uuid.uuid4().hex[:8]}")
    return Operator(session, target.operator_url, key, account.id)


async def storm_wave(
    target: Target,
    session: aiohttp.ClientSession,
    devices: int,
    fault: Fault | None,
    *,
    seed: int,
    concurrency: int = 100,
    fault_after_s: float = 1.0,
    deadline_s: float = 300.0,
) -> dict[str, Any]:
    """A boot storm of ``devices`` devices of a fresh account (5 % clones, 1 % lost
    responses), with ``fault`` injected ``fault_after_s`` into it; then the checks."""
    operator = await new_operator(session, target, "storm")
    code = (await operator.product())["bulk_identification_code"]
    plan = plan_fleet(code, devices, clone_rate=0.05, lost_response_rate=0.01, seed=seed)
    timeline = Timeline()
    injected: dict[str, Any] = {}
    fault_at = time.monotonic()
    if fault is not None and fault.kind == "poison":
        # First the poison, then the storm: the storm's records follow it on its partition.
        injected = await inject(target, fault, key=plan.devices[0].hardware_id if plan.devices else None)
    storm = asyncio.create_task(
        boot_storm(plan, target.device_url, concurrency, timeline, deadline_s=deadline_s)
    )
    if fault is not None and fault.kind != "poison":
        await asyncio.sleep(fault_after_s)
        fault_at = time.monotonic()
        injected = await inject(target, fault)
    result = await storm
    row: dict[str, Any] = {
        "fault": fault.name if fault else "none (baseline)",
        "during": "storm",
        "devices": devices,
        "storm_s": round(result.duration_s, 2),
        "retries": result.retries,
        "failed_devices": result.failed,
    }
    row.update(timeline.recovery(fault_at))
    registry = await checks.storm_registry(target.pool, operator.account_id, devices, result.acknowledged)
    # A device never told it is provisioned is lost too: it gave up before its deadline.
    registry["lost"] += devices - len(result.acknowledged)
    row.update(registry)
    if fault is not None and "poison" in injected:
        row.update(await poison_checks(target, fault, injected["poison"]))
    if "schema_poison" in injected:
        row.update(await schema_poison_checks(target, injected["schema_poison"]))
    return row


async def bulk_wave(
    target: Target,
    session: aiohttp.ClientSession,
    rows: int,
    fault: Fault,
    *,
    fault_after_s: float = 0.1,
    within_s: float = 600.0,
) -> dict[str, Any]:
    """Upload ``rows`` rows for a fresh product, publish them with ``fault`` injected
    ``fault_after_s`` into the publish; the operator polls the publish's progress (its
    timeline: failed polls, and polls that show progress). Then the checks."""
    operator = await new_operator(session, target, "bulk")
    product_id = await bulk_product(operator)
    listed = csv_rows(rows)
    status, uploaded = await upload(session, target.bulk_url, operator, product_id, csv_text(listed).encode())
    if status != 201 or uploaded.get("rows") != rows:
        raise RuntimeError(f"bulk upload refused: {status} {str(uploaded)[:200]}")
    timeline = Timeline()
    publish_path = f"/v1/bulk-registrations/{uploaded['id']}"
    injected: dict[str, Any] = {}
    fault_at = time.monotonic()
    if fault.kind == "poison":
        # Before the publish, on its partition (the chunks of one publish share its
        # registration ID as key): the publish's records follow the poison.
        injected = await inject(target, fault, key=str(uploaded["id"]))
    status, body = await bulk_call(session, target.bulk_url, operator, "POST", publish_path + "/publish")
    if status != 202:
        raise RuntimeError(f"publish refused: {status} {body}")
    started = time.monotonic()
    progress: dict[str, Any] = {"published": 0, "status": "publishing"}

    async def poll() -> None:
        while time.monotonic() - started < within_s:
            try:
                code, state = await bulk_call(session, target.bulk_url, operator, "GET", publish_path)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                code, state = 0, {}
            if code != 200:
                timeline.fail()
            else:
                if state["published"] > progress["published"] or state["status"] == "preregistered":
                    timeline.succeed()
                progress.update(published=state["published"], status=state["status"])
                if state["status"] == "preregistered":
                    return
            await asyncio.sleep(0.2)

    poller = asyncio.create_task(poll())
    published_at_fault = 0
    if fault.kind != "poison":
        await asyncio.sleep(fault_after_s)
        published_at_fault = progress["published"]
        fault_at = time.monotonic()
        injected = await inject(target, fault)
    await poller
    row: dict[str, Any] = {
        "fault": fault.name,
        "during": "bulk",
        "rows": rows,
        "published_at_fault": published_at_fault,
        "publish_s": round(time.monotonic() - started, 2),
        "bulk_status": progress["status"],
    }
    row.update(timeline.recovery(fault_at))
    row.update(await checks.bulk_registry(target.pool, product_id, [h for _, h, _ in listed]))
    if progress["status"] != "preregistered":
        row["lost"] = max(row["lost"], rows - int(progress["published"]))
    if fault is not None and "poison" in injected:
        row.update(await poison_checks(target, fault, injected["poison"]))
    return row
