"""``fleetreg account create``: the bootstrap of a new account, straight in the database;
``fleetreg account issuing-ca``: the account's CA of device certificates (the API); with
``--upload CERT_PEM_FILE --key KEY_PEM_FILE``, an intermediate of the operator's own PKI
becomes it (docs/device-identity.md, "Bringing your own intermediate").

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
from cli.output import emit_json, print_table
from shared.db import accounts
from shared.db.pool import DatabaseUnavailable, open_pool
from shared.domain.uploaded_ca import MAX_TEXT_CHARS as MAX_UPLOAD_CHARS
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
        help="the account's CA of device certificates (PEM; --json: subject, validity, CRL path); "
        "--upload makes an intermediate of yours that CA",
    )
    ca.add_argument(
        "--upload",
        metavar="CERT_PEM_FILE",
        help="the intermediate's certificate, then its issuers (PEM): replaces the account's issuing CA "
        "(only while no unexpired device certificate is out)",
    )
    ca.add_argument(
        "--key", metavar="KEY_PEM_FILE", help="with --upload: the intermediate's private key (PEM)"
    )
    ca.set_defaults(run=show_issuing_ca)


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read(MAX_UPLOAD_CHARS + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the {what} {path}: {exc.__class__.__name__}") from exc


async def show_issuing_ca(args: argparse.Namespace) -> int:
    if (args.upload is None) != (args.key is None):
        raise CliError("--upload CERT_PEM_FILE and --key KEY_PEM_FILE go together")
    async with operator_client() as client:
        if args.upload is None:
            ca = await client.get("/v1/account/issuing-ca")
        else:
            body = {
                "certificate": _read(args.upload, "certificate file"),
                "private_key": _read(args.key, "key file"),
            }
            ca = await client.put("/v1/account/issuing-ca", body)
    if args.json:
        emit_json(ca)
    elif args.upload is None:
        print(ca["certificate_pem"], end="")
    else:
        rows = [
            ("subject", ca["subject"]),
            ("fingerprint_sha256", ca["fingerprint_sha256"]),
            ("not_after", ca["not_after"]),
            ("uploaded_at", ca["uploaded_at"]),
            ("crl_path", ca["crl_path"]),
        ]
        print_table(rows, ("FIELD", "VALUE"))
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
