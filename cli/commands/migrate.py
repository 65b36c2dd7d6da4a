"""``fleetreg migrate``: apply the registry's SQL migrations (idempotent)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.config import ConfigError, load_endpoints, require
from cli.errors import CliError
from cli.output import emit_json
from shared.db.migrations import MigrationError, migrate
from shared.db.pool import DatabaseUnavailable, single_connection


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    parser = groups.add_parser(
        "migrate", parents=[common], help="apply the database migrations not yet applied"
    )
    parser.add_argument("--database-url", help="Postgres URL (default: DATABASE_URL)")
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    try:
        url = args.database_url or require(load_endpoints(), "DATABASE_URL")
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    try:
        async with single_connection(url) as conn:
            applied = await migrate(conn)
    except (DatabaseUnavailable, MigrationError) as exc:
        raise CliError(str(exc)) from exc
    names = [f"{m.version:04d}_{m.name}" for m in applied]
    if args.json:
        emit_json({"applied": names})
    elif names:
        print("applied: " + ", ".join(names))
    else:
        print("database is up to date")
    return 0
