"""The device agent in ``make bench`` (issue 26, item 4): what ``agent/fleetreg-agent`` costs
a device and how a storm of agents compares with the simulator's two-call storm of the
same run.

1. **Boots one at a time** (a quiet system), under each shell (dash, BusyBox ash): each
   board's first boot (register with ``include=files``, verify and write the files, persist
   the identity, ``ready``), then its second boot (a check-in with the secret: manifest,
   heartbeat). Wall time, and the CPU it cost the device: the user + system time of the
   agent and every program it ran (the ``wait4`` rusage of the agent's process, which
   holds that of the children it waited for).
2. **The simulator's two-call storm**: ``cli.simulate`` devices (tests/bench/storms.py), as
   many as the agent storm's and all booting at once, on the same product shape.
3. **The agent storm**: that many agent processes at once (each a shell forking curl,
   openssl, awk...), from a few loopback addresses (curl's ``interface``), under dash and
   BusyBox ash in turn; the registry checked against their state folders (one provisioned
   device each under the hardware ID it claimed, no other device, no hardware ID twice).

The agents run on the same 2 cores as the whole stack, so a storm of them pays for its
devices' CPU too, which the simulator's coroutines barely have: the ratios say what a
real device's client costs beside a simulated one, not what the server can do.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from cli.simulate import percentile
from tests.bench import storms
from tests.bench.cpu import per_device_ms, stack_cpu_s
from tests.support.agent import SHELLS, install_shells
from tests.support.agent_fleet import Run, fleet, registry_against_boards, run_boot
from tests.support.api import new_operator
from tests.support.sources import fresh_address

# The retry waits of the agent's defaults (2 s doubling to 300 s), but at most 10 s: a
# storm's 503s are retried as a device would, without one unlucky board waiting minutes.
SETTINGS = {"BACKOFF_BASE_SECONDS": "2", "BACKOFF_MAX_SECONDS": "10"}


async def _product_code(stack: storms.Stack) -> tuple[str, str]:
    """A fresh account's locked product of storms.SERVICES (four files with the bulk
    service's) with an auto registration: (account ID, code)."""
    async with aiohttp.ClientSession() as session:
        operator = await new_operator(session, stack.pool, stack.operator_url)
        product = await operator.call(
            "POST", "/v1/products", {"name": "bench-agents", "services": storms.SERVICES}, expect=201
        )
        await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
        registration = await operator.call(
            "POST", "/v1/auto-registrations", {"product_id": product["id"]}, expect=201
        )
    return operator.account_id, str(registration["bulk_identification_code"])


def _figures(runs: list[Run]) -> dict[str, Any]:
    seconds = [r.seconds for r in runs]
    cpu_ms = [r.cpu_s * 1000 for r in runs]
    return {
        "boots": len(runs),
        "errors": sum(1 for r in runs if r.code != 0),
        "p50_ms": round(percentile(seconds, 50) * 1000, 1),
        "p95_ms": round(percentile(seconds, 95) * 1000, 1),
        "cpu_ms_per_boot": round(statistics.mean(cpu_ms), 1),
        "cpu_ms_p95": round(percentile(cpu_ms, 95), 1),
    }


async def boots(stack: storms.Stack, count: int, folder: Path) -> dict[str, Any]:
    """``count`` boards under each shell, one boot at a time: the first boot's and the
    check-in's figures, by shell."""
    account_id, code = await _product_code(stack)
    out: dict[str, Any] = {}
    every = []
    for shell in SHELLS:
        boards = fleet(folder / shell, count, stack.device_url, code, shells=[shell], **SETTINGS)
        first = [await run_boot(agent) for agent in boards]
        second = [await run_boot(agent) for agent in boards]
        out[shell] = {"first_boot": _figures(first), "check_in": _figures(second)}
        every += boards
    check = await registry_against_boards(stack.pool, account_id, every)
    return {"shells": out, "registry_ok": check.ok, "registry_problems": check.problems[:10]}


async def idle_cpu_per_s(seconds: float = 5.0) -> dict[str, float]:
    """CPU seconds each process of the stack spends per second with no device calling
    (Kafka's and Postgres's housekeeping, the services' periodic jobs)."""
    before = stack_cpu_s()
    await asyncio.sleep(seconds)
    after = stack_cpu_s()
    return {name: (after[name] - before[name]) / seconds for name in before if name in after}


def without_idle(
    cpu_ms: dict[str, float], idle: dict[str, float], seconds: float, devices: int
) -> dict[str, float]:
    """``cpu_ms`` (per device, by process) less the idle work of a storm of ``seconds``:
    a storm 20 times longer would otherwise charge its devices 20 times the housekeeping."""
    out = {
        name: round(max(0.0, ms - idle.get(name, 0.0) * seconds * 1000 / max(devices, 1)), 3)
        for name, ms in cpu_ms.items()
        if name != "total"
    }
    out["total"] = round(sum(out.values()), 3)
    return out


