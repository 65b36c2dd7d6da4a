"""The running system, started once per test session on the real broker and database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.support.agent import SHELLS, install_shells
from tests.support.api import Operator, new_operator
from tests.support.system import System, start_system


@pytest.fixture(scope="session")
async def system(migrated: str, infra: dict[str, str]) -> AsyncIterator[System]:
    import uuid

    running = await start_system(migrated, infra["KAFKA_BOOTSTRAP_SERVERS"], f"e2e{uuid.uuid4().hex[:8]}")
    yield running
    running.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=300)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as s:
        yield s


@pytest.fixture
async def operator(session: aiohttp.ClientSession, pool: Pool, system: System) -> Operator:
    """A fresh account of its own for each test."""
    return await new_operator(session, pool, system.operator_url)


@pytest.fixture(scope="session")
def shells() -> None:
    """Debian's busybox and dash (and shellcheck), installed when missing."""
    install_shells()


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest, shells: None) -> str:
    """Each device agent test runs under BusyBox ash and under dash."""
    return str(request.param)
