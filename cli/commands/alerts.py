"""``fleetreg alerts list``: the account's security alerts (e.g. bulk key guessing)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import positive_int
from cli.client import operator_client
from cli.output import emit_json, print_table

PAGE = 1000


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    alerts = groups.add_parser("alerts", help="security alerts of the account")
    actions = alerts.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[common], help="list alerts, most recently seen first (all unless --limit)"
    )
    listing.add_argument("--kind", choices=["bulk_key_guessing"])
    listing.add_argument("--limit", type=positive_int, help="at most this many alerts")
    listing.set_defaults(run=list_alerts)


async def list_alerts(args: argparse.Namespace) -> int:
    found: list[dict[str, Any]] = []
    before: tuple[str, str] | None = None
    async with operator_client() as client:
        while args.limit is None or len(found) < args.limit:
            size = PAGE if args.limit is None else min(PAGE, args.limit - len(found))
            params = {"limit": str(size), **({"kind": args.kind} if args.kind else {})}
            if before:
                params["before"], params["before_id"] = before
            page = await client.get("/v1/security-alerts", params)
            found.extend(page["security_alerts"])
            before = (page["next_before"], page["next_before_id"]) if page["next_before"] else None
            if before is None:
                break
    if args.json:
        emit_json({"security_alerts": found})
        return 0
    rows = [
        (
            a["last_seen_at"],
            a["kind"],
            a["hardware_id"],
            "yes" if a["listed"] else "no",
            f"{a['wrong_keys']} in {a['window_seconds']} s",
            a["product_id"],
        )
        for a in found
    ]
    print_table(rows, ["last seen", "kind", "hardware id", "listed", "wrong keys", "product"])
    print(f"{len(found)} alert(s)")
    return 0
