"""``fleetreg auto create|update|pause|resume|rotate-code|list``"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.arguments import object_id
from cli.client import operator_client
from cli.output import emit_json, print_table


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    auto = groups.add_parser("auto", help="auto registrations")
    actions = auto.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", parents=[common], help="start auto registration for a locked product"
    )
    create.add_argument("--product", required=True, metavar="ID", type=object_id)
    create.add_argument(
        "--max-devices",
        type=int,
        metavar="N",
        help="at most N devices (new devices and clones); none by default",
    )
    create.set_defaults(run=create_auto)
    update = actions.add_parser("update", parents=[common], help="set or clear the device quota")
    update.add_argument("id", type=object_id)
    quota = update.add_mutually_exclusive_group(required=True)
    quota.add_argument("--max-devices", type=int, metavar="N", help="at most N devices from now on")
    quota.add_argument("--no-max-devices", action="store_true", help="remove the device quota")
    update.set_defaults(run=update_auto)
    for action, text in (
        ("pause", "refuse new devices until resumed"),
        ("resume", "accept devices again"),
        ("rotate-code", "replace the Bulk Identification Code; the old one stops working at once"),
    ):
        parser = actions.add_parser(action, parents=[common], help=text)
        parser.add_argument("id", type=object_id)
        parser.set_defaults(run=change_auto, change=action)
    listing = actions.add_parser("list", parents=[common], help="list auto registrations")
    listing.set_defaults(run=list_auto)


PUBLIC = ("id", "product_id", "status", "bulk_identification_code", "max_devices", "device_count")


def _public(registration: dict[str, Any]) -> dict[str, Any]:
    return {k: registration[k] for k in PUBLIC}


def _show(registrations: list[dict[str, Any]]) -> None:
    rows = [
        (
            r["id"],
            r["product_id"],
            r["status"],
            r["bulk_identification_code"],
            "-" if r["max_devices"] is None else r["max_devices"],
            r["device_count"],
        )
        for r in registrations
    ]
    print_table(rows, ["id", "product", "status", "bulk identification code", "max devices", "devices"])


async def create_auto(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"product_id": args.product}
    if args.max_devices is not None:
        body["max_devices"] = args.max_devices
    async with operator_client() as client:
        registration = await client.post("/v1/auto-registrations", body)
    emit_json(_public(registration)) if args.json else _show([registration])
    if args.max_devices is None:
        print(
            "fleetreg: note: no --max-devices: anyone holding the code (every factory image) can "
            "register any number of devices; set one with 'fleetreg auto update ID --max-devices N'",
            file=sys.stderr,
        )
    return 0


async def update_auto(args: argparse.Namespace) -> int:
    body = {"max_devices": None if args.no_max_devices else args.max_devices}
    async with operator_client() as client:
        registration = await client.call("PATCH", f"/v1/auto-registrations/{args.id}", body=body)
    emit_json(_public(registration)) if args.json else _show([registration])
    return 0


async def change_auto(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        registration = await client.post(f"/v1/auto-registrations/{args.id}/{args.change}")
    emit_json(_public(registration)) if args.json else _show([registration])
    return 0


async def list_auto(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        registrations = (await client.get("/v1/auto-registrations"))["auto_registrations"]
    if args.json:
        emit_json({"auto_registrations": [_public(r) for r in registrations]})
    else:
        _show(registrations)
    return 0
