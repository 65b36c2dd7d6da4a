"""The real docker-compose.yml, built and run under podman on this machine, reached through its
published ports only (issue 23): every compose healthcheck passes, a storm of devices and a bulk
file go through, the console loads; in the full form, killed and SIGTERMed services lose and
duplicate nothing, and a stop and start keeps the registry, the topics and console sessions.

The image's own promises (non-root, read-only root filesystem, no compiler, no host CA) are
checked on the running containers."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import uuid
from typing import Any

import aiohttp
import pytest
import yaml

from cli.simulate import plan_bulk, plan_fleet
from tests.chaos.load import Timeline
from tests.compose.conftest import FIGURES, FULL, new_account
from tests.compose.fleet import (
    KeepBooting,
    assert_whole,
    auto_product,
    exported,
    registry_matches,
    storm,
    storm_figures,
)
from tests.compose.stack import COMPOSE, LOCAL_IMAGE, ROOT, SERVICES, ComposeStack, PeakMemory
from tests.support.api import Operator
from tests.support.bulk import bulk_product, csv_rows, csv_text, publish_and_wait, upload

DEVICES = 2000 if FULL else 200
BULK_ROWS = 1000 if FULL else 100
full_only = pytest.mark.skipif(not FULL, reason="the full form only (make compose-test)")


def k8s_memory_limit_mb(service: str) -> float:
    """The memory limit of the service's Deployment in deploy/k8s/base, in MB."""
    manifest = yaml.safe_load_all((ROOT / "deploy" / "k8s" / "base" / f"{service}.yaml").read_text("utf-8"))
    deployment = next(d for d in manifest if d and d.get("kind") == "Deployment")
    limit = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    units = {"Mi": 1.048576, "Gi": 1073.741824}
    return float(limit[:-2]) * units[limit[-2:]]


@pytest.fixture(scope="module")
async def operator(stack: ComposeStack, session: aiohttp.ClientSession) -> Operator:
    return await new_account(stack, session)


# ------------------------------------------------------------------ tests ----
async def test_every_container_passes_its_compose_healthcheck(stack: ComposeStack) -> None:
    """compose.sh up returned only once each healthcheck passed; asked again (as monitoring
    does, a slow check tried again), each passes and podman records it healthy."""
    assert await stack.inspect("migrate", "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"
    table = await stack.compose("health")  # what monitoring calls without systemd
    assert [line.split() for line in table.splitlines()[1:]] == [
        [service, "healthy"] for service in ("postgres", "kafka", *SERVICES)
    ]
    for service in ("postgres", "kafka", *SERVICES):
        assert await stack.inspect(service, "{{.State.Health.Status}}") == "healthy", service


async def exit_code(*command: str) -> int:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), 60)


async def test_kafka_and_postgres_are_out_of_reach_of_other_networks(
    stack: ComposeStack,
) -> None:
    """Kafka's listener has no authentication: it and Postgres sit on an internal network, which
    a container on another network cannot reach (the services on it can). The host's own
    processes can, as with Docker's bridges: docs/operations.md says so."""
    probe = (
        "import socket, sys; s = socket.socket(); s.settimeout(3); s.connect((sys.argv[1], int(sys.argv[2])))"
    )
    for service, port in (("kafka", 9092), ("postgres", 5432)):
        [ip] = (
            await stack.inspect(service, "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")
        ).split()
        other_network = [
            "podman",
            "run",
            "--rm",
            "--network",
            "podman",
            "--entrypoint",
            "python",
            LOCAL_IMAGE,
        ]
        assert await exit_code(*other_network, "-c", probe, ip, str(port)) != 0, (
            f"another network reaches {service}"
        )
        inside = ["podman", "exec", stack.container("dedup"), "python", "-c", probe]
        assert await exit_code(*inside, service, str(port)) == 0, f"dedup cannot reach {service}"
        assert await exit_code(*inside, ip, str(port)) == 0  # the address probed above is the right one


