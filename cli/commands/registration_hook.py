"""``fleetreg auto hook-test|hook-calls`` and ``fleetreg bulk hook-test|hook-calls``: try a
registration's hook with a sample request, and list its recent calls
(docs/registration-hook.md, "Operator surface"), one way for both kinds: an auto
registration's on the operator API, a bulk registration's on the bulk API. Setting the
hook is ``fleetreg auto|bulk ... --hook-url ...`` (cli/commands/auto.py, cli/commands/bulk.py)."""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import object_id, positive_int
from cli.client import operator_client
from cli.output import emit_json, print_table

# Where each kind's registrations are: the API's variable in the endpoints file and the path.
AUTO = ("FLEETREG_ADMIN_URL", "/v1/auto-registrations")
BULK = ("FLEETREG_BULK_URL", "/v1/bulk-registrations")


def register(actions: Any, common: argparse.ArgumentParser, api: tuple[str, str]) -> None:
    """Add ``hook-test`` and ``hook-calls`` to a kind's actions; ``api``: AUTO or BULK."""
    test = actions.add_parser(
        "hook-test",
        parents=[common],
        help="call the registration hook once with a sample request (a signed call; nothing is "
        "registered) and print its answer or why it failed",
    )
    test.add_argument("id", type=object_id)
    test.add_argument(
        "--hardware-id", metavar="H", help="the hardware ID the sample asks about (default SAMPLE-0001)"
    )
    test.set_defaults(run=test_hook, hook_api=api)
    calls = actions.add_parser(
        "hook-calls", parents=[common], help="the registration hook's recent calls, newest first"
    )
    calls.add_argument("id", type=object_id)
    calls.add_argument(
        "--limit", type=positive_int, default=50, help="at most this many (default 50, max 500)"
    )
    calls.set_defaults(run=list_hook_calls, hook_api=api)


async def test_hook(args: argparse.Namespace) -> int:
    """0 when the hook answered (allow or deny), 1 when the call failed: a script can tell
    a hook that works from one that does not."""
    body = {"hardware_id": args.hardware_id} if args.hardware_id else None
    url_variable, collection = args.hook_api
    async with operator_client(url_variable) as client:
        tested = await client.post(f"{collection}/{args.id}/hook/test", body)
    answered = tested["outcome"] in ("allow", "deny")
    if args.json:
        emit_json(tested)
        return 0 if answered else 1
    answer = tested["answer"] or {}
    rows: list[tuple[str, Any]] = [
        ("hardware id", tested["hardware_id"]),
        ("outcome", tested["outcome"]),
        ("http status", "-" if tested["http_status"] is None else tested["http_status"]),
        ("latency", f"{tested['latency_ms']:.0f} ms"),
    ]
    if answered:
        data = ", ".join(f"{k}={v}" for k, v in answer.get("data", {}).items())
        rows += [
            (k.replace("_", " "), answer.get(k) or "-")
            for k in ("reason", "name", "category_a", "category_b")
        ]
        rows.append(("data", data or "-"))
    else:
        rows.append(("error", tested["error"]))
    rows.append(("call id", tested["call_id"]))
    print_table(rows, ["", "test call"])
    return 0 if answered else 1


async def list_hook_calls(args: argparse.Namespace) -> int:
    url_variable, collection = args.hook_api
    async with operator_client(url_variable) as client:
        path = f"{collection}/{args.id}/hook/calls"
        found = (await client.get(path, {"limit": str(args.limit)}))["calls"]
    if args.json:
        emit_json({"calls": found})
        return 0
    print_table(
        [
            (
                c["created_at"],
                c["hardware_id"],
                c["assigned_hardware_id"],
                c["decision"],
                c["outcome"],
                "-" if c["http_status"] is None else c["http_status"],
                "-" if c["latency_ms"] is None else f"{c['latency_ms']} ms",
                c["attempts"],
            )
            for c in found
        ],
        ["created", "hardware id", "assigned", "decision", "outcome", "http", "latency", "calls"],
    )
    print(f"{len(found)} call(s)")
    return 0
