"""``fleetreg audit list``: the operator audit trail, newest first."""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import object_id, positive_int
from cli.client import operator_client
from cli.output import emit_json, print_table
from shared.domain.accounts import actor_text

PAGE = 1000


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    audit = groups.add_parser("audit", help="the operator audit trail: who changed what, when")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="operator actions, newest first")
    listing.add_argument("--action", dest="audit_action", metavar="ACTION", help="e.g. device.disabled")
    listing.add_argument("--since", metavar="TIME", help="ISO 8601 time, inclusive (UTC without an offset)")
    listing.add_argument("--until", metavar="TIME", help="ISO 8601 time, exclusive")
    listing.add_argument("--target", metavar="ID", help="the changed object's ID (device, product, key, ...)")
    listing.add_argument("--key", metavar="ID", type=object_id, help="actions made with this API key")
    listing.add_argument("--limit", type=positive_int, default=100, help="at most this many (default 100)")
    listing.set_defaults(run=list_events)


async def list_events(args: argparse.Namespace) -> int:
    filters = {
        name: value
        for name, value in (
            ("action", args.audit_action),
            ("since", args.since),
            ("until", args.until),
            ("target_id", args.target),
            ("api_key_id", args.key),
        )
        if value
    }
    found: list[dict[str, Any]] = []
    before: tuple[str, str] | None = None
    async with operator_client() as client:
        while len(found) < args.limit:
            params = {**filters, "limit": str(min(PAGE, args.limit - len(found)))}
            if before:
                params["before"], params["before_id"] = before
            page = await client.get("/v1/audit-events", params)
            found.extend(page["audit_events"])
            before = (page["next_before"], page["next_before_id"]) if page["next_before"] else None
            if before is None:
                break
    if args.json:
        emit_json({"audit_events": found})
        return 0
    print_table(audit_rows(found), ["at", "action", "target", "by", "changes"])
    print(f"{len(found)} event(s)")
    return 0


def audit_rows(events: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Table rows of audit events: who by ``shared.domain.accounts.actor_text`` (the person or
    service account, the role, the key by its label or the console session)."""
    return [
        (
            e["at"],
            e["action"],
            f"{e['target_type']} {e['target_id']}",
            actor_text(e),
            changes_text(e["changes"]),
        )
        for e in events
    ]


def changes_text(changes: dict[str, Any]) -> str:
    """``field: old -> new, field: value`` on one line."""
    parts = []
    for name, value in changes.items():
        if isinstance(value, dict) and set(value) == {"from", "to"}:
            parts.append(f"{name}: {value['from']} -> {value['to']}")
        else:
            parts.append(f"{name}: {value}")
    return ", ".join(parts)
