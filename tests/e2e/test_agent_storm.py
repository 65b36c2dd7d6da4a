"""A storm of device agents (issue 26, item 3, the short form of ``make bench``'s 500): 50
``agent/fleetreg-agent`` processes booting at once from five loopback addresses (a few
factory lines behind their NATs), under BusyBox ash and dash in turn. All must end
provisioned, no hardware ID held twice, and the registry must match the boards' state
folders (one provisioned device each, under the hardware ID it claimed; no other device).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from shared.db.pool import Pool
from tests.support.agent import SHELLS, install_shells
from tests.support.agent_fleet import fleet, registry_against_boards, run_boot
from tests.support.api import Operator
from tests.support.sources import fresh_address
from tests.support.system import System

pytestmark = pytest.mark.e2e

AGENTS = 50
SOURCES = 5


async def test_a_storm_of_agents_from_a_few_addresses_all_provision_once(
    system: System, operator: Operator, pool: Pool, tmp_path: Path
) -> None:
    install_shells()
    code = (await operator.product([{"type": "ssh", "port": 22}, {"type": "web", "port": 80}]))[
        "bulk_identification_code"
    ]
    sources = [fresh_address() for _ in range(SOURCES)]
    boards = fleet(tmp_path, AGENTS, system.device_url, code, shells=SHELLS, sources=sources)
    started = time.monotonic()
    runs = await asyncio.gather(*(run_boot(agent) for agent in boards))
    seconds = time.monotonic() - started

    failed = [run.text() for run in runs if run.code != 0]
    assert not failed, failed[:2]
    check = await registry_against_boards(pool, operator.account_id, boards)
    assert check.ok, check.problems[:5]
    assert check.devices == check.provisioned == AGENTS, check
    # The boards' calls came from their addresses (curl's interface), as the intake counts them.
    created_from = await pool.fetch(
        "SELECT DISTINCT created_source FROM devices WHERE account_id = $1", uuid.UUID(operator.account_id)
    )
    assert sorted(r["created_source"] for r in created_from) == sorted(sources)
    print(f"agent storm: {AGENTS} boards from {SOURCES} addresses provisioned in {seconds:.1f} s")
