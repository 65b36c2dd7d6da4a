"""``fleetreg devices list|show|reset|disable|enable|delete``"""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import object_id
from cli.client import OperatorClient, operator_client
from cli.commands.audit import audit_rows
from cli.errors import CliError
from cli.output import confirm, emit_json, print_table

PAGE = 1000
BATCH = 1000  # device IDs per batch call (the API's limit)


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    devices = groups.add_parser("devices", help="the account's devices")
    actions = devices.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="list devices (all pages unless --limit)")
    listing.add_argument("--state", choices=["preregistered", "registered", "online", "offline", "disabled"])
    listing.add_argument("--hardware-id")
    listing.add_argument("--registration", metavar="ID", type=object_id)
    listing.add_argument("--limit", type=int, help="at most this many devices")
    listing.set_defaults(run=list_devices)
    show = actions.add_parser("show", parents=[common], help="one device with its history (audit trail)")
    show.add_argument("id", type=object_id)
    show.set_defaults(run=show_device)
    for action, text in (
        ("reset", "reset for re-provisioning: the next claim of its hardware ID takes it over"),
        ("disable", "refuse the device's registration calls from now on"),
        ("enable", "undo disable: the device may register and authenticate again"),
        (
            "delete",
            "decommission: remove the device (its hardware ID is free again; the audit trail keeps it)",
        ),
    ):
        parser = actions.add_parser(action, parents=[common], help=text)
        parser.add_argument("ids", nargs="+", metavar="ID", type=object_id)
        if action == "delete":
            parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
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
    print()
    print("operator actions (newest first):")
    print_table(audit_rows(device["audit_events"]), ["at", "action", "target", "key", "changes"])
    return 0


async def change_devices(args: argparse.Namespace) -> int:
    """Reset, disable, enable or delete the devices given, through the batch endpoint: one
    call per BATCH IDs (each call one transaction). Exits 1 if any ID was not found or
    refused. Deleting asks first, unless --yes."""
    ids = list(dict.fromkeys(i.strip().lower() for i in args.ids))  # the API refuses repeats
    if args.change == "delete":
        confirm(
            f"Delete {len(ids)} device(s)? Their hardware IDs become free; their secrets stop working.",
            assume_yes=args.yes,
        )
    results: list[dict[str, Any]] = []
    async with operator_client() as client:
        for start in range(0, len(ids), BATCH):
            answer = await client.post(
                f"/v1/devices/{args.change}", {"device_ids": ids[start : start + BATCH]}
            )
            results.extend(answer["results"])
    document = {
        "devices": [r["device"] for r in results if r["device"] is not None],
        "results": [{"id": r["id"], "outcome": r["outcome"]} for r in results],
    }
    failed = [r for r in results if r["outcome"] in ("not_found", "conflict")]
    if not args.json:
        print_table(
            [
                (
                    r["id"],
                    (r["device"] or {}).get("hardware_id", "-"),
                    "-" if r["outcome"] == "deleted" else (r["device"] or {}).get("state", "-"),
                    r["outcome"],
                )
                for r in results
            ],
            ["id", "hardware id", "state", "outcome"],
        )
    if failed:
        first = failed[0]
        why = (
            "not found in this account"
            if first["outcome"] == "not_found"
            else "disabled: cannot be reset (enable it first)"
        )
        raise CliError(
            f"{len(failed)} of {len(results)} device(s) not changed; e.g. {first['id']}: {why}",
            document if args.json else None,
        )
    if args.json:
        emit_json(document)
    return 0
