"""Two instances of each pipeline service (issue 12): a second deduplication,
provisioning and ingestion process joins the running stack's consumer groups, a storm
boots and two bulk publishes run at once; each instance's share of the Kafka records is
read from its own ``fleetreg_records_total`` counter.

What can spread: records are keyed (registration requests by hardware ID stem, bulk
publish steps by bulk registration ID), so work spreads by partition. One bulk publish is
one key: it runs on one instance (its chunks are ordered and serialised by the
registration's row lock); two publishes spread only when their keys fall on partitions
owned by different instances (with two instances, about half the time for one pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from cli import wait_ready
from cli.config import parse_env_file
from tests.bench import storms
from tests.bench.bulk import _chunks, make_csv
from tests.support.system import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "dedup": "FLEETREG_DEDUP_PORT",
    "provisioning": "FLEETREG_PROVISIONING_PORT",
    "ingestion": "FLEETREG_INGESTION_PORT",
}
DEFAULT_PORTS = {"dedup": 18082, "provisioning": 18083, "ingestion": 18084}


def _first_url(service: str) -> str:
    return f"http://127.0.0.1:{os.environ.get(SERVICES[service], DEFAULT_PORTS[service])}"


def _first_ops_url(service: str) -> str:
    """The stack's first instance's operations listener (its metrics)."""
    return f"http://127.0.0.1:{wait_ready.ops_port(service)}"


async def records(session: aiohttp.ClientSession, url: str, service: str) -> float:
    """The Kafka records one instance of ``service`` has handled so far."""
    return await storms.counter_total(
        session, url, "fleetreg_records", lambda labels: labels.get("service") == service
    )


@contextlib.asynccontextmanager
async def second_instances() -> AsyncIterator[dict[str, str]]:
    """A second instance of each pipeline service, as the stack runs the first (same
    registry, broker, secret key and consumer groups); stopped on exit. Yields each one's
    URL by service name and its operations URL (metrics) by ``<service>-ops``. Its log is
    var/log/e2e/<service>-2.log."""
    var = ROOT / "var"
    env = {
        **parse_env_file(var / "infra.env"),
        "FLEETREG_SECRET_KEY": (var / "secret_key").read_text().strip(),
    }
    started = [ServiceProcess(service, f"{service}-2", env) for service in SERVICES]
    try:
        for process in started:
            process.start()
        for process in started:
            await process.wait_ready()
        await asyncio.sleep(8)  # the consumer groups rebalance onto both instances
        yield {process.service: process.url for process in started} | {
            f"{process.service}-ops": process.ops_url for process in started
        }
    finally:
        for process in started:
            await asyncio.to_thread(process.stop)


async def _shares(session: aiohttp.ClientSession, urls: dict[str, str]) -> dict[str, list[float]]:
    return {
        service: [
            await records(session, _first_ops_url(service), service),
            await records(session, urls[f"{service}-ops"], service),
        ]
        for service in SERVICES
    }


async def _bulk_pair(stack: storms.Stack, bulk_urls: list[str], rows: int) -> list[dict[str, Any]]:
    """Two uploads (one to each ingestion instance), then both published at once."""
    async with aiohttp.ClientSession() as session:
        from tests.support.api import new_operator

        operator = await new_operator(session, stack.pool, stack.operator_url)
        headers = {"Authorization": f"Bearer {operator.api_key}"}
        uploaded = []
        for n, url in enumerate(bulk_urls):
            product = await operator.call(
                "POST", "/v1/products", {"name": f"bench-bulk-{n}", "services": storms.SERVICES}, expect=201
            )
            await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
            path = make_csv(rows)
            async with session.post(
                f"{url}/v1/bulk-registrations",
                params={"product_id": product["id"]},
                data=_chunks(path),
                headers={**headers, "Content-Type": "text/csv"},
            ) as response:
                body = await response.json()
                if response.status != 201:
                    raise RuntimeError(f"bulk upload failed: {response.status} {body}")
                uploaded.append((url, body["id"]))
        for url, registration in uploaded:
            async with session.post(
                f"{url}/v1/bulk-registrations/{registration}/publish", headers=headers
            ) as response:
                if response.status >= 300:
                    raise RuntimeError(f"bulk publish failed: {response.status} {await response.text()}")
        states = []
        give_up = time.monotonic() + 900
        for url, registration in uploaded:
            while True:
                if time.monotonic() > give_up:
                    raise RuntimeError(f"bulk registration {registration} not published within 15 minutes")
                async with session.get(
                    f"{url}/v1/bulk-registrations/{registration}", headers=headers
                ) as response:
                    state = await response.json()
                if state["status"] == "preregistered":
                    states.append({"id": registration, "published": state["published"]})
                    break
                await asyncio.sleep(0.5)
        return states


async def run(stack: storms.Stack, devices: int, bulk_rows: int) -> dict[str, Any]:
    """The storm and the two publishes on two instances; each instance's share of the records."""
    async with aiohttp.ClientSession() as session, second_instances() as urls:
        before = await _shares(session, urls)
        storm = await storms.storm(stack, devices, two_call=True)
        middle = await _shares(session, urls)
        first_bulk = os.environ.get("FLEETREG_BULK_URL") or _first_url("ingestion")
        published = await _bulk_pair(stack, [first_bulk, urls["ingestion"]], bulk_rows)
        after = await _shares(session, urls)
    spread: dict[str, Any] = {}
    for service in SERVICES:
        start, end = (before, middle) if service != "ingestion" else (middle, after)
        counts = [round(b - a) for a, b in zip(start[service], end[service], strict=True)]
        spread[service] = {
            "records_per_instance": counts,
            "instances_working": sum(1 for c in counts if c > 0),
        }
    return {
        "storm": {
            k: storm[k]
            for k in ("devices", "devices_per_s", "errors", "lost", "duplicated", "hardware_ids_unique")
        },
        "bulk_publishes": published,
        "spread": spread,
    }