async def agent_storm(stack: storms.Stack, agents: int, sources: int, folder: Path) -> dict[str, Any]:
    """``agents`` agent processes booting at once from ``sources`` loopback addresses."""
    account_id, code = await _product_code(stack)
    addresses = [fresh_address() for _ in range(sources)]
    boards = fleet(folder, agents, stack.device_url, code, shells=SHELLS, sources=addresses, **SETTINGS)
    await storms.checkpoint(stack.pool)
    async with aiohttp.ClientSession() as session:
        requests_before = await storms._http_requests(session, stack.intake_ops_url)
        stack_before = stack_cpu_s()
        started = time.monotonic()
        runs = await asyncio.gather(*(run_boot(agent, within_s=600) for agent in boards))
        duration = time.monotonic() - started
        agents_cpu = sum(r.cpu_s for r in runs)
        cpu = per_device_ms(stack_before | {"agents": 0.0}, stack_cpu_s() | {"agents": agents_cpu}, agents)
        requests = await storms._http_requests(session, stack.intake_ops_url) - requests_before
    check = await registry_against_boards(stack.pool, account_id, boards)
    recorded = await stack.pool.fetch(
        "SELECT DISTINCT created_source FROM devices WHERE account_id = $1", uuid.UUID(account_id)
    )
    provisioned = sum(1 for r in runs if r.code == 0)
    return {
        "agents": agents,
        "sources": sources,
        "seconds": round(duration, 2),
        "devices_per_s": round(provisioned / duration, 1) if duration else 0.0,
        **{f"p{p}_ms": round(percentile([r.seconds for r in runs], p) * 1000, 1) for p in (50, 95, 99)},
        "errors": agents - provisioned,
        "retries": sum(1 for r in runs for event in r.events if event.endswith(("_fault", "_throttled"))),
        "http_requests_per_device": round(requests / agents, 2),
        "cpu_ms_per_boot": round(agents_cpu * 1000 / agents, 1),
        # CPU ms one device cost each process of the stack, and the agents (their rusage).
        "cpu_ms_per_device": cpu,
        "registry_devices": check.devices,
        "provisioned_in_registry": check.provisioned,
        "registry_problems": check.problems[:10],
        "registry_ok": check.ok,
        "sources_recorded": len(recorded),
    }


async def run(stack: storms.Stack, *, agents: int, sources: int, boots_per_shell: int) -> dict[str, Any]:
    """Boots one at a time, the simulator's two-call storm and the agent storm, with the
    ratios of the storms (agent / simulator)."""
    install_shells()
    with tempfile.TemporaryDirectory(prefix="fleetreg-bench-agents-") as folder:
        one_at_a_time = await boots(stack, boots_per_shell, Path(folder) / "boots") if boots_per_shell else {}
        idle = await idle_cpu_per_s()
        simulator = await storms.storm(stack, agents, two_call=True, concurrency=agents)
        storm = await agent_storm(stack, agents, sources, Path(folder) / "storm")
    simulator["cpu_ms_per_device_less_idle"] = without_idle(
        simulator["cpu_ms_per_device"], idle, simulator["seconds"], agents
    )
    storm["cpu_ms_per_device_less_idle"] = without_idle(
        storm["cpu_ms_per_device"], idle, storm["seconds"], agents
    )
    sim_cpu, agent_cpu = simulator["cpu_ms_per_device_less_idle"], storm["cpu_ms_per_device_less_idle"]
    server = ("intake", "dedup", "provisioning", "kafka", "postgres")

    def server_ms(cpu: dict[str, float]) -> float:
        return sum(cpu.get(name, 0.0) for name in server)

    return {
        "idle_cpu_s_per_s": {name: round(v, 4) for name, v in idle.items()},
        "boots": one_at_a_time,
        "simulator_storm": simulator,
        "storm": storm,
        "ratios": {
            "devices_per_s": _ratio(storm["devices_per_s"], simulator["devices_per_s"]),
            "p50_ms": _ratio(storm["p50_ms"], simulator["p50_ms"]),
            "p99_ms": _ratio(storm["p99_ms"], simulator["p99_ms"]),
            # What one device costs its client: an agent's processes against the simulator's
            # share of the load generator.
            "client_cpu_ms_per_device": _ratio(agent_cpu["agents"], sim_cpu.get("load_generator", 0.0)),
            # What one device costs the intake, which answers every call, and the whole server
            # side (services, Kafka, Postgres): each less the stack's idle work over the storm.
            "intake_cpu_ms_per_device": _ratio(agent_cpu.get("intake"), sim_cpu.get("intake")),
            "server_cpu_ms_per_device": _ratio(server_ms(agent_cpu), server_ms(sim_cpu)),
        },
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summary(found: dict[str, Any]) -> dict[str, Any]:
    """summary.json's ``agent``: the headline figures."""
    storm, simulator = found["storm"], found["simulator_storm"]
    out: dict[str, Any] = {
        "storm": {
            k: storm[k]
            for k in ("agents", "sources", "devices_per_s", "p50_ms", "p99_ms", "errors", "cpu_ms_per_boot")
        }
        | {"registry_ok": storm["registry_ok"]},
        "simulator_storm": {
            k: simulator[k] for k in ("devices", "devices_per_s", "p50_ms", "p99_ms", "errors")
        },
        "ratios": found["ratios"],
    }
    if found["boots"]:
        out["boots"] = {
            shell: {phase: {k: v[k] for k in ("p50_ms", "cpu_ms_per_boot")} for phase, v in figures.items()}
            for shell, figures in found["boots"]["shells"].items()
        }
    return out
