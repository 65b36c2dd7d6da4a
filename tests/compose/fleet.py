"""What the container tests do as devices and as an operator, through the published ports:
storms of simulated devices (the chaos run's loaded storm, with its timeline of failed and
successful calls) and the registry checked against what the devices were told."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from cli.simulate import FleetPlan, plan_fleet
from tests.chaos.load import StormResult, Timeline, boot_storm
from tests.compose.stack import ComposeStack
from tests.support.api import Operator

CONCURRENCY = 50


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
    operator: Operator, product_id: str, result: StormResult | set[str], settle_s: float = 60
) -> dict[str, Any]:
    """The product's registry against what its devices were told (as make chaos checks):
    every device told "provisioned" is one provisioned device, and there is no other
    device. ``ready`` is recorded asynchronously: the registry gets ``settle_s`` to catch up."""
    told = result if isinstance(result, set) else set(result.acknowledged.values())
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


class KeepBooting:
    """Waves of ``wave`` devices booting one after another until :meth:`stop`: devices are
    always in flight, however long the faults being tested take."""

    def __init__(self, stack: ComposeStack, code: str, wave: int = 100) -> None:
        self.timeline = Timeline()
        self.results: list[StormResult] = []
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(stack, code, wave))

    async def _run(self, stack: ComposeStack, code: str, wave: int) -> None:
        while not self._stop.is_set():
            plan = plan_fleet(code, wave, clone_rate=0.05, lost_response_rate=0.05)
            self.results.append(await storm(stack, plan, self.timeline))

    @property
    def in_flight(self) -> bool:
        return not self._task.done()

    async def stop(self) -> None:
        self._stop.set()
        await self._task

    @property
    def told(self) -> set[str]:
        return {d for r in self.results for d in r.acknowledged.values()}

    @property
    def devices(self) -> int:
        return sum(len(r.results) for r in self.results)

    @property
    def all(self) -> StormResult:
        """Every wave's devices as one storm (for its retry and failure counts)."""
        return StormResult(
            results=[d for r in self.results for d in r.results],
            duration_s=sum(r.duration_s for r in self.results),
        )

    @property
    def failed(self) -> dict[str, int]:
        return self.all.failed

    @property
    def retries(self) -> dict[str, int]:
        return self.all.retries
