"""``fleetreg bulk upload|update|publish|show|list|cancel`` and ``fleetreg bulk
hook-test|hook-calls`` (cli/commands/registration_hook.py)"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cli.arguments import object_id
from cli.client import operator_client
from cli.commands import registration_hook
from cli.errors import CliError
from cli.hook_flags import HOOK_NOTE, HOOK_SETTINGS, add_hook_arguments, hook_body, shown_hook
from cli.output import confirm, emit_json, print_table, progress

BULK_URL = "FLEETREG_BULK_URL"
CHUNK = 256 * 1024
UPLOADS = Path("var") / "bulk-uploads.json"


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    bulk = groups.add_parser("bulk", help="bulk registrations: CSV upload, publish, show")
    actions = bulk.add_subparsers(dest="action", required=True, metavar="ACTION")
    upload = actions.add_parser(
        "upload",
        parents=[common],
        help="upload a CSV (REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A,CATEGORY_B)",
    )
    upload.add_argument("file", type=Path)
    upload.add_argument("--product", required=True, metavar="ID", type=object_id)
    add_hook_arguments(upload, removable=False)
    upload.set_defaults(run=upload_file)
    update = actions.add_parser(
        "update", parents=[common], help="set, change or remove the registration hook"
    )
    update.add_argument("id", type=object_id)
    add_hook_arguments(update, removable=True)
    update.set_defaults(run=update_registration)
    publish = actions.add_parser("publish", parents=[common], help="publish: the devices appear offline")
    publish.add_argument("id", type=object_id)
    publish.add_argument("--wait", action="store_true", help="wait until every row is published")
    publish.set_defaults(run=publish_registration)
    show = actions.add_parser("show", parents=[common], help="one bulk registration, with its conflicts")
    show.add_argument("id", type=object_id)
    show.set_defaults(run=show_registration)
    listing = actions.add_parser("list", parents=[common], help="the account's bulk registrations")
    listing.set_defaults(run=list_registrations)
    cancel = actions.add_parser(
        "cancel",
        parents=[common],
        help="cancel a configured upload (not yet published): its rows are dropped",
    )
    cancel.add_argument("id", type=object_id)
    cancel.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    cancel.set_defaults(run=cancel_registration)
    registration_hook.register(actions, common, registration_hook.BULK)


def _public(registration: dict[str, Any]) -> dict[str, Any]:
    """The registration's JSON, its hook's settings only when it has a hook (the output for
    one without is as it was before hooks), its hook's secret when this answer carries it."""
    hidden = ("account_id", *HOOK_SETTINGS, "hook_secret")
    return {k: v for k, v in registration.items() if k not in hidden} | shown_hook(registration)


def _show(registration: dict[str, Any]) -> None:
    keys = ["id", "product_id", "status", "rows", "published", "conflicts", "file_name"]
    if registration.get("hook_url") is not None:
        keys += HOOK_SETTINGS
    for key in keys:
        print(f"{key:12} {registration.get(key)}")
    if "hook_secret" in registration:
        print(f"hook secret: {registration['hook_secret']}")
    conflicts = registration.get("conflict_rows") or []
    if conflicts:
        print()
        print_table(
            [(c["line"], c["hardware_id"], c["reason"]) for c in conflicts], ["line", "hardware id", "reason"]
        )


async def _chunks(path: Path, total: int, show_progress: bool) -> AsyncIterator[bytes]:
    sent = 0
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            sent += len(chunk)
            if show_progress:
                progress(sent, total, "uploading")
            yield chunk
    if show_progress and total == 0:
        progress(0, 0, "uploading")


def remember_upload(registration_id: str, path: Path) -> None:
    """Remember which file a registration came from (keys are stored only hashed, so
    ``fleetreg simulate --bulk ID`` reads them from the file)."""
    if not UPLOADS.parent.is_dir():
        return
    known = json.loads(UPLOADS.read_text()) if UPLOADS.exists() else {}
    known[registration_id] = str(path.resolve())
    UPLOADS.write_text(json.dumps(known, indent=2))


def uploaded_file(registration_id: str) -> Path | None:
    if not UPLOADS.exists():
        return None
    known = json.loads(UPLOADS.read_text())
    return Path(known[registration_id]) if registration_id in known else None


def _size_of(path: Path) -> int:
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    return path.stat().st_size


