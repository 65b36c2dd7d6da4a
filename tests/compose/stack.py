"""The real docker-compose.yml under podman: one project of its own (its containers, network and
volumes), driven by deploy/container/compose.sh, reached through its published ports only.

Images come from deploy/container/images.sh (local bases where Docker Hub is out of reach).
Commands are run without a shell; what they print goes to var/log/compose-<project>.log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "container" / "compose.sh"
IMAGES = ROOT / "deploy" / "container" / "images.sh"
LOCAL_IMAGE = "localhost/fleetreg:local"
KAFKA_IMAGE = "localhost/fleetreg-kafka:4.1.1"
POSTGRES_IMAGE = "localhost/fleetreg-postgres:15-bookworm"
SERVICES = ("dedup", "provisioning", "intake", "operator", "ingestion", "notifier")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ComposeStack:
    """One compose project. ``env`` is what compose.sh and podman-compose get on top of the
    environment (the project's .env file holds the secrets and ports)."""

    project: str
    image: str = LOCAL_IMAGE
    settings: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = ROOT / "var" / "compose" / self.project
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = ROOT / "var" / "log" / f"compose-{self.project}.log"
        self.env_file = self.home / "env"
        if not self.ports:
            self.ports = {name: free_port() for name in ("device", "device_tls", "operator", "bulk")}
        values = {
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "FLEETREG_SECRET_KEY": secrets.token_urlsafe(48),
            "KAFKA_IMAGE": KAFKA_IMAGE,
            "POSTGRES_IMAGE": POSTGRES_IMAGE,
            "FLEETREG_INTAKE_PUBLISHED_PORT": str(self.ports["device"]),
            "FLEETREG_INTAKE_TLS_PUBLISHED_PORT": str(self.ports["device_tls"]),
            "FLEETREG_OPERATOR_PUBLISHED_PORT": str(self.ports["operator"]),
            "FLEETREG_INGESTION_PUBLISHED_PORT": str(self.ports["bulk"]),
            **self.settings,
        }
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
        self.env_file.chmod(0o600)

    # ------------------------------------------------------------ addresses ----
    @property
    def device_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['device']}"

    @property
    def operator_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['operator']}"

    @property
    def bulk_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['bulk']}"

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    # -------------------------------------------------------------- commands ----
    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "COMPOSE_PROJECT_NAME": self.project,
            "FLEETREG_COMPOSE_ENV_FILE": str(self.env_file),
            "FLEETREG_IMAGE": self.image,
        }

    async def run(
        self, *command: str, check: bool = True, within_s: float = 600, secret: bool = False
    ) -> str:
        """Run ``command``; its output goes to the project's log (not when it is ``secret``),
        its stdout is returned. Raises AssertionError (with the output's tail, unless secret)
        when it fails and ``check`` is set."""
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.environment(),
            cwd=ROOT,
        )
        out, err = await asyncio.wait_for(process.communicate(), within_s)
        with self.log.open("ab") as log:
            log.write(f"$ {' '.join(command)} -> {process.returncode}\n".encode())
            log.write(b"(output not logged: it holds a secret)\n" if secret else out + err)
        if check and process.returncode != 0:
            shown = err[-2000:] if secret else (out + err)[-2000:]
            raise AssertionError(f"{' '.join(command)} exited {process.returncode}: {shown!r}")
        return out.decode()

    async def compose(self, *args: str, within_s: float = 600) -> str:
        return await self.run(str(COMPOSE), *args, within_s=within_s)

    async def up(self) -> float:
        """compose.sh up; returns its seconds."""
        started = time.monotonic()
        await self.compose("up")
        return time.monotonic() - started

    async def down(self) -> None:
        """compose.sh down --volumes, then the project's settings file (it holds its secrets);
        a second call does nothing."""
        if not self.env_file.exists():
            return
        await self.compose("down", "--volumes")
        shutil.rmtree(self.home, ignore_errors=True)

    async def fleetreg(self, *args: str) -> Any:
        """``fleetreg ARGS --json`` in the operator container (it holds DATABASE_URL), as the
        docs say: compose.sh exec -T operator fleetreg ..."""
        out = await self.run(str(COMPOSE), "exec", "-T", "operator", "fleetreg", *args, "--json", secret=True)
        return json.loads(out)

    async def inspect(self, service: str, template: str) -> str:
        return (await self.run("podman", "inspect", "--format", template, self.container(service))).strip()

    async def crash(self, service: str) -> None:
        """SIGKILL the container's main process, as the kernel's OOM killer or a crash would
        (`podman kill` counts as the user stopping it, and the restart policy stays out)."""
        pid = int(await self.inspect(service, "{{.State.Pid}}"))
        os.kill(pid, 9)

    async def wait_restarted(self, service: str, old_pid: int, within_s: float = 120) -> float:
        """Seconds until the restart policy has the service running again and healthy."""
        started = time.monotonic()
        while time.monotonic() - started < within_s:
            state = await self.inspect(service, "{{.State.Status}} {{.State.Pid}}")
            status, pid = state.split()
            if status == "running" and int(pid) not in (0, old_pid):
                break
            await asyncio.sleep(0.2)
        await self.compose("wait", service)
        return time.monotonic() - started

    async def psql(self, sql: str) -> str:
        """One query in the postgres container (for checks the APIs do not expose)."""
        return (
            await self.run(
                "podman",
                "exec",
                self.container("postgres"),
                "sh",
                "-c",
                'psql -qtAX -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$0"',
                sql,
            )
        ).strip()


def run_images(*args: str) -> None:
    """deploy/container/images.sh ARGS (engine, bases, fleetreg [REF] [TAG]), output shown."""
    subprocess.run([str(IMAGES), *args], cwd=ROOT, check=True)


def _megabytes(usage: str) -> float:
    """'44.19MB / 536.9MB' -> 44.19 (podman stats' decimal units)."""
    amount = usage.split("/")[0].strip()
    for unit, factor in (("kB", 1e-3), ("MB", 1.0), ("GB", 1e3), ("B", 1e-6)):
        if amount.endswith(unit):
            return float(amount[: -len(unit)]) * factor
    raise ValueError(f"unreadable memory usage {usage!r}")


class PeakMemory:
    """Samples `podman stats` once a second while running; ``peaks`` is the highest memory
    use seen per service, in MB (what the resource requests and limits are set from)."""

    def __init__(self, stack: ComposeStack) -> None:
        self.stack = stack
        self.peaks: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        prefix = f"{self.stack.project}_"
        while True:
            out = await self.stack.run("podman", "stats", "--no-stream", "--format", "json", check=False)
            for row in json.loads(out or "[]"):
                if row["name"].startswith(prefix):
                    service = row["name"][len(prefix) :].rsplit("_", 1)[0]
                    used = _megabytes(row["mem_usage"])
                    self.peaks[service] = max(self.peaks.get(service, 0.0), round(used, 1))
            await asyncio.sleep(1)

    async def __aenter__(self) -> PeakMemory:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
