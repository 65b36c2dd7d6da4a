"""The running system for end-to-end tests: the real services as processes, on the
real broker and database, each run with its own topic prefix and consumer groups."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "var" / "log" / "e2e"
TEST_SECRET_KEY = "e2e-secret-key-that-is-long-enough-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServiceProcess:
    """One instance of one service."""

    service: str
    instance: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    ops_port: int = field(default_factory=free_port)  # /healthz, /readyz, /metrics
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops_url(self) -> str:
        """The operations listener: health, readiness and metrics (not on ``url``)."""
        return f"http://127.0.0.1:{self.ops_port}"

    def start(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **self.env,
            "FLEETREG_HTTP_PORT": str(self.port),
            f"FLEETREG_{self.service.upper()}_OPS_PORT": str(self.ops_port),
        }
        with (LOGS / f"{self.instance}.log").open("ab") as log:  # the child keeps its own handle
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.service}"], cwd=ROOT, env=env, stdout=log, stderr=log
            )

    async def wait_ready(self, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    raise RuntimeError(f"{self.instance} exited; see var/log/e2e/{self.instance}.log")
                try:
                    async with session.get(f"{self.ops_url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.instance} not ready in {within_s} s; see var/log/e2e/{self.instance}.log")

    def rss_bytes(self) -> int:
        """The process's resident memory (``VmRSS`` of /proc/PID/status), in bytes."""
        if self.process is None:
            raise RuntimeError(f"{self.instance} is not started")
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{self.instance}: no VmRSS in /proc/{self.process.pid}/status")

    def kill(self) -> None:
        """SIGKILL: the process dies with no chance to finish or commit anything."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> int | None:
        """SIGTERM and wait: the graceful shutdown path."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None