async def test_the_services_run_unprivileged_on_a_read_only_root(stack: ComposeStack) -> None:
    for service in SERVICES:
        assert await stack.inspect(service, "{{.HostConfig.ReadonlyRootfs}}") == "true", service
        assert await stack.run("podman", "exec", stack.container(service), "id", "-u") == "10001\n"
    # the root filesystem refuses writes, even to the service's own files
    refused = await stack.run(
        "podman", "exec", stack.container("intake"), "sh", "-c", "touch /opt/venv/x 2>/dev/null; echo $?"
    )
    assert refused.strip() != "0"
    # only the spool (a volume) and /tmp (a tmpfs) take writes
    ingestion = stack.container("ingestion")
    for writable in ("/var/spool/fleetreg", "/tmp"):  # noqa: S108 - the container's tmpfs
        await stack.run("podman", "exec", ingestion, "sh", "-c", f"touch {writable}/w && rm {writable}/w")


PODMAN_DIAGNOSTIC = re.compile(r'^time="[^"]*" level=(debug|info|warning) msg=')


async def test_the_image_holds_no_compiler_no_host_ca_and_answers_help() -> None:
    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            "podman", "run", "--rm", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
        # podman's own diagnostics are not the image's output: on a host whose cgroup v1
        # net_cls is read-only it warns 'time="..." level=warning msg="Failed to add conmon
        # to cgroupfs sandbox cgroup..."' at every run, into the same stream.
        lines = [line for line in out.decode().splitlines() if not PODMAN_DIAGNOSTIC.match(line)]
        return process.returncode or 0, "\n".join(lines)

    code, out = await run(LOCAL_IMAGE, "--help")
    assert code == 0 and "usage: entrypoint.sh" in out
    code, out = await run(LOCAL_IMAGE, "fleetreg", "--help")
    assert code == 0 and "simulate" in out
    code, out = await run(LOCAL_IMAGE, "nonsense")
    assert code == 64 and "unknown command" in out
    code, out = await run(
        "--entrypoint", "sh", LOCAL_IMAGE, "-c", "command -v gcc cc g++ make; ls /src 2>/dev/null; id -u"
    )
    assert out.strip() == "10001", out  # no compiler, no source tree, the fixed user
    code, out = await run("--entrypoint", "sha256sum", LOCAL_IMAGE, "/etc/ssl/certs/ca-certificates.crt")
    host = await asyncio.create_subprocess_exec(
        "sha256sum", "/etc/ssl/certs/ca-certificates.crt", stdout=asyncio.subprocess.PIPE
    )
    host_sum, _ = await host.communicate()
    image_sum = next(line.split()[0] for line in out.splitlines() if line.endswith("ca-certificates.crt"))
    assert len(image_sum) == 64 and image_sum != host_sum.decode().split()[0], (
        "the host's CA bundle is in the image"
    )
    size = await asyncio.create_subprocess_exec(
        "podman", "image", "inspect", "--format", "{{.Size}}", LOCAL_IMAGE, stdout=asyncio.subprocess.PIPE
    )
    size_out, _ = await size.communicate()
    FIGURES["image_mb"] = round(int(size_out) / 1e6)
    # docs/operations.md states the size and what dominates it: a larger image updates both
    assert FIGURES["image_mb"] <= 260, FIGURES["image_mb"]


async def test_a_storm_of_devices_is_provisioned_once_each(stack: ComposeStack, operator: Operator) -> None:
    """`fleetreg simulate`: DEVICES devices, 5 % clones and 5 % lost responses, through the
    published device API; the registry then holds exactly one provisioned device each."""
    product_id, code = await auto_product(operator)
    async with PeakMemory(stack) as memory:
        out = await stack.run(
            str(ROOT / ".venv" / "bin" / "fleetreg"), "simulate", "--json", "--devices", str(DEVICES),
            "--clone-rate", "0.05", "--lost-response-rate", "0.05", "--concurrency", "50",
            "--code", code, "--device-url", stack.device_url,
        )  # fmt: skip
    summary = json.loads(out)
    FIGURES["storm"] = {
        k: summary[k] for k in ("devices", "provisioned", "duration_s", "throughput_per_s", "retries")
    }
    FIGURES["storm_peak_memory_mb"] = memory.peaks
    assert summary["errors"] == 0 and summary["provisioned"] == DEVICES, summary
    assert (
        summary["clones_detected"] == summary["clones_planned"] == DEVICES // 20
        and summary["hardware_ids_unique"]
    )
    # a device's "ready" is recorded asynchronously (through Kafka and dedup): the registry gets a minute
    deadline = time.monotonic() + 60
    while True:
        rows = await exported(operator, product_id)
        if {r["lifecycle"] for r in rows} == {"provisioned"} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert len(rows) == DEVICES and {r["lifecycle"] for r in rows} == {"provisioned"}
    assert len({r["hardware_id"].lower() for r in rows}) == DEVICES
    # the limits of docker-compose.yml and deploy/k8s hold the measured peak with room to spare
    for service in SERVICES:
        assert memory.peaks[service] < 0.5 * k8s_memory_limit_mb(service), (service, memory.peaks)


