"""``fleetreg devices list|show|export|reset|disable|enable|delete|move|rename``"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from cli.arguments import object_id
from cli.client import OperatorClient, operator_client
from cli.commands.audit import audit_rows
from cli.errors import CliError
from cli.output import confirm, emit_json, print_table, progress

PAGE = 1000
BATCH = 1000  # device IDs per batch call (the API's limit)
# The search options of list and export: (option, query parameter, choices). The API
# checks every value (a 400 names the parameter); choices only make --help and typos clearer.
SEARCH_OPTIONS: tuple[tuple[str, str, tuple[str, ...] | None, str], ...] = (
    ("--state", "state", ("preregistered", "registered", "online", "offline", "disabled"), "shown state"),
    ("--lifecycle", "lifecycle", ("preregistered", "registered", "provisioned"), "lifecycle step"),
    ("--product", "product_id", None, "product ID"),
    ("--registration", "registration_id", None, "registration ID (auto or bulk)"),
    ("--hardware-id", "hardware_id", None, "exact hardware ID (case-insensitive)"),
    ("--hardware-id-prefix", "hardware_id_prefix", None, "hardware ID prefix (case-insensitive)"),
    ("--name-prefix", "name_prefix", None, "device name prefix (case-insensitive)"),
    ("--category-a", "category_a", None, "exact CATEGORY_A"),
    ("--category-b", "category_b", None, "exact CATEGORY_B"),
    ("--registered-since", "registered_since", None, "registered at or after (ISO 8601, UTC if no offset)"),
    ("--registered-before", "registered_before", None, "registered before (ISO 8601)"),
    ("--seen-since", "seen_since", None, "last seen at or after (ISO 8601)"),
    ("--seen-before", "seen_before", None, "last seen before (ISO 8601)"),
    (
        "--sort",
        "sort",
        ("id", "hardware_id", "name", "created_at", "registered_at", "last_seen_at"),
        "sort key",
    ),
    ("--order", "order", ("asc", "desc"), "sort order (default asc)"),
)


def _metavar(parameter: str) -> str:
    for ending, metavar in (("_id", "ID"), ("_prefix", "PREFIX"), ("_since", "TIME"), ("_before", "TIME")):
        if parameter.endswith(ending):
            return "H" if parameter == "hardware_id" else metavar
    return "VALUE"


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    for option, parameter, choices, text in SEARCH_OPTIONS:
        metavar = None if choices else _metavar(parameter)
        parser.add_argument(option, dest=parameter, choices=choices, metavar=metavar, help=text)


def _search(args: argparse.Namespace) -> dict[str, str]:
    """The query parameters of the search options given."""
    return {p: getattr(args, p) for _, p, _, _ in SEARCH_OPTIONS if getattr(args, p) is not None}


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    devices = groups.add_parser("devices", help="the account's devices")
    actions = devices.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[common], help="search devices (all pages unless --limit), with the total count"
    )
    _add_search_options(listing)
    listing.add_argument("--limit", type=int, help="at most this many devices")
    listing.set_defaults(run=list_devices)
    export = actions.add_parser(
        "export",
        parents=[common],
        help="every matching device as CSV or JSON lines (progress on stderr)",
        description="Streams every matching device from GET /v1/devices/export; the CSV's columns and "
        "its spreadsheet-safe escaping are in docs/operations.md. With --json, a summary on stdout "
        "(needs --output).",
    )
    export.add_argument("--format", choices=["csv", "jsonl"], required=True)
    export.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    _add_search_options(export)
    export.set_defaults(run=export_devices)
    show = actions.add_parser("show", parents=[common], help="one device with its history (audit trail)")
    show.add_argument("id", type=object_id)
    show.set_defaults(run=show_device)
    for action, text in (
        ("reset", "reset for re-provisioning: the next claim of its hardware ID takes it over"),
        ("disable", "refuse the device's registration calls from now on"),
        ("enable", "undo disable: the device may register and authenticate again"),
        (
            "delete",
            "decommission: remove the device (its hardware ID is free again; the audit trail keeps it)",
        ),
    ):
        parser = actions.add_parser(action, parents=[common], help=text)
        parser.add_argument("ids", nargs="+", metavar="ID", type=object_id)
        if action == "delete":
            parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        parser.set_defaults(run=change_devices, change=action)
    move = actions.add_parser(
        "move",
        parents=[common],
        help="move a device to another product, reset for re-provisioning there",
        description="The device takes the product's registration and a new credential generation (its "
        "old secret stops working); its next claim with that product's code (and, for a bulk product, "
        "its registration key) takes it over, same device ID, with that product's files.",
    )
    move.add_argument("id", type=object_id)
    move.add_argument("--product", required=True, type=object_id, metavar="ID", help="the target product")
    move.set_defaults(run=move_device)
    rename = actions.add_parser(
        "rename", parents=[common], help="give a device a new name (its credentials stay)"
    )
    rename.add_argument("id", type=object_id)
    rename.add_argument("--name", required=True, help="1-100 ASCII letters, digits, space, '_', '-' or '.'")
    rename.set_defaults(run=rename_device)


async def search_devices(
    client: OperatorClient, filters: dict[str, str], limit: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every matching device, paging through the API, or the first ``limit``; and the first
    page's ``total`` and ``total_exact``."""
    found: list[dict[str, Any]] = []
    count: dict[str, Any] = {}
    after: str | None = None
    while limit is None or len(found) < limit:
        page_size = PAGE if limit is None else min(PAGE, limit - len(found))
        params = {**filters, "limit": str(page_size), **({"after": after} if after else {})}
        page = await client.get("/v1/devices", params)
        count = count or {"total": page["total"], "total_exact": page["total_exact"]}
        found.extend(page["devices"])
        after = page["next_after"]
        if after is None:
            break
    return found, count


