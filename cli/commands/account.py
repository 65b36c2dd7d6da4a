"""``fleetreg account create``: the bootstrap of a new account, straight in the database;
``fleetreg account issuing-ca``: the account's CA of device certificates (the API).

The first API key of an account cannot come from the API (nothing could
authenticate the call), so this command writes it with DATABASE_URL and prints
the key once; the registry keeps only its digest.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.client import operator_client
from cli.config import ConfigError, load_endpoints, require
from cli.errors import CliError
from cli.output import emit_json
from shared.db import accounts
from shared.db.pool import DatabaseUnavailable, open_pool
from shared.errors import DomainError
from shared.settings import DatabaseSettings, Secret


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    account = groups.add_parser("account", help="accounts (bootstrap)")
    actions = account.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", parents=[common], help="create an account and print its first API key"
    )
    create.add_argument("--name", required=True)
    create.set_defaults(run=create_account)
    ca = actions.add_parser(
        "issuing-ca",
        parents=[common],
        help="the account's CA of device certificates (PEM; --json: subject, validity, CRL path)",
    )
    ca.set_defaults(run=show_issuing_ca)


async def show_issuing_ca(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        ca = await client.get("/v1/account/issuing-ca")
    if args.json:
        emit_json(ca)
    else:
        print(ca["certificate_pem"], end="")
    return 0


async def create_account(args: argparse.Namespace) -> int:
    try:
        url = require(load_endpoints(), "DATABASE_URL")
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    try:
        pool = await open_pool(DatabaseSettings(url=Secret(url), pool_min=1, pool_max=1))
    except DatabaseUnavailable as exc:
        raise CliError(str(exc)) from exc
    try:
        account, key = await accounts.create_account(pool, args.name)
    except DomainError as exc:
        raise CliError(exc.message) from exc
    finally:
        await pool.close()
    if args.json:
        emit_json({"id": account.id, "name": account.name, "api_key": key})
    else:
        print(f"account {account.id} ({account.name}) created")
        print(f"API key (shown once, store it now): {key}")
    return 0
