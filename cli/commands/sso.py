"""``fleetreg sso show|set|remove``: the account's single sign-on (an admin's key)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from cli.client import operator_client
from cli.errors import CliError
from cli.output import emit_json, print_table

SECRET_ENV = "FLEETREG_SSO_CLIENT_SECRET"  # noqa: S105 (the variable's name, not a secret)


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    sso = groups.add_parser("sso", help="the account's single sign-on (an OpenID Connect provider)")
    actions = sso.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", parents=[common], help="the configuration (never the client secret)")
    show.set_defaults(run=show_sso)
    put = actions.add_parser("set", parents=[common], help="set the whole configuration")
    put.add_argument("--issuer", required=True, help="the provider's issuer, exactly as it names itself")
    put.add_argument("--client-id", required=True)
    put.add_argument(
        "--domain",
        action="append",
        required=True,
        dest="domains",
        help="an e-mail domain whose people sign in through it (repeat for more)",
    )
    put.add_argument("--groups-claim", default="groups", help="the ID token's claim of groups (groups)")
    put.add_argument(
        "--group-role",
        action="append",
        default=[],
        metavar="GROUP=ROLE",
        help="a provider group's role: viewer, operator or admin (repeat for more)",
    )
    put.add_argument("--default-role", help="the role of a person in no mapped group (default: refused)")
    put.add_argument("--required", action="store_true", help="everyone but owners must sign in through it")
    put.set_defaults(run=set_sso)
    remove = actions.add_parser("remove", parents=[common], help="remove it: people sign in with a password")
    remove.set_defaults(run=remove_sso)


async def show_sso(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        found = await client.get("/v1/sso")
    if args.json:
        emit_json(found)
    else:
        _print(found)
    return 0


async def set_sso(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "issuer": args.issuer,
        "client_id": args.client_id,
        "allowed_domains": args.domains,
        "groups_claim": args.groups_claim,
        "group_roles": _group_roles(args.group_role),
        "default_role": args.default_role,
        "required": args.required,
    }
    # The secret comes from the environment, never the command line (shell history, `ps`).
    secret = os.environ.get(SECRET_ENV)
    if secret:
        body["client_secret"] = secret
    async with operator_client() as client:
        found = await client.put("/v1/sso", body)
    if args.json:
        emit_json(found)
    else:
        _print(found)
        print(f"register this redirect URI at the provider: {found['redirect_uri']}")
    return 0


async def remove_sso(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        answer = await client.delete("/v1/sso")
    if args.json:
        emit_json(answer)
    else:
        print("single sign-on removed: people sign in with a password")
    return 0


def _group_roles(pairs: list[str]) -> dict[str, str]:
    roles = {}
    for pair in pairs:
        group, sep, role = pair.rpartition("=")
        if not sep or not group:
            raise CliError(f"--group-role takes GROUP=ROLE, not {pair!r}")
        roles[group] = role
    return roles


def _print(found: dict[str, Any]) -> None:
    groups = ", ".join(f"{g}={r}" for g, r in found["group_roles"].items()) or "-"
    rows = [
        ("issuer", found["issuer"]),
        ("client ID", found["client_id"]),
        ("client secret", found["client_secret"]),
        ("domains", ", ".join(found["allowed_domains"])),
        ("groups claim", found["groups_claim"]),
        ("group roles", groups),
        ("default role", found["default_role"] or "- (refused)"),
        ("required", "yes (but owners)" if found["required"] else "no"),
        ("redirect URI", found["redirect_uri"]),
    ]
    print_table(rows, ["setting", "value"])
