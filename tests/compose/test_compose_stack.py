"""The real docker-compose.yml, built and run under podman on this machine, reached through its
published ports only (issue 23): every compose healthcheck passes, a storm of devices and a bulk
file go through, the console loads; in the full form, killed and SIGTERMed services lose and
duplicate nothing, and a stop and start keeps the registry, the topics and console sessions.

The image's own promises (non-root, read-only root filesystem, no compiler, no host CA) are
checked on the running containers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from cli.simulate import FleetPlan, plan_bulk, plan_fleet
from tests.chaos.load import StormResult, Timeline, boot_storm
from tests.compose.conftest import FIGURES, FULL, new_account
from tests.compose.stack import LOCAL_IMAGE, SERVICES, ComposeStack
from tests.support.api import Operator
from tests.support.bulk import bulk_product, csv_rows, csv_text, publish_and_wait, upload

DEVICES = 2000 if FULL else 200
BULK_ROWS = 1000 if FULL else 100
CONCURRENCY = 50
full_only = pytest.mark.skipif(not FULL, reason="the full form only (make compose-test)")


# ---------------------------------------------------------------- helpers ----
async def exported(operator: Operator, product_id: str) -> list[dict[str, Any]]:
    """The product's devices as the operator API exports them (JSON lines)."""
    headers = {"Authorization": f"Bearer {operator.api_key}"}
    url = f"{operator.url}/v1/devices/export?format=jsonl&product_id={product_id}"
    async with operator.session.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        text = await response.text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if r["product_id"] == product_id]


async def registry_matches(
    operator: Operator, product_id: str, result: StormResult, settle_s: float = 60
) -> dict[str, Any]:
    """The product's registry against what its devices were told (as make chaos checks):
    every device told "provisioned" is one provisioned device, and there is no other
    device. ``ready`` is recorded asynchronously: the registry gets ``settle_s`` to catch up."""
    told = set(result.acknowledged.values())
    deadline = time.monotonic() + settle_s
    while True:
        rows = await exported(operator, product_id)
        by_id = {r["id"]: r for r in rows}
        lost = sorted(d for d in told if by_id.get(d, {}).get("lifecycle") != "provisioned")
        if not lost or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    hardware_ids = [r["hardware_id"].lower() for r in rows]
    return {
        "told_provisioned": len(told),
        "lost": len(lost),
        "extra_devices": len(set(by_id) - told),
        "hardware_ids_twice": len(hardware_ids) - len(set(hardware_ids)),
    }


def assert_whole(check: dict[str, Any], planned: int) -> None:
    assert check["told_provisioned"] == planned, check
    assert check["lost"] == 0 and check["extra_devices"] == 0 and check["hardware_ids_twice"] == 0, check


async def auto_product(operator: Operator) -> tuple[str, str]:
    """(product ID, Bulk Identification Code) of a new product with an active auto registration."""
    registration = await operator.product()
    return registration["product_id"], registration["bulk_identification_code"]


async def storm(stack: ComposeStack, plan: FleetPlan, timeline: Timeline | None = None) -> StormResult:
    return await boot_storm(plan, stack.device_url, CONCURRENCY, timeline or Timeline(), deadline_s=300)


def storm_figures(result: StormResult) -> dict[str, Any]:
    provisioned = len(result.acknowledged)
    return {
        "devices": len(result.results),
        "provisioned": provisioned,
        "seconds": round(result.duration_s, 1),
        "devices_per_s": round(provisioned / result.duration_s, 1) if result.duration_s else None,
        "retries": result.retries,
        "failed": result.failed,
    }


@pytest.fixture(scope="module")
async def operator(stack: ComposeStack, session: aiohttp.ClientSession) -> Operator:
    return await new_account(stack, session)


# ------------------------------------------------------------------ tests ----
async def test_every_container_passes_its_compose_healthcheck(stack: ComposeStack) -> None:
    """compose.sh up returned only once each healthcheck passed; asked again, each passes."""
    for service in ("postgres", "kafka", *SERVICES):
        await stack.run("podman", "healthcheck", "run", stack.container(service))
        assert await stack.inspect(service, "{{.State.Health.Status}}") == "healthy", service
    assert await stack.inspect("migrate", "{{.State.Status}} {{.State.ExitCode}}") == "exited 0"


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


async def test_the_image_holds_no_compiler_no_host_ca_and_answers_help() -> None:
    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            "podman", "run", "--rm", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode()

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
    assert out.split()[0] != host_sum.split()[0], "the build's mounted CA bundle leaked into the image"
    size = await asyncio.create_subprocess_exec(
        "podman", "image", "inspect", "--format", "{{.Size}}", LOCAL_IMAGE, stdout=asyncio.subprocess.PIPE
    )
    size_out, _ = await size.communicate()
    FIGURES["image_mb"] = round(int(size_out) / 1e6)


async def test_a_storm_of_devices_is_provisioned_once_each(stack: ComposeStack, operator: Operator) -> None:
    """DEVICES devices, 5 % clones and 5 % lost responses, through the published device API."""
    product_id, code = await auto_product(operator)
    result = await storm(stack, plan_fleet(code, DEVICES, clone_rate=0.05, lost_response_rate=0.05))
    FIGURES["storm"] = storm_figures(result)
    assert not result.failed, result.failed
    assert_whole(await registry_matches(operator, product_id, result), DEVICES)


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
    """`podman stop` (SIGTERM, then SIGKILL after the compose file's 50 s) of each service in
    turn while devices boot: each exits 0 before the grace period, and no registration in
    flight is lost."""
    product_id, code = await auto_product(operator)
    running = asyncio.create_task(storm(stack, plan_fleet(code, DEVICES // 2, clone_rate=0.05)))
    await asyncio.sleep(2)
    stopped: dict[str, float] = {}
    for service in SERVICES:
        started = time.monotonic()
        await stack.run("podman", "stop", "--time", "50", stack.container(service))
        stopped[service] = round(time.monotonic() - started, 1)
        assert await stack.inspect(service, "{{.State.ExitCode}}") == "0", service
        await stack.run("podman", "start", stack.container(service))
        await stack.compose("wait", service)
    result = await running
    FIGURES["sigterm_stop_seconds"] = stopped
    FIGURES["sigterm_storm"] = storm_figures(result)
    assert max(stopped.values()) < 50, stopped
    assert not result.failed, result.failed
    assert_whole(await registry_matches(operator, product_id, result), DEVICES // 2)


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
    # and the pipeline goes on where it was: a new storm on the same topics and groups
    second = await storm(stack, plan_fleet(code, 100, clone_rate=0.0))
    assert not second.failed
    check = await registry_matches(operator, product_id, second)
    assert check["lost"] == 0 and check["hardware_ids_twice"] == 0
    assert check["extra_devices"] == 100  # the first storm's, still there


async def test_down_removes_the_projects_containers_networks_and_volumes_only(stack: ComposeStack) -> None:
    """compose.sh down (the module's last step) leaves no container, network or volume of the
    project, and keeps the images (the layer cache)."""
    await stack.down()
    for listing in (
        ["ps", "-a", "--format", "{{.Names}}"],
        ["network", "ls", "--format", "{{.Name}}"],
        ["volume", "ls", "--format", "{{.Name}}"],
    ):
        listed = await stack.run("podman", *listing)
        assert stack.project not in listed, (listing, listed)
    await stack.run("podman", "image", "exists", LOCAL_IMAGE)