async def test_a_bulk_file_is_uploaded_published_and_claimed(
    stack: ComposeStack, operator: Operator, session: aiohttp.ClientSession
) -> None:
    product_id = await bulk_product(operator)
    rows = csv_rows(BULK_ROWS)
    status, body = await upload(session, stack.bulk_url, operator, product_id, csv_text(rows).encode())
    assert status == 201, body
    await publish_and_wait(session, stack.bulk_url, operator, body["id"])
    published = await exported(operator, product_id)
    assert len(published) == BULK_ROWS and {d["state"] for d in published} == {"offline"}

    code = (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]
    result = await storm(stack, plan_bulk(code, [(h, k) for k, h, _ in rows]))
    FIGURES["bulk"] = storm_figures(result)
    assert not result.failed, result.failed
    check = await registry_matches(operator, product_id, result)
    assert_whole(check, BULK_ROWS)


@full_only
async def test_the_console_signs_in_and_shows_the_devices(stack: ComposeStack, operator: Operator) -> None:
    from tests.compose.browser import console_devices_total

    total = await console_devices_total(stack.operator_url, operator.api_key)
    assert total == DEVICES + BULK_ROWS


@full_only
async def test_killing_the_intake_and_dedup_mid_storm_loses_and_duplicates_nothing(
    stack: ComposeStack, operator: Operator
) -> None:
    """SIGKILL of the intake's and then the dedup's main process in the middle of a storm: the
    restart policy brings each back, the devices retry, every device ends provisioned once."""
    product_id, code = await auto_product(operator)
    timeline = Timeline()
    running = asyncio.create_task(storm(stack, plan_fleet(code, DEVICES, clone_rate=0.05), timeline))
    await asyncio.sleep(3)
    costs: dict[str, Any] = {}
    for service in ("intake", "dedup"):
        pid = int(await stack.inspect(service, "{{.State.Pid}}"))
        killed_at = time.monotonic()
        await stack.crash(service)
        costs[f"{service}_back_healthy_s"] = round(await stack.wait_restarted(service, pid), 1)
        costs[f"{service}_devices"] = timeline.recovery(killed_at)
    result = await running
    FIGURES["kill_mid_storm"] = {**storm_figures(result), **costs}
    assert not running.cancelled() and not result.failed, result.failed
    assert_whole(await registry_matches(operator, product_id, result), DEVICES)


@full_only
async def test_sigterm_stops_each_service_cleanly_within_its_grace_period(
    stack: ComposeStack, operator: Operator
) -> None:
    """A stop (SIGTERM, then SIGKILL after the compose file's grace period, 50 s or 60 s) of each
    service in turn while devices boot: each exits 0 before the grace period, and no registration in
    flight is lost."""
    product_id, code = await auto_product(operator)
    booting = KeepBooting(stack, code)
    await asyncio.sleep(1)
    stopped: dict[str, float] = {}
    seen: dict[str, Any] = {}
    for service in SERVICES:
        assert booting.in_flight
        started = time.monotonic()
        await stack.compose("stop", service)  # SIGTERM, SIGKILL after its stop_grace_period
        stopped[service] = round(time.monotonic() - started, 1)
        assert await stack.inspect(service, "{{.State.ExitCode}}") == "0", service
        await stack.run("podman", "start", stack.container(service))
        await stack.compose("wait", service)
        seen[service] = booting.timeline.recovery(started, until=time.monotonic())
    await booting.stop()
    FIGURES["sigterm"] = {
        "stop_seconds": stopped,
        "devices_booted_meanwhile": booting.devices,
        "retries": booting.retries,
        "failed": booting.failed,
        "devices_saw": seen,
    }
    assert max(stopped.values()) < 50, stopped
    assert not booting.failed, booting.failed
    assert_whole(await registry_matches(operator, product_id, booting.told), booting.devices)


