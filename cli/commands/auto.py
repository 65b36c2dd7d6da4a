"""``fleetreg auto create|update|pause|resume|rotate-code|rotate-key|derive-key|list``,
``fleetreg auto ca ...`` (cli/commands/auto_ca.py) and ``fleetreg auto hook-test|hook-calls``
(cli/commands/registration_hook.py)"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli.arguments import object_id
from cli.client import operator_client
from cli.commands import auto_ca, registration_hook
from cli.hook_flags import HOOK_NOTE, add_hook_arguments, hook_body, shown_hook
from cli.output import emit_json, print_table


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    auto = groups.add_parser("auto", help="auto registrations")
    actions = auto.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", parents=[common], help="start auto registration for a locked product"
    )
    create.add_argument("--product", required=True, metavar="ID", type=object_id)
    create.add_argument(
        "--max-devices",
        type=int,
        metavar="N",
        help="at most N devices (new devices and clones); none by default",
    )
    create.add_argument(
        "--attestation",
        choices=("code", "derived_key", "x509"),
        help="how devices prove they belong: the code alone (default), a key derived per "
        "hardware ID from a group key (derived_key), or a certificate of a CA you upload "
        "(x509; docs/device-identity.md)",
    )
    create.add_argument(
        "--hardware-id-from",
        choices=("cn", "san:dns", "san:uri"),
        help="x509: where a device certificate names its hardware ID (default: its subject CN)",
    )
    add_hook_arguments(create, removable=False)
    create.set_defaults(run=create_auto)
    update = actions.add_parser(
        "update", parents=[common], help="set or clear the device quota or the registration hook"
    )
    update.add_argument("id", type=object_id)
    quota = update.add_mutually_exclusive_group()
    quota.add_argument("--max-devices", type=int, metavar="N", help="at most N devices from now on")
    quota.add_argument("--no-max-devices", action="store_true", help="remove the device quota")
    add_hook_arguments(update, removable=True)
    update.set_defaults(run=update_auto)
    for action, text in (
        ("pause", "refuse new devices until resumed"),
        ("resume", "accept devices again"),
        ("rotate-code", "replace the Bulk Identification Code; the old one stops working at once"),
    ):
        parser = actions.add_parser(action, parents=[common], help=text)
        parser.add_argument("id", type=object_id)
        parser.set_defaults(run=change_auto, change=action)
    rotate_key = actions.add_parser(
        "rotate-key",
        parents=[common],
        help="replace a derived_key registration's primary (or --secondary) group key; "
        "device keys derived from the old one stop registering at once",
    )
    rotate_key.add_argument("id", type=object_id)
    rotate_key.add_argument("--secondary", action="store_true", help="the secondary key")
    rotate_key.set_defaults(run=rotate_key_auto)
    derive = actions.add_parser(
        "derive-key",
        parents=[common],
        help="print the device key of a hardware ID (for a factory line): derived by the "
        "server from the primary (or --secondary) group key, audited",
    )
    derive.add_argument("id", type=object_id)
    derive.add_argument("--hardware-id", required=True, metavar="H")
    derive.add_argument("--secondary", action="store_true", help="derive from the secondary key")
    derive.set_defaults(run=derive_key_auto)
    listing = actions.add_parser("list", parents=[common], help="list auto registrations")
    listing.set_defaults(run=list_auto)
    auto_ca.register(actions, common)
    registration_hook.register(actions, common, registration_hook.AUTO)


PUBLIC = (
    "id",
    "product_id",
    "status",
    "bulk_identification_code",
    "max_devices",
    "attestation",
    "device_count",
)
# A derived_key registration's group keys (in the answer of its creation or a key's rotation)
# and a hook's signing secret (in the answer that set its URL): shown once.
GROUP_KEYS = ("primary_key", "secondary_key")
SHOWN_ONCE = (*GROUP_KEYS, "hook_secret")
KEY_WARNING = (
    "fleetreg: the group key is shown once: keep it offline, never in a factory image; put each "
    "device's derived key on it ('fleetreg auto derive-key ID --hardware-id H')"
)


def _public(registration: dict[str, Any]) -> dict[str, Any]:
    shown = {k: registration[k] for k in PUBLIC}
    if "hardware_id_from" in registration:
        shown["hardware_id_from"] = registration["hardware_id_from"]
    shown.update(shown_hook(registration))
    shown.update({k: registration[k] for k in GROUP_KEYS if k in registration})
    return shown


def _emit(args: argparse.Namespace, registration: dict[str, Any]) -> None:
    """One registration, as JSON or a table; group keys and a hook secret (shown once) after
    the table."""
    if args.json:
        emit_json(_public(registration))
    else:
        _show([registration])
        for name in SHOWN_ONCE:
            if name in registration:
                print(f"{name.replace('_', ' ')}: {registration[name]}")
    if any(name in registration for name in GROUP_KEYS):
        print(KEY_WARNING, file=sys.stderr)
    if "hook_secret" in registration:
        print(HOOK_NOTE, file=sys.stderr)


def _show(registrations: list[dict[str, Any]]) -> None:
    rows = [
        (
            r["id"],
            r["product_id"],
            r["status"],
            r["bulk_identification_code"],
            "-" if r["max_devices"] is None else r["max_devices"],
            r["attestation"],
            r["device_count"],
        )
        for r in registrations
    ]
    print_table(
        rows, ["id", "product", "status", "bulk identification code", "max devices", "attestation", "devices"]
    )


async def create_auto(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"product_id": args.product}
    if args.max_devices is not None:
        body["max_devices"] = args.max_devices
    if args.attestation is not None:
        body["attestation"] = args.attestation
    if args.hardware_id_from is not None:
        body["hardware_id_from"] = args.hardware_id_from
    body.update(hook_body(args))
    async with operator_client() as client:
        registration = await client.post("/v1/auto-registrations", body)
    _emit(args, registration)
    # The note is about the code alone: derived_key and x509 devices also prove a key.
    if args.max_devices is None and registration.get("attestation", "code") == "code":
        print(
            "fleetreg: note: no --max-devices: anyone holding the code (every factory image) can "
            "register any number of devices; set one with 'fleetreg auto update ID --max-devices N'",
            file=sys.stderr,
        )
    return 0


async def update_auto(args: argparse.Namespace) -> int:
    body: dict[str, Any] = hook_body(args)
    if args.no_max_devices or args.max_devices is not None:
        body["max_devices"] = None if args.no_max_devices else args.max_devices
    if not body:
        print(
            "fleetreg: auto update: give --max-devices, --no-max-devices or a hook setting",
            file=sys.stderr,
        )
        return 2
    async with operator_client() as client:
        registration = await client.call("PATCH", f"/v1/auto-registrations/{args.id}", body=body)
    _emit(args, registration)
    return 0


async def change_auto(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        registration = await client.post(f"/v1/auto-registrations/{args.id}/{args.change}")
    emit_json(_public(registration)) if args.json else _show([registration])
    return 0


async def rotate_key_auto(args: argparse.Namespace) -> int:
    body = {"key": "secondary" if args.secondary else "primary"}
    async with operator_client() as client:
        registration = await client.post(f"/v1/auto-registrations/{args.id}/rotate-key", body)
    _emit(args, registration)
    return 0


async def derive_key_auto(args: argparse.Namespace) -> int:
    """The device key alone on stdout (a factory script takes ``$(fleetreg auto derive-key
    ...)``), or with ``--json`` ``{"device_key", "hardware_id", "key", "auto_registration_id"}``."""
    body = {"hardware_id": args.hardware_id, "key": "secondary" if args.secondary else "primary"}
    async with operator_client() as client:
        derived = await client.post(f"/v1/auto-registrations/{args.id}/derive-key", body)
    if args.json:
        emit_json(derived)
    else:
        print(derived["device_key"])
    return 0


async def list_auto(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        registrations = (await client.get("/v1/auto-registrations"))["auto_registrations"]
    if args.json:
        emit_json({"auto_registrations": [_public(r) for r in registrations]})
    else:
        _show(registrations)
    return 0
