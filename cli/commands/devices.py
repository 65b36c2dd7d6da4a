"""``fleetreg devices list|show|reset|disable``"""

from __future__ import annotations

import argparse
from typing import Any

from cli.client import OperatorClient, operator_client
from cli.output import emit_json, print_table

PAGE = 1000


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    devices = groups.add_parser("devices", help="the account's devices")
    actions = devices.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="list devices (all pages unless --limit)")
    listing.add_argument("--state", choices=["preregistered", "registered", "online", "offline", "disabled"])
    listing.add_argument("--hardware-id")
    listing.add_argument("--registration", metavar="ID")
    listing.add_argument("--limit", type=int, help="at most this many devices")
    listing.set_defaults(run=list_devices)
    show = actions.add_parser("show", parents=[common], help="one device with its history (audit trail)")
    show.add_argument("id")
    show.set_defaults(run=show_device)
    for action, text in (
        ("reset", "reset for re-provisioning: the next claim of its hardware ID takes it over"),
        ("disable", "refuse the device's registration calls from now on"),
    ):
        parser = actions.add_parser(action, parents=[common], help=text)
        parser.add_argument("ids", nargs="+", metavar="ID")
        parser.set_defaults(run=change_devices, change=action)


async def fetch_devices(
    client: OperatorClient, filters: dict[str, str], limit: int | None
) -> list[dict[str, Any]]:
    """Every matching device, paging through the API, or the first ``limit``."""
    found: list[dict[str, Any]] = []
    after: str | None = None
    while limit is None or len(found) < limit:
        page_size = PAGE if limit is None else min(PAGE, limit - len(found))
        params = {**filters, "limit": str(page_size), **({"after": after} if after else {})}
        page = await client.get("/v1/devices", params)
        found.extend(page["devices"])
        after = page["next_after"]
        if after is None:
            break
    return found


async def list_devices(args: argparse.Namespace) -> int:
    filters = {
        name: value
        for name, value in (
            ("state", args.state),
            ("hardware_id", args.hardware_id),
            ("registration_id", args.registration),
        )
        if value
    }
    async with operator_client() as client:
        devices = await fetch_devices(client, filters, args.limit)
    if args.json:
        emit_json({"devices": devices})
        return 0
    rows = [(d["id"], d["hardware_id"], d["name"], d["state"], d["product_id"]) for d in devices]
    print_table(rows, ["id", "hardware id", "name", "state", "product"])
    print(f"{len(devices)} device(s)")
    return 0


async def show_device(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        device = await client.get(f"/v1/devices/{args.id}")
    if args.json:
        emit_json(device)
        return 0
    for key in (
        "id",
        "hardware_id",
        "claimed_hardware_id",
        "name",
        "state",
        "product_id",
        "registration_id",
        "registered_at",
        "provisioned_at",
        "last_seen_at",
    ):
        print(f"{key:20} {device.get(key) or '-'}")
    print()
    rows = [(h["at"], h["kind"], h.get("decision", ""), h.get("reason", "")) for h in device["history"]]
    print_table(rows, ["at", "event", "decision", "reason"])
    return 0


async def change_devices(args: argparse.Namespace) -> int:
    changed = []
    async with operator_client() as client:
        for device_id in args.ids:
            changed.append(await client.post(f"/v1/devices/{device_id}/{args.change}"))
    if args.json:
        emit_json({"devices": changed})
    else:
        print_table(
            [(d["id"], d["hardware_id"], d["state"]) for d in changed], ["id", "hardware id", "state"]
        )
    return 0
