"""``fleetreg webhooks create|list|delete|deliveries``: the account's webhooks (Standard
Webhooks: signed HTTP POSTs of registry events; docs/operations.md, "Webhooks")."""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import object_id, positive_int
from cli.client import operator_client
from cli.output import confirm, emit_json, print_table
from shared.domain.webhooks import EVENT_TYPES

PAGE = 100


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    webhooks = groups.add_parser("webhooks", help="HTTP endpoints that get the account's registry events")
    actions = webhooks.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser(
        "create", parents=[common], help="add a webhook; prints its signing secret, once"
    )
    create.add_argument("--url", required=True, help="http(s) URL the events are POSTed to")
    create.add_argument(
        "--event",
        dest="events",
        action="append",
        required=True,
        choices=EVENT_TYPES,
        metavar="EVENT",
        help=f"an event to send (repeat for several): {', '.join(EVENT_TYPES)}",
    )
    create.set_defaults(run=create_webhook)

    listing = actions.add_parser("list", parents=[common], help="list the account's webhooks")
    listing.set_defaults(run=list_webhooks)

    delete = actions.add_parser("delete", parents=[common], help="delete a webhook and its deliveries")
    delete.add_argument("webhook_id", type=object_id, metavar="ID")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(run=delete_webhook)

    enable = actions.add_parser(
        "enable",
        parents=[common],
        help="enable a webhook the notifier disabled (410 Gone, or failing for days)",
    )
    enable.add_argument("webhook_id", type=object_id, metavar="ID")
    enable.set_defaults(run=enable_webhook)

    deliveries = actions.add_parser(
        "deliveries",
        parents=[common],
        help="a webhook's recent deliveries, newest first, with their attempts",
    )
    deliveries.add_argument("webhook_id", type=object_id, metavar="ID")
    deliveries.add_argument("--limit", type=positive_int, default=20, help="at most this many (default 20)")
    deliveries.set_defaults(run=list_deliveries)


async def create_webhook(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        created = await client.post("/v1/webhooks", {"url": args.url, "events": args.events})
    if args.json:
        emit_json(created)
        return 0
    print(f"webhook {created['id']} -> {created['url']}")
    print(f"events: {', '.join(created['events'])}")
    print(f"signing secret: {created['secret']}")
    print("shown once: store it now (verify each request's webhook-signature with it)")
    return 0


async def list_webhooks(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        found = (await client.get("/v1/webhooks"))["webhooks"]
    if args.json:
        emit_json({"webhooks": found})
        return 0
    print_table(
        [(w["id"], w["url"], ", ".join(w["events"]), w["created_at"], _state(w)) for w in found],
        ["id", "url", "events", "created", "state"],
    )
    print(f"{len(found)} webhook(s)")
    return 0


def _state(webhook: dict[str, Any]) -> str:
    if not webhook.get("enabled", True):
        return f"disabled {webhook.get('disabled_at')}: {webhook.get('disabled_reason')}"
    if webhook.get("failing_since"):
        return f"failing since {webhook['failing_since']}"
    return "enabled"


async def enable_webhook(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        answer = await client.post(f"/v1/webhooks/{args.webhook_id}/enable", {})
    if args.json:
        emit_json(answer)
    else:
        print(f"enabled webhook {args.webhook_id}: new events are delivered to it")
    return 0


async def delete_webhook(args: argparse.Namespace) -> int:
    confirm(
        f"Delete webhook {args.webhook_id} with its deliveries? Events are no longer sent to it.",
        assume_yes=args.yes,
    )
    async with operator_client() as client:
        answer = await client.call("DELETE", f"/v1/webhooks/{args.webhook_id}")
    if args.json:
        emit_json(answer)
    else:
        print(f"deleted webhook {args.webhook_id}")
    return 0


async def list_deliveries(args: argparse.Namespace) -> int:
    found: list[dict[str, Any]] = []
    before: tuple[str, str] | None = None
    async with operator_client() as client:
        while len(found) < args.limit:
            params = {"limit": str(min(PAGE, args.limit - len(found)))}
            if before:
                params["before"], params["before_id"] = before
            page = await client.get(f"/v1/webhooks/{args.webhook_id}/deliveries", params)
            found.extend(page["deliveries"])
            before = (page["next_before"], page["next_before_id"]) if page["next_before"] else None
            if before is None:
                break
    if args.json:
        emit_json({"deliveries": found})
        return 0
    rows = []
    for d in found:
        last = d["attempt_log"][-1] if d["attempt_log"] else None
        answer = "" if last is None else str(last["status_code"] or last["error"])
        rows.append(
            (
                d["created_at"],
                d["event_type"],
                d["status"],
                d["attempts"],
                answer[:60],
                "" if last is None else f"{last['latency_ms']:.0f} ms",
                d["next_attempt_at"] or "",
            )
        )
    print_table(rows, ["queued", "event", "status", "attempts", "last answer", "latency", "next attempt"])
    print(f"{len(found)} deliver{'y' if len(found) == 1 else 'ies'}")
    return 0
