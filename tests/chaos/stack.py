"""The separate local stack a chaos run breaks: deploy/local/stack.sh with its own folder
(var/chaos-stack) and its own ports (the defaults + 1000), so a developer's stack and the
shared test infrastructure on var/ are never touched."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cli.config import parse_env_file

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack.sh"
KAFKA_LIBS = "libs-4.1.1"

DEFAULT_PORTS = {
    "FLEETREG_KAFKA_PORT": 19092,
    "FLEETREG_KAFKA_CONTROLLER_PORT": 19093,
    "FLEETREG_PG_PORT": 15432,
    "FLEETREG_INTAKE_PORT": 18080,
    "FLEETREG_OPERATOR_PORT": 18081,
    "FLEETREG_DEDUP_PORT": 18082,
    "FLEETREG_PROVISIONING_PORT": 18083,
    "FLEETREG_INGESTION_PORT": 18084,
    "FLEETREG_NOTIFIER_PORT": 18085,
    "FLEETREG_COMPAT_PORT": 18443,
    # The operations ports (health, readiness, metrics): each service's port + 100.
    "FLEETREG_INTAKE_OPS_PORT": 18180,
    "FLEETREG_OPERATOR_OPS_PORT": 18181,
    "FLEETREG_DEDUP_OPS_PORT": 18182,
    "FLEETREG_PROVISIONING_OPS_PORT": 18183,
    "FLEETREG_INGESTION_OPS_PORT": 18184,
    "FLEETREG_NOTIFIER_OPS_PORT": 18185,
}

# The services' settings on the chaos stack: the storm comes from one address with one
# operator key polling, so the abuse limits are opened wide (they are tested elsewhere).
SERVICE_ENV = {
    "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "1000000/minute",
    "FLEETREG_LIMIT_REFUSALS_PER_TARGET": "1000000/minute",
    "FLEETREG_LIMIT_REQUESTS_PER_KEY": "100000/second",
    "FLEETREG_LOG_LEVEL": "WARNING",
}


@dataclass
class ChaosStack:
    var: Path
    port_offset: int = 1000

    @property
    def env(self) -> dict[str, str]:
        ports = {name: str(port + self.port_offset) for name, port in DEFAULT_PORTS.items()}
        return {**os.environ, **ports, **SERVICE_ENV, "FLEETREG_VAR_DIR": str(self.var)}

    def port(self, name: str) -> int:
        return DEFAULT_PORTS[name] + self.port_offset

    @property
    def device_url(self) -> str:
        return f"http://127.0.0.1:{self.port('FLEETREG_INTAKE_PORT')}"

    @property
    def operator_url(self) -> str:
        return f"http://127.0.0.1:{self.port('FLEETREG_OPERATOR_PORT')}"

    @property
    def bulk_url(self) -> str:
        return f"http://127.0.0.1:{self.port('FLEETREG_INGESTION_PORT')}"

    @property
    def infra(self) -> dict[str, str]:
        return parse_env_file(self.var / "infra.env")

    def reuse_kafka_jars(self) -> None:
        """Link the developer stack's Kafka jars (var/kafka) instead of downloading them again."""
        mine = self.var / "kafka" / KAFKA_LIBS
        theirs = ROOT / "var" / "kafka" / KAFKA_LIBS
        if mine.exists() or not (theirs / ".complete").exists() or theirs.resolve() == mine.resolve():
            return
        mine.parent.mkdir(parents=True, exist_ok=True)
        mine.symlink_to(theirs, target_is_directory=True)

    def up(self) -> None:
        self.var.mkdir(parents=True, exist_ok=True)
        self.reuse_kafka_jars()
        subprocess.run([str(STACK), "up"], env=self.env, check=True)

    def down(self) -> None:
        subprocess.run([str(STACK), "down"], env=self.env, check=False)

    async def run(self, *args: str, timeout_s: float = 180) -> None:
        """One stack.sh subcommand (a fault or its repair); raises if it fails. Its output
        goes to a file, not a pipe: a service it starts would hold a pipe open."""
        log = self.var / "log" / "chaos-commands.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                str(STACK), *args, env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out
            )
            code = await asyncio.wait_for(process.wait(), timeout=timeout_s)
        if code != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"stack.sh {' '.join(args)} failed: {' '.join(tail)}")

    async def kill(self, service: str) -> None:
        await self.run("kill-service", service)

    async def start(self, service: str) -> None:
        await self.run("start-service", service)

    async def restart_broker(self) -> None:
        await self.run("stop-kafka")
        await self.run("infra-up")

    async def restart_postgres(self) -> None:
        await self.run("restart-postgres")