@full_only
async def test_a_stop_and_start_of_the_whole_stack_keeps_registry_topics_and_sessions(
    stack: ComposeStack, operator: Operator
) -> None:
    from tests.compose.browser import signed_in_cookie, still_signed_in

    cookie = await signed_in_cookie(stack.operator_url, operator.api_key)
    product_id, code = await auto_product(operator)
    first = await storm(stack, plan_fleet(code, 100, clone_rate=0.05))
    assert not first.failed
    devices_before = await registry_matches(operator, product_id, first)
    topics_before = await stack.run("podman", "exec", stack.container("kafka"), "ls", "/var/lib/kafka/data")

    started = time.monotonic()
    await stack.compose("stop")
    await stack.up()
    FIGURES["stop_and_start_s"] = round(time.monotonic() - started, 1)

    assert await registry_matches(operator, product_id, first) == devices_before
    topics_after = await stack.run("podman", "exec", stack.container("kafka"), "ls", "/var/lib/kafka/data")
    assert {t for t in topics_before.split() if t.startswith("fleetreg.")} <= set(topics_after.split())
    assert await still_signed_in(stack.operator_url, cookie)
    # the backup command of docs/operations.md, while the stack runs
    dump = await asyncio.create_subprocess_exec(
        str(COMPOSE), "exec", "-T", "postgres", "pg_dump", "-U", "fleetreg", "-d", "fleetreg", "--format=custom",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=stack.environment(),
    )  # fmt: skip
    backup, _ = await dump.communicate()
    assert dump.returncode == 0 and backup.startswith(b"PGDMP") and len(backup) > 100_000, len(backup)
    # and the pipeline goes on where it was: a new storm on the same topics and groups
    second = await storm(stack, plan_fleet(code, 100, clone_rate=0.0))
    assert not second.failed
    check = await registry_matches(operator, product_id, second)
    assert check["lost"] == 0 and check["hardware_ids_twice"] == 0
    assert check["extra_devices"] == 100  # the first storm's, still there


async def test_a_secret_left_as_the_placeholder_stops_the_start_before_any_container(images: None) -> None:
    """Postgres would initialise its volume with the placeholder password and keep it."""
    project = ComposeStack(
        f"fct{uuid.uuid4().hex[:6]}", settings={"POSTGRES_PASSWORD": "change-me-postgres-password"}
    )
    try:
        process = await asyncio.create_subprocess_exec(
            str(COMPOSE), "up", env=project.environment(), stderr=asyncio.subprocess.PIPE
        )
        _, err = await process.communicate()
        assert process.returncode == 1 and b"POSTGRES_PASSWORD" in err and b"placeholder" in err, err
        listed = await project.run("podman", "ps", "-a", "--format", "{{.Names}}")
        assert project.project not in listed
    finally:
        shutil.rmtree(project.home, ignore_errors=True)


async def test_down_removes_the_projects_containers_networks_and_volumes_only(stack: ComposeStack) -> None:
    """compose.sh down --volumes (the module's last step) leaves no container, network or
    volume of the project, and keeps the images (the layer cache)."""
    await stack.down()
    for listing in (
        ["ps", "-a", "--format", "{{.Names}}"],
        ["network", "ls", "--format", "{{.Name}}"],
        ["volume", "ls", "--format", "{{.Name}}"],
    ):
        listed = await stack.run("podman", *listing)
        assert stack.project not in listed, (listing, listed)
    await stack.run("podman", "image", "exists", LOCAL_IMAGE)
