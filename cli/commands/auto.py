"""``fleetreg auto create|pause|resume|rotate-code``"""

from __future__ import annotations

import argparse
from typing import Any

from cli.client import operator_client
from cli.output import emit_json, print_table


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    auto = groups.add_parser("auto", help="auto registrations")
    actions = auto.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", parents=[common], help="start auto registration for a locked product"
    )
    create.add_argument("--product", required=True, metavar="ID")
    create.set_defaults(run=create_auto)
    for action, text in (
        ("pause", "refuse new devices until resumed"),
        ("resume", "accept devices again"),
        ("rotate-code", "replace the Bulk Identification Code; the old one stops working at once"),
    ):
        parser = actions.add_parser(action, parents=[common], help=text)
        parser.add_argument("id")
        parser.set_defaults(run=change_auto, change=action)
    listing = actions.add_parser("list", parents=[common], help="list auto registrations")
    listing.set_defaults(run=list_auto)


def _public(registration: dict[str, Any]) -> dict[str, Any]:
    return {k: registration[k] for k in ("id", "product_id", "status", "bulk_identification_code")}


def _show(registrations: list[dict[str, Any]]) -> None:
    rows = [(r["id"], r["product_id"], r["status"], r["bulk_identification_code"]) for r in registrations]
    print_table(rows, ["id", "product", "status", "bulk identification code"])


async def create_auto(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        registration = await client.post("/v1/auto-registrations", {"product_id": args.product})
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
