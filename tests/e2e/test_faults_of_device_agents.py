"""Device agents (``agent/fleetreg-agent``) booting through faults (issue 26, item 3): the
intake killed and started again, Postgres restarted, and a lowered new-device limit
throttling them from an address already over its refusal limit. Every agent must end
provisioned once the fault is over (``boot`` exits 0), and the registry is checked against
the boards' state folders: one provisioned device each, under the hardware ID it claimed,
no other device.

Like tests/e2e/test_faults_and_scale_out.py, this restarts the test infrastructure's
Postgres (var/postgres) and kills the test system's intake: the suite's tests run one at a
time, so no other test sees it. The boards take BusyBox ash and dash in turn.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.support.agent import SHELLS, Agent, install_shells
from tests.support.agent_fleet import Run, fleet, hardware_id, registry_against_boards, run_boot
from tests.support.api import Operator, register
from tests.support.sources import fresh_address, from_address
from tests.support.system import ROOT, System

pytestmark = pytest.mark.e2e

BOARDS = 16
# Retries while a part is down: at most every 2 s (the helper's 0.5 s would have two dozen
# boards fork curl and awk several times a second, starving the restarting service of CPU).
PATIENT = {"BACKOFF_BASE_SECONDS": "0.25", "BACKOFF_MAX_SECONDS": "2"}
# The events a board logs when a call of its boot met the fault: no answer, a 5xx or 429
# (retried), or a registration answered pending (the decision held up meanwhile).
FAULTS = (
    "register_fault",
    "register_throttled",
    "register_refused",
    "register_pending",
    "confirm_ready",
    "manifest",
    "download",
)


@pytest.fixture(scope="module")
def shells() -> tuple[str, ...]:
    install_shells()
    return SHELLS


async def _until(condition: Callable[[], bool], within_s: float = 60) -> None:
    async with asyncio.timeout(within_s):
        while not condition():
            await asyncio.sleep(0.02)


def _registering(boards: list[Agent]) -> int:
    """Boards whose first call is under way or done (the key persisted first)."""
    return sum(1 for a in boards if a.state("idempotency_key") or a.state("ready"))


def _ready(boards: list[Agent]) -> int:
    return sum(1 for a in boards if a.state("ready"))


def _saw_fault(run: Run) -> bool:
    return any(event in FAULTS for event in run.events)


async def _wave_through(boards: list[Agent], fault: Callable[[], Awaitable[None]]) -> tuple[list[Run], int]:
    """Boot ``boards`` at once; once a few have sent their registration, ``fault``. Returns
    the boots and how many boards had confirmed ready when the fault began."""
    wave = asyncio.gather(*(run_boot(agent) for agent in boards))
    await _until(lambda: _registering(boards) >= 3)
    ready_before = _ready(boards)
    await fault()
    return await wave, ready_before


async def _check(
    runs: list[Run], ready_before: int, boards: list[Agent], pool: Pool, operator: Operator
) -> None:
    failed = [run.text() for run in runs if run.code != 0]
    assert not failed, failed[:2]
    assert ready_before < len(boards), "the fault came after the boots: it proved nothing"
    assert any(_saw_fault(run) for run in runs), "no board met the fault"
    check = await registry_against_boards(pool, operator.account_id, boards)
    assert check.ok, check.problems[:5]
    assert check.devices == check.provisioned == len(boards), check


async def test_agents_booting_while_the_intake_is_killed_and_started_again_all_provision(
    system: System, operator: Operator, pool: Pool, tmp_path: Path, shells: tuple[str, ...]
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    boards = fleet(tmp_path, BOARDS, system.device_url, code, shells=shells, **PATIENT)
    intake = system.services["intake"]

    async def kill_intake() -> None:
        intake.kill()  # SIGKILL: the calls in flight get no answer
        await asyncio.sleep(1.0)
        intake.start()
        await intake.wait_ready()

    runs, ready_before = await _wave_through(boards, kill_intake)
    await _check(runs, ready_before, boards, pool, operator)


def _pg_ctl() -> Path:
    return sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]


async def test_agents_booting_while_postgres_restarts_all_provision(
    system: System, operator: Operator, pool: Pool, tmp_path: Path, shells: tuple[str, ...]
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    boards = fleet(tmp_path, BOARDS, system.device_url, code, shells=shells, **PATIENT)

    async def restart_postgres() -> None:
        data, log = ROOT / "var" / "postgres" / "data", ROOT / "var" / "log" / "postgres.log"
        command = [str(_pg_ctl()), "-D", str(data), "-l", str(log), "restart", "-m", "fast", "-w", "-t", "60"]
        if os.geteuid() == 0 and shutil.which("runuser"):
            command = ["runuser", "-u", "postgres", "--", *command]
        restart = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        assert await asyncio.wait_for(restart.wait(), timeout=90) == 0
        await pool.expire_connections()  # this test's own pool: drop the connections the restart cut

    runs, ready_before = await _wave_through(boards, restart_postgres)
    await _check(runs, ready_before, boards, pool, operator)


# An intake of its own: 5 refusals a minute per source (the default is 30), and a product's
# code may create 6 devices in 3 seconds (the default: no limit).
THROTTLED = {
    "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "5/minute",
    "FLEETREG_LIMIT_NEW_DEVICES_PER_CODE": "6/3second",
}
FIRST_CLAIMS = 6  # fill the new-device window just before the boards boot


async def test_agents_throttled_by_a_lowered_new_device_limit_from_a_blocked_address_all_provision(
    system: System,
    operator: Operator,
    pool: Pool,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    shells: tuple[str, ...],
) -> None:
    """A factory line behind one address that a stranger's guesses put over its refusal
    limit, with a code allowed 6 new devices in 3 seconds: the boards prove the current code
    (so the blocked address does not hold them), wait out the 429s of the new-device
    limit (Retry-After) and all end provisioned."""
    code = (await operator.product())["bulk_identification_code"]
    source = fresh_address()
    async with system.instance("intake", THROTTLED) as intake:
        async with from_address(source) as stranger:
            blocked = False
            for _ in range(20):
                body = {"bulk_identification_code": str(uuid.uuid4()).upper(), "hardware_id": "guess"}
                async with stranger.post(f"{intake.url}/v1/registrations", json=body) as response:
                    blocked = response.status == 429
                if blocked:
                    break
            assert blocked, "the stranger's guesses were never throttled"
        boards = fleet(tmp_path, BOARDS, intake.url, code, shells=shells, sources=[source])
        # A code's new devices are counted when they are answered, so a burst of first
        # calls all pass an empty window: it is filled first, by claims of six of the
        # boards' own hardware IDs and fingerprints (without their Idempotency-Keys: a
        # board that lost power before ready, which its own boot then claims again as the
        # same device, never a ghost).
        for agent in boards[:FIRST_CLAIMS]:
            answer = await register(
                session,
                intake.url,
                code,
                hardware_id(agent),
                cpu_id=agent.config["CPU_ID"],
                mac=agent.config["MAC"],
            )
            assert answer.status == 200, answer.body
        runs = await asyncio.gather(*(run_boot(agent) for agent in boards))
    failed = [run.text() for run in runs if run.code != 0]
    assert not failed, failed[:2]
    throttled = [line for run in runs for _, line in run.log if "register_throttled" in line]
    assert throttled, "no board was throttled: the limit proved nothing"
    assert all("reason_code=throttled" in line for line in throttled), throttled[:3]
    check = await registry_against_boards(pool, operator.account_id, boards)
    assert check.ok, check.problems[:5]
    assert check.devices == check.provisioned == len(boards), check