async def fetch_devices(
    client: OperatorClient, filters: dict[str, str], limit: int | None
) -> list[dict[str, Any]]:
    """Every matching device, paging through the API, or the first ``limit``."""
    found, _ = await search_devices(client, filters, limit)
    return found


def _total(count: dict[str, Any]) -> str:
    return f"{count['total']}" if count["total_exact"] else f"about {count['total']} (an estimate)"


async def list_devices(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        devices, count = await search_devices(client, _search(args), args.limit)
    if args.json:
        emit_json({"devices": devices, **count})
        return 0
    rows = [
        (d["id"], d["hardware_id"], d["name"], d["state"], d["category_a"], d["category_b"], d["product_id"])
        for d in devices
    ]
    print_table(rows, ["id", "hardware id", "name", "state", "category a", "category b", "product"])
    print(f"{len(devices)} device(s) shown of {_total(count)} matching")
    return 0


@contextlib.contextmanager
def _destination(output: str | None) -> Any:
    """stdout, or FILE written as FILE.partial and renamed once complete: a failed export
    never leaves a file that looks whole."""
    if output is None:
        yield sys.stdout.buffer
        return
    target = Path(output)
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as handle:
        try:
            yield handle
        except BaseException:
            handle.close()
            partial.unlink(missing_ok=True)
            raise
    os.replace(partial, target)


async def export_devices(args: argparse.Namespace) -> int:
    """Stream the export to stdout or --output, counting devices (lines) for a progress bar
    on stderr whose total is the listing's count (an estimate above its threshold)."""
    if args.json and args.output is None:
        raise CliError("--json prints a summary on stdout, so the export needs --output FILE")
    filters = _search(args)
    async with operator_client() as client:
        first = await client.get("/v1/devices", {**filters, "limit": "1"})
        label = "exporting" if first["total_exact"] else "exporting (total estimated)"
        exported = 0
        header = args.format == "csv"
        try:
            with _destination(args.output) as out:
                sink: BinaryIO = out
                async for chunk in client.stream("/v1/devices/export", {**filters, "format": args.format}):
                    sink.write(chunk)
                    lines = chunk.count(b"\n")
                    if header and lines:
                        lines, header = lines - 1, False
                    exported += lines
                    progress(exported, max(exported, first["total"]), label)
                sink.flush()
        except BrokenPipeError:  # stdout's reader is gone (``| head``): it has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        progress(exported, exported, label)
    if args.json:
        emit_json({"devices": exported, "format": args.format, "output": args.output})
    else:
        print(f"{exported} device(s) exported to {args.output or 'stdout'}", file=sys.stderr)
    return 0


async def show_device(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        device = await client.get(f"/v1/devices/{args.id}")
    if args.json:
        emit_json(device)
        return 0
    for key in (
        "id",
        "hardware_id",
        "claimed_hardware_id",
        "name",
        "state",
        "category_a",
        "category_b",
        "product_id",
        "registration_id",
        "registered_at",
        "provisioned_at",
        "last_seen_at",
    ):
        print(f"{key:20} {device.get(key) or '-'}")
    certificate = device.get("certificate")
    if certificate:
        revoked = f", revoked {certificate['revoked_at']}" if certificate["revoked_at"] else ""
        shown = f"serial {certificate['serial']}, not after {certificate['not_after']}{revoked}"
        print(f"{'certificate':20} {shown}")
    else:
        print(f"{'certificate':20} -")
    print()
    rows = [(h["at"], h["kind"], h.get("decision", ""), h.get("reason", "")) for h in device["history"]]
    print_table(rows, ["at", "event", "decision", "reason"])
    print()
    print("operator actions (newest first):")
    print_table(audit_rows(device["audit_events"]), ["at", "action", "target", "key", "changes"])
    return 0


async def change_devices(args: argparse.Namespace) -> int:
    """Reset, disable, enable or delete the devices given, through the batch endpoint: one
    call per BATCH IDs (each call one transaction). Exits 1 if any ID was not found or
    refused. Deleting asks first, unless --yes."""
    ids = list(dict.fromkeys(i.strip().lower() for i in args.ids))  # the API refuses repeats
    if args.change == "delete":
        confirm(
            f"Delete {len(ids)} device(s)? Their hardware IDs become free; their secrets stop working.",
            assume_yes=args.yes,
        )
    results: list[dict[str, Any]] = []
    async with operator_client() as client:
        for start in range(0, len(ids), BATCH):
            answer = await client.post(
                f"/v1/devices/{args.change}", {"device_ids": ids[start : start + BATCH]}
            )
            results.extend(answer["results"])
    document = {
        "devices": [r["device"] for r in results if r["device"] is not None],
        "results": [{"id": r["id"], "outcome": r["outcome"]} for r in results],
    }
    failed = [r for r in results if r["outcome"] in ("not_found", "conflict")]
    if not args.json:
        print_table(
            [
                (
                    r["id"],
                    (r["device"] or {}).get("hardware_id", "-"),
                    "-" if r["outcome"] == "deleted" else (r["device"] or {}).get("state", "-"),
                    r["outcome"],
                )
                for r in results
            ],
            ["id", "hardware id", "state", "outcome"],
        )
    if failed:
        first = failed[0]
        why = (
            "not found in this account"
            if first["outcome"] == "not_found"
            else "disabled: cannot be reset (enable it first)"
        )
        raise CliError(
            f"{len(failed)} of {len(results)} device(s) not changed; e.g. {first['id']}: {why}",
            document if args.json else None,
        )
    if args.json:
        emit_json(document)
    return 0


async def move_device(args: argparse.Namespace) -> int:
    """Move one device to another product (POST /v1/devices/{id}/move); the API's refusal
    (404, 409 with its reason) ends the command with exit code 1."""
    async with operator_client() as client:
        device = await client.post(f"/v1/devices/{args.id}/move", {"product_id": args.product})
    if args.json:
        emit_json(device)
        return 0
    source = _changed(device, "device.moved", "product_id")
    print(
        f"moved device {device['id']} ({device['hardware_id']}) from product {source} "
        f"to product {device['product_id']} (registration {device['registration_id']})"
    )
    print(
        f"lifecycle {device['lifecycle']}: its old secret no longer works; its next claim with the "
        "product's code takes it over"
    )
    return 0


async def rename_device(args: argparse.Namespace) -> int:
    """Rename one device (POST /v1/devices/{id}/rename); a name the API refuses (400 naming
    the rule) ends the command with exit code 1."""
    async with operator_client() as client:
        before = await client.get(f"/v1/devices/{args.id}")
        device = await client.post(f"/v1/devices/{args.id}/rename", {"name": args.name})
    if args.json:
        emit_json(device)
        return 0
    print(
        f"renamed device {device['id']} ({device['hardware_id']}): {before['name']!r} -> {device['name']!r}"
    )
    return 0


def _changed(device: dict[str, Any], action: str, field: str) -> Any:
    """What ``field`` was before the device's newest ``action`` (its audit event, which the
    answer carries), or "-" when none is shown."""
    for event in device.get("audit_events", []):
        if event["action"] == action:
            return event["changes"].get(field, {}).get("from", "-")
    return "-"
