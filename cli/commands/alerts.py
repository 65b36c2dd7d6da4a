"""``fleetreg alerts list``: the account's security alerts (bulk key guessing, hardware ID
squatting, a filled quota, two sources before ready)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import positive_int
from cli.client import operator_client
from cli.output import emit_json, print_table

KINDS = ["bulk_key_guessing", "hardware_id_squatting", "quota_filled", "two_sources_before_ready"]

PAGE = 1000


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    alerts = groups.add_parser("alerts", help="security alerts of the account")
    actions = alerts.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[common], help="list alerts, most recently seen first (all unless --limit)"
    )
    listing.add_argument("--kind", choices=KINDS)
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
            a["source"] or "-",
            {True: "yes", False: "no", None: "-"}[a["listed"]],
            f"{a['count']} in {a['window_seconds']} s" if a["window_seconds"] else str(a["count"]),
            a["product_id"],
        )
        for a in found
    ]
    print_table(rows, ["last seen", "kind", "hardware id", "source", "listed", "count", "product"])
    print(f"{len(found)} alert(s)")
    return 0
