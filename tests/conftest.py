"""Fixtures on the real broker and database.

``make test`` starts Kafka and Postgres (deploy/local/stack.sh infra-up); run
directly, pytest starts them the same way. Tests use the ``fleetreg_test``
database, never the demo's, and every test gets its own topic prefix, consumer
groups and account, so no test depends on another or on their order.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cli.config import parse_env_file
from shared.db.migrations import migrate
from shared.db.pool import Pool, open_pool, single_connection
from shared.settings import DatabaseSettings, KafkaSettings, Secret
from tests.support.keycloak import KeycloakRealm

ROOT = Path(__file__).resolve().parent.parent

# The container tests (tests/compose) build images and run the compose stack under podman:
# `make compose-test` (and .ci/run after `make test`) runs them, with FLEETREG_COMPOSE_TEST set.
collect_ignore = [] if os.environ.get("FLEETREG_COMPOSE_TEST") else ["compose"]
# The agent's .deb installed into a Debian root (tests/agent_package): `make agent-package-test`
# runs it, with FLEETREG_AGENT_PACKAGE_TEST set (it needs root and Debian's mmdebstrap).
if not os.environ.get("FLEETREG_AGENT_PACKAGE_TEST"):
    collect_ignore.append("agent_package")


@pytest.fixture(scope="session")
def infra() -> dict[str, str]:
    """Kafka and Postgres are running; returns their coordinates."""
    env_file = ROOT / "var" / "infra.env"
    subprocess.run([str(ROOT / "deploy" / "local" / "stack.sh"), "infra-up"], check=True)
    return parse_env_file(env_file)


@pytest.fixture(scope="session")
def keycloak() -> Iterator[KeycloakRealm]:
    """The test identity provider (Keycloak with the realm of
    deploy/local/keycloak/fleetreg-realm.json): the one at FLEETREG_KEYCLOAK_URL (its base
    URL, the realm imported there), else started once for the run by deploy/local/keycloak.sh
    and stopped at its end (left running if it already ran before the run)."""
    given = os.environ.get("FLEETREG_KEYCLOAK_URL")
    if given:
        yield KeycloakRealm(given.rstrip("/"))
        return
    script = str(ROOT / "deploy" / "local" / "keycloak.sh")
    status = subprocess.run([script, "status"], check=True, capture_output=True, text=True)
    already_running = status.stdout.startswith("keycloak: running")
    started = subprocess.run([script, "start"], check=True, stdout=subprocess.PIPE, text=True)
    issuer = started.stdout.strip().splitlines()[-1]
    try:
        yield KeycloakRealm(issuer.rsplit("/realms/", 1)[0])
    finally:
        if not already_running:
            subprocess.run([script, "stop"], check=False)


@pytest.fixture(scope="session")
def database_url(infra: dict[str, str]) -> str:
    return infra["FLEETREG_TEST_DATABASE_URL"]


@pytest.fixture(scope="session")
async def migrated(database_url: str) -> str:
    async with single_connection(database_url) as conn:
        await migrate(conn)
    return database_url


@pytest.fixture(scope="session")
async def pool(migrated: str) -> AsyncIterator[Pool]:
    db = await open_pool(DatabaseSettings(url=Secret(migrated), pool_min=1, pool_max=10))
    yield db
    await db.close()


@pytest.fixture
def unique() -> str:
    """A short unique token for names of topics, groups and rows of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def kafka_settings(infra: dict[str, str], unique: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], topic_prefix=f"t{unique}", partitions=3
    )
