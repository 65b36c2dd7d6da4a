"""Faults and scale-out: killing pipeline services mid-storm loses and duplicates nothing,
and two instances of each pipeline service give the same result as one."""

from __future__ import annotations

import asyncio
import collections
import uuid
from pathlib import Path

import aiohttp

from shared.db.pool import Pool
from tests.support.api import DeviceAnswer, Operator, register
from tests.support.system import ROOT, System


def _storm_plan(originals: int, clones_per_original: int) -> list[tuple[str, str]]:
    """(hardware ID, cpu ID) of every device: each original plus its clones."""
    plan = []
    for _ in range(originals):
        h = uuid.uuid4().hex[:12]
        plan.extend((h, f"cpu-{uuid.uuid4().hex[:8]}") for _ in range(1 + clones_per_original))
    return plan


def _expected_ids(plan: list[tuple[str, str]]) -> list[str]:
    counts = collections.Counter(h for h, _ in plan)
    return sorted(i for h, n in counts.items() for i in [h, *(f"{h}-{k}" for k in range(1, n))])


async def _storm(
    session: aiohttp.ClientSession, system: System, code: str, plan: list[tuple[str, str]]
) -> list[DeviceAnswer]:
    return await asyncio.gather(
        *[register(session, system.device_url, code, h, cpu_id=cpu, mac="m") for h, cpu in plan]
    )


async def test_killing_dedup_and_provisioning_mid_storm_loses_and_duplicates_nothing(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    plan = _storm_plan(originals=150, clones_per_original=2)
    storm = asyncio.create_task(_storm(session, system, code, plan))
    await asyncio.sleep(0.3)
    decided_before_kill = await pool.fetchval(
        "SELECT count(*) FROM registration_decisions WHERE account_id = $1", operator.account_id
    )
    system.services["dedup"].kill()
    await asyncio.sleep(1.0)
    await system.restart("dedup")
    system.services["provisioning"].kill()
    await asyncio.sleep(1.0)
    await system.restart("provisioning")
    answers = await storm

    assert all(a.status == 200 for a in answers), [a.body for a in answers if a.status != 200][:3]
    assert sorted(a.body["hardware_id"] for a in answers) == _expected_ids(plan)
    stored = await operator.devices()
    assert sorted(d["hardware_id"] for d in stored) == _expected_ids(plan)
    # Exactly one decision per request, however often the batches were redelivered.
    decisions = await pool.fetchval(
        "SELECT count(*) FROM registration_decisions WHERE account_id = $1", operator.account_id
    )
    assert decisions == len(plan)
    assert decided_before_kill < len(plan), "the kill came after the storm: it proved nothing"


async def test_two_instances_of_each_pipeline_service_give_the_same_result_as_one(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    extra = [await system.add_instance("dedup"), await system.add_instance("provisioning")]
    try:
        code = (await operator.product())["bulk_identification_code"]
        plan = _storm_plan(originals=1, clones_per_original=199) + _storm_plan(
            originals=100, clones_per_original=1
        )
        answers = await _storm(session, system, code, plan)
        assert all(a.status == 200 for a in answers)
        assert sorted(a.body["hardware_id"] for a in answers) == _expected_ids(plan)
        assert sorted(d["hardware_id"] for d in await operator.devices()) == _expected_ids(plan)
    finally:
        # SIGTERM: each extra instance finishes its batch, commits and exits cleanly.
        codes = [process.stop() for process in extra]
        system.extra.clear()
    assert codes == [0, 0]


def _pg_ctl() -> Path:
    return sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]


async def test_restarting_the_database_mid_storm_loses_and_duplicates_nothing(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool, infra: dict[str, str]
) -> None:
    """Postgres goes away for a moment: the pipeline hands its batches back and retries,
    the device API answers 503 with Retry-After meanwhile, and every device ends registered once."""
    import os
    import shutil

    code = (await operator.product())["bulk_identification_code"]
    plan = _storm_plan(originals=300, clones_per_original=1)
    storm = asyncio.create_task(_storm(session, system, code, plan))
    await asyncio.sleep(0.1)
    pg_ctl = _pg_ctl()
    decided_before_restart = await pool.fetchval(
        "SELECT count(*) FROM registration_decisions WHERE account_id = $1", operator.account_id
    )
    data = ROOT / "var" / "postgres" / "data"
    log = ROOT / "var" / "log" / "postgres.log"
    command = [str(pg_ctl), "-D", str(data), "-l", str(log), "restart", "-m", "fast", "-w", "-t", "60"]
    if os.geteuid() == 0 and shutil.which("runuser"):
        command = ["runuser", "-u", "postgres", "--", *command]
    restart = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    assert await asyncio.wait_for(restart.wait(), timeout=90) == 0
    await pool.expire_connections()  # this test's own pool: drop the connections the restart cut
    answers = await storm

    assert all(a.status == 200 for a in answers), [a.body for a in answers if a.status != 200][:3]
    assert sorted(a.body["hardware_id"] for a in answers) == _expected_ids(plan)
    assert sorted(d["hardware_id"] for d in await operator.devices()) == _expected_ids(plan)
    decisions = await pool.fetchval(
        "SELECT count(*) FROM registration_decisions WHERE account_id = $1", operator.account_id
    )
    assert decisions == len(plan)
    assert decided_before_restart < len(plan), "the restart came after the storm: it proved nothing"


async def test_restarting_the_broker_mid_storm_loses_and_duplicates_nothing(
    system: System, session: aiohttp.ClientSession, operator: Operator, pool: Pool
) -> None:
    """Kafka stops and starts again: producers and consumers reconnect, devices retry a 503,
    and every device ends registered once."""
    code = (await operator.product())["bulk_identification_code"]
    plan = _storm_plan(originals=300, clones_per_original=1)
    storm = asyncio.create_task(_storm(session, system, code, plan))
    await asyncio.sleep(0.1)
    decided_before_restart = await pool.fetchval(
        "SELECT count(*) FROM registration_decisions WHERE account_id = $1", operator.account_id
    )
    stack = str(ROOT / "deploy" / "local" / "stack.sh")
    for step in ("stop-kafka", "infra-up"):
        process = await asyncio.create_subprocess_exec(
            stack, step, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        assert await asyncio.wait_for(process.wait(), timeout=120) == 0, step
    answers = await storm

    assert all(a.status == 200 for a in answers), [a.body for a in answers if a.status != 200][:3]
    assert sorted(a.body["hardware_id"] for a in answers) == _expected_ids(plan)
    assert sorted(d["hardware_id"] for d in await operator.devices()) == _expected_ids(plan)
    assert decided_before_restart < len(plan), "the restart came after the storm: it proved nothing"
