"""``fleetreg keys create|list|revoke``: the account's operator API keys."""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import object_id
from cli.client import operator_client
from cli.output import emit_json, print_table
from shared.domain.roles import KEY_ROLES


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    keys = groups.add_parser("keys", help="operator API keys of the account")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="create a key and print it once")
    create.add_argument("--label", required=True, help="what the key is for (up to 100 ASCII characters)")
    scope = create.add_mutually_exclusive_group()
    scope.add_argument(
        "--role",
        choices=[str(r) for r in KEY_ROLES],
        help="the key's role (docs/security.md, 'Roles'): at most your own; by default your key's",
    )
    scope.add_argument(
        "--read-only",
        action="store_true",
        help="the viewer role: the key can read but change nothing, and never sees a code "
        "(dashboards, monitoring)",
    )
    create.set_defaults(run=create_key)
    listing = actions.add_parser("list", parents=[common], help="every key, revoked ones included")
    listing.set_defaults(run=list_keys)
    revoke = actions.add_parser("revoke", parents=[common], help="revoke a key: its next call is refused")
    revoke.add_argument("id", type=object_id)
    revoke.set_defaults(run=revoke_key)


async def create_key(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        body: dict[str, Any] = {"label": args.label}
        if args.role is not None:
            body["role"] = args.role
        elif args.read_only:
            body["read_only"] = True
        issued = await client.post("/v1/api-keys", body)
    if args.json:
        emit_json(issued)
    else:
        print(f"API key {issued['id']} ({issued['label']}, {_role(issued)}) created")
        print(f"API key (shown once, store it now): {issued['api_key']}")
    return 0


def _role(key: dict[str, Any]) -> str:
    """A key's role as listed; a viewer key is the read-only key of old."""
    role = str(key.get("role") or ("viewer" if key["read_only"] else "admin"))
    return "viewer (read-only)" if role == "viewer" else role


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
            _role(k),
            k.get("user_email") or k.get("service_account") or "-",
            k["created_at"],
            k["revoked_at"] or "-",
        )
        for k in found
    ]
    print_table(rows, ["id", "key", "label", "role", "belongs to", "created", "revoked"])
    return 0


async def revoke_key(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        answer = await client.delete(f"/v1/api-keys/{args.id}")
    if args.json:
        emit_json(answer)
    else:
        print(f"API key {answer['revoked']} revoked")
    return 0
