"""``fleetreg demo``: the main job on a fresh machine, shown end to end.

Creates a product (ssh and web), locks it, starts auto registration, boots a
fleet of simulated devices (some of them clones of one image, some retrying a
lost answer) against the running system, and prints what happened.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from cli.client import operator_client
from cli.commands.devices import fetch_devices
from cli.commands.simulate import print_summary, progress_bar
from cli.config import load_endpoints, require
from cli.errors import CliError
from cli.output import emit_json, print_table
from cli.simulate import plan_fleet, run_fleet


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    parser = groups.add_parser("demo", parents=[common], help="run the demo against the running system")
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices to boot (1000)")
    parser.add_argument("--clone-rate", type=float, default=0.05, help="share of cloned images (0.05)")
    parser.add_argument("--concurrency", type=int, default=100, help="devices booting at once (100)")
    parser.set_defaults(run=run)


def _step(text: str) -> None:
    print(f"\n== {text}")


async def run(args: argparse.Namespace) -> int:
    device_url = require(load_endpoints(), "FLEETREG_DEVICE_URL")
    async with operator_client() as client:
        _step("1. Define a product: the services every device will get")
        product = await client.post(
            "/v1/products",
            {
                "name": f"demo-{time.strftime('%Y%m%d-%H%M%S')}",
                "services": [{"type": "ssh", "port": 22}, {"type": "web", "port": 80}],
            },
        )
        print(
            f"product {product['name']}: services "
            + ", ".join(f"{s['name']} ({s['type']}:{s['port']})" for s in product["services"])
        )
        _step("2. Lock it: this creates its Bulk Identification Code, baked into the factory image")
        product = await client.post(f"/v1/products/{product['id']}/lock")
        code = product["bulk_identification_code"]
        print(f"bulk identification code {code[:8]}-****-****-****-************ (kept secret)")
        _step("3. Start auto registration: any device presenting the code registers itself")
        registration = await client.post("/v1/auto-registrations", {"product_id": product["id"]})
        print(f"auto registration {registration['id']} is {registration['status']}")

        _step(f"4. Power on {args.devices} devices at once ({args.clone_rate:.0%} are clones of one SD card)")
        plan = plan_fleet(code, args.devices, args.clone_rate, seed=None)
        summary = await run_fleet(plan, device_url, args.concurrency, progress_bar(args.devices))
        print_summary(summary)

        _step("5. The registry: clones were given indexed hardware IDs")
        devices = await fetch_devices(client, {"registration_id": registration["id"]}, None)
        clones = sorted(
            (d for d in devices if d["hardware_id"] != d["claimed_hardware_id"]),
            key=lambda d: d["hardware_id"],
        )
        rows = [(d["claimed_hardware_id"], d["hardware_id"], d["name"], d["state"]) for d in clones[:5]]
        print_table(rows, ["claimed hardware id", "assigned", "name", "state"])
        states: dict[str, int] = {}
        for device in devices:
            states[device["state"]] = states.get(device["state"], 0) + 1

    _step("Summary")
    print(
        f"{len(devices)} devices registered, {summary.provisioned} provisioned and confirmed, "
        f"{len(clones)} clones detected and renamed, {summary.errors} errors."
    )
    print(
        f"{summary.throughput_per_s} devices/s end to end; latency p50 {summary.latency_ms['p50']} ms, "
        f"p99 {summary.latency_ms['p99']} ms."
    )
    print("Device states: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    print("Explore: .venv/bin/fleetreg devices list --state online | fleetreg devices show ID | make down")
    if args.json:
        emit_json({"product": product, "auto_registration": registration, "simulation": summary.to_dict()})
    if not summary.ok or len(devices) != args.devices:
        raise CliError(f"the demo saw {summary.errors} device error(s)")
    return 0