@dataclass
class System:
    env: dict[str, str]
    services: dict[str, ServiceProcess]
    extra: list[ServiceProcess] = field(default_factory=list)

    @property
    def device_url(self) -> str:
        return self.services["intake"].url

    @property
    def operator_url(self) -> str:
        return self.services["operator"].url

    @property
    def bulk_url(self) -> str:
        return self.services["ingestion"].url

    @property
    def compat_url(self) -> str:
        """The https base URL a reference client is pointed at (CI_APISERVER), prefix included."""
        return f"https://127.0.0.1:{self.env['FLEETREG_COMPAT_PORT']}/apv/v27"

    @property
    def tls_ca(self) -> Path:
        return ROOT / "var" / "e2e-tls" / "ca.pem"

    async def restart(self, name: str) -> None:
        process = self.services[name]
        process.kill()
        process.start()
        await process.wait_ready()

    async def add_instance(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        """One more instance of a service, with ``env`` on top of the system's settings
        (and the same consumer group as the first instance)."""
        group = {"FLEETREG_CONSUMER_GROUP": self.services[name].env["FLEETREG_CONSUMER_GROUP"]}
        if name == "intake":  # its https listener needs a port of its own too
            group["FLEETREG_COMPAT_PORT"] = str(free_port())
        settings = {**self.env, **SERVICE_ENV.get(name, {}), **group, **(env or {})}
        process = ServiceProcess(name, f"{name}-{len(self.extra) + 2}", settings)
        process.start()
        self.extra.append(process)
        await process.wait_ready()
        return process

    @contextlib.asynccontextmanager
    async def instance(self, name: str, env: dict[str, str] | None = None) -> AsyncIterator[ServiceProcess]:
        """:meth:`add_instance` for the ``with`` block, then stopped and removed alone: one
        left running would stay in its consumer group and take other tests' work."""
        process = await self.add_instance(name, env)
        try:
            yield process
        finally:
            process.stop()
            self.extra.remove(process)

    def stop(self) -> None:
        for process in [*self.extra, *self.services.values()]:
            process.stop()


def make_tls() -> Path:
    """The local CA and loopback certificate, made by the same script as ``make up``."""
    directory = ROOT / "var" / "e2e-tls"
    subprocess.run([str(ROOT / "deploy" / "local" / "tls.sh"), str(directory)], check=True)
    return directory


SERVICES = ("dedup", "provisioning", "intake", "operator", "ingestion", "notifier")
# Settings of one service only. The notifier retries within seconds instead of hours, looks
# for due deliveries and offline devices often, and counts a device offline after 3 s
# without a sign of life (the operator still shows the default 300 s).
SERVICE_ENV = {
    "notifier": {
        "FLEETREG_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1,1,1,2,2,2,2,2",
        "FLEETREG_WEBHOOK_TIMEOUT_SECONDS": "5",
        "FLEETREG_WEBHOOK_POLL_SECONDS": "0.1",
        "FLEETREG_WEBHOOK_SWEEP_SECONDS": "0.5",
        "FLEETREG_ONLINE_TTL_SECONDS": "3",
    }
}


async def start_system(database_url: str, bootstrap: str, prefix: str) -> System:
    tls = make_tls()
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FLEETREG_TOPIC_PREFIX": prefix,
        "FLEETREG_SECRET_KEY": TEST_SECRET_KEY,
        "FLEETREG_LOG_LEVEL": "INFO",
        # Small bulk limits, so that the tests can cross them; small chunks, so that a
        # publish lasts long enough to be interrupted.
        "FLEETREG_BULK_MAX_BYTES": str(1024 * 1024),
        "FLEETREG_BULK_MAX_ROWS": "20000",
        "FLEETREG_BULK_PUBLISH_CHUNK_ROWS": "500",
        "FLEETREG_BULK_MAX_FAILED_CLAIMS": "5",
        # The clone limit just allows the 199 clones of test_auto_registration's boot storm,
        # so that tests/e2e/test_quotas.py can cross it with a flood of its own.
        "FLEETREG_CLONE_LIMIT": "199",
        # The boot storms of other tests clone one hardware ID from 127.0.0.1 by the hundred;
        # the clone rate per source is tested on a pipeline of its own
        # (tests/e2e/test_creation_bounds.py).
        "FLEETREG_CLONE_RATE_PER_SOURCE": "100000",
        "FLEETREG_TLS_CERT": str(tls / "server.pem"),
        "FLEETREG_TLS_KEY": str(tls / "server.key"),
        "FLEETREG_COMPAT_PORT": str(free_port()),
        # Every test makes an account of its own, and with it an issuing CA: the https
        # listener accepts its device certificates within a second, not the default 30 s.
        "FLEETREG_TLS_CLIENT_CA_REFRESH_SECONDS": "1",
        # Tests of other features make many refused calls from 127.0.0.1; the limits'
        # defaults are tested on instances of their own (tests/e2e/test_throttling.py).
        "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "10000/minute",
        "FLEETREG_LIMIT_REFUSALS_PER_TARGET": "10000/minute",
        "FLEETREG_LIMIT_REQUESTS_PER_KEY": "10000/second",
        # The tests' webhook receivers listen on 127.0.0.1 (tests/e2e/test_webhooks.py turns
        # it off on an operator instance of its own).
        "FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS": "true",
    }
    services = {}
    for name in SERVICES:
        group_env = {**env, **SERVICE_ENV.get(name, {}), "FLEETREG_CONSUMER_GROUP": f"{prefix}-{name}"}
        services[name] = ServiceProcess(name, name, group_env)
    # The console forwards bulk uploads to the bulk API and asks the pipeline's readiness
    # (on each service's operations port).
    services["operator"].env["FLEETREG_INGESTION_URL"] = services["ingestion"].url
    services["operator"].env["FLEETREG_PIPELINE_HEALTH_URLS"] = ",".join(
        f"{services[name].ops_url}/readyz" for name in ("intake", "dedup", "provisioning")
    )
    for process in services.values():
        process.start()
    system = System(env={**env}, services=services)
    try:
        for process in services.values():
            await process.wait_ready()
    except RuntimeError:
        system.stop()
        raise
    return system


async def metric_sample(session: aiohttp.ClientSession, ops_url: str, name: str, **labels: str) -> float:
    """One sample of a process's /metrics (on its operations listener, ``ops_url``) with
    these labels; 0 when it has not counted yet."""
    async with session.get(f"{ops_url}/metrics") as response:
        assert response.status == 200, response.status
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