async def upload_file(args: argparse.Namespace) -> int:
    path: Path = args.file
    total = await asyncio.to_thread(_size_of, path)
    async with operator_client(BULK_URL) as client:
        try:
            registration = await client.call(
                "POST",
                "/v1/bulk-registrations",
                params={"product_id": args.product, "file_name": path.name}
                | {k: str(v) for k, v in hook_body(args).items()},
                data=_chunks(path, total, show_progress=True),
                # Its length, said up front: the bulk API reserves that much spool for it
                # (without one, the whole size limit) and refuses a file too large at once.
                headers={"Content-Type": "text/csv", "Content-Length": str(total)},
            )
        except CliError as exc:
            document = exc.document if isinstance(exc.document, dict) else {}
            errors = document.get("errors")
            if errors and not args.json:
                print_table(
                    [(e["line"], e["column"], e["value"], e["reason"]) for e in errors],
                    ["line", "column", "value", "reason"],
                )
                total = document.get("errors_total", len(errors))
                if total > len(errors):  # the report lists the first FLEETREG_BULK_MAX_REPORTED_ERRORS
                    print(
                        f"the first {len(errors)} of {total} problems are shown: "
                        "fix these and upload again to see the rest"
                    )
            raise
    remember_upload(registration["id"], path)
    _emit(args, registration)
    warnings = registration.get("warnings") or []
    if warnings:  # accepted, but the operator should know (stderr: --json output stays one document)
        print(
            f"fleetreg: {registration.get('warnings_total', len(warnings))} guessable key(s):",
            file=sys.stderr,
        )
        for warning in warnings:
            print(f"  line {warning['line']}: {warning['reason']}", file=sys.stderr)
    return 0


def _emit(args: argparse.Namespace, registration: dict[str, Any]) -> None:
    """One registration, as JSON or lines; a hook secret (shown once) with its note."""
    if args.json:
        emit_json(_public(registration))
    else:
        _show(registration)
    if "hook_secret" in registration:
        print(HOOK_NOTE, file=sys.stderr)


async def update_registration(args: argparse.Namespace) -> int:
    body = hook_body(args)
    if not body:
        print(
            "fleetreg: bulk update: give --hook-url, --no-hook, --hook-timeout-ms or --hook-failure",
            file=sys.stderr,
        )
        return 2
    async with operator_client(BULK_URL) as client:
        registration = await client.call("PATCH", f"/v1/bulk-registrations/{args.id}", body=body)
    _emit(args, registration)
    return 0


async def publish_registration(args: argparse.Namespace) -> int:
    async with operator_client(BULK_URL) as client:
        registration = await client.post(f"/v1/bulk-registrations/{args.id}/publish")
        while args.wait and registration["status"] != "preregistered":
            progress(
                registration["published"] + registration["conflicts"], registration["rows"], "publishing"
            )
            await asyncio.sleep(0.5)
            registration = await client.get(f"/v1/bulk-registrations/{args.id}")
        if args.wait:
            progress(registration["rows"], registration["rows"], "publishing")
    if args.json:
        emit_json(_public(registration))
    else:
        _show(registration)
    return 0


async def show_registration(args: argparse.Namespace) -> int:
    async with operator_client(BULK_URL) as client:
        registration = await client.get(f"/v1/bulk-registrations/{args.id}")
    if args.json:
        emit_json(_public(registration))
    else:
        _show(registration)
    return 0


async def list_registrations(args: argparse.Namespace) -> int:
    async with operator_client(BULK_URL) as client:
        registrations = (await client.get("/v1/bulk-registrations"))["bulk_registrations"]
    if args.json:
        emit_json({"bulk_registrations": [_public(r) for r in registrations]})
    else:
        rows = [
            (r["id"], r["product_id"], r["status"], r["rows"], r["published"], r["conflicts"])
            for r in registrations
        ]
        print_table(rows, ["id", "product", "status", "rows", "published", "conflicts"])
    return 0


async def cancel_registration(args: argparse.Namespace) -> int:
    confirm(
        f"Cancel bulk registration {args.id}? Its uploaded rows are dropped.",
        assume_yes=args.yes,
    )
    async with operator_client(BULK_URL) as client:
        registration = await client.post(f"/v1/bulk-registrations/{args.id}/cancel")
    if args.json:
        emit_json(_public(registration))
    else:
        _show(registration)
    return 0
