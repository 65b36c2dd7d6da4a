"""``fleetreg keys create|list|revoke``: the account's operator API keys."""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import object_id
from cli.client import operator_client
from cli.output import emit_json, print_table


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    keys = groups.add_parser("keys", help="operator API keys of the account")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="create a key and print it once")
    create.add_argument("--label", required=True, help="what the key is for (up to 100 ASCII characters)")
    create.add_argument(
        "--read-only",
        action="store_true",
        help="the key can read but change nothing, and never sees a code (dashboards, monitoring)",
    )
    create.set_defaults(run=create_key)
    listing = actions.add_parser("list", parents=[common], help="every key, revoked ones included")
    listing.set_defaults(run=list_keys)
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key: its next call is refused")
    revoke.add_argument("id", type=object_id)
    revoke.set_defaults(run=revoke_key)


async def create_key(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        issued = await client.post("/v1/api-keys", {"label": args.label, "read_only": args.read_only})
    if args.json:
        emit_json(issued)
    else:
        scope = "read-only" if issued["read_only"] else "full"
        print(f"API key {issued['id']} ({issued['label']}, {scope}) created")
        print(f"API key (shown once, store it now): {issued['api_key']}")
    return 0


async def list_keys(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        found = (await client.get("/v1/api-keys"))["api_keys"]
    if args.json:
        emit_json({"api_keys": found})
        return 0
    rows = [
        (
            k["id"],
            k["prefix"] + "...",
            k["label"],
            "read-only" if k["read_only"] else "full",
            k["created_at"],
            k["revoked_at"] or "-",
        )
        for k in found
    ]
    print_table(rows, ["id", "key", "label", "scope", "created", "revoked"])
    return 0


async def revoke_key(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        answer = await client.delete(f"/v1/api-keys/{args.id}")
    if args.json:
        emit_json(answer)
    else:
        print(f"API key {answer['revoked']} revoked")
    return 0
