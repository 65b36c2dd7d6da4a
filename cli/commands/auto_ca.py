"""``fleetreg auto ca add|verify|list|show|delete|revoke|unrevoke|crl``: the CA certificates an
x509 auto registration trusts (docs/device-identity.md, "X.509 certificates")."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from cli.arguments import object_id
from cli.client import operator_client
from cli.errors import CliError
from cli.output import confirm, emit_json, print_table

# What a CA file, a verification certificate or a CRL may be at most: the API's own bounds
# are smaller; this only keeps a wrong file (a disk image) from being read whole.
MAX_FILE_BYTES = 2 * 1024 * 1024


def register(actions: Any, common: argparse.ArgumentParser) -> None:
    ca = actions.add_parser("ca", help="the CA certificates of an x509 auto registration")
    verbs = ca.add_subparsers(dest="ca_action", required=True, metavar="ACTION")
    add = verbs.add_parser(
        "add", parents=[common], help="upload a CA certificate (PEM); prints its verification code"
    )
    add.add_argument("id", type=object_id, help="the auto registration")
    add.add_argument("--certificate", required=True, metavar="FILE", type=Path)
    add.set_defaults(run=add_ca)
    verify = verbs.add_parser(
        "verify",
        parents=[common],
        help="prove possession of the CA's key: a certificate of CN=<verification code> signed by it",
    )
    verify.add_argument("ca_id", type=object_id)
    verify.add_argument("--certificate", required=True, metavar="FILE", type=Path)
    verify.set_defaults(run=verify_ca)
    listing = verbs.add_parser("list", parents=[common], help="the CAs of an auto registration")
    listing.add_argument("id", type=object_id, help="the auto registration")
    listing.set_defaults(run=list_cas)
    show = verbs.add_parser("show", parents=[common], help="one CA, with its revoked serials")
    show.add_argument("ca_id", type=object_id)
    show.set_defaults(run=show_ca)
    delete = verbs.add_parser("delete", parents=[common], help="delete a CA: its devices stop registering")
    delete.add_argument("ca_id", type=object_id)
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(run=delete_ca)
    for verb, text in (
        ("revoke", "refuse certificates this CA issued with a serial"),
        ("unrevoke", "take a serial off the revoked list"),
    ):
        parser = verbs.add_parser(verb, parents=[common], help=text)
        parser.add_argument("ca_id", type=object_id)
        parser.add_argument("--serial", required=True, metavar="HEX", help="e.g. 0a:1b:2c or 0A1B2C")
        parser.set_defaults(run=revoke_serial, verb=verb)
    crl = verbs.add_parser(
        "crl", parents=[common], help="upload the CA's CRL (DER or PEM), replacing the last"
    )
    crl.add_argument("ca_id", type=object_id)
    crl.add_argument("--file", required=True, metavar="FILE", type=Path)
    crl.set_defaults(run=upload_crl)


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise CliError(f"{path} is larger than {MAX_FILE_BYTES} bytes: not a certificate or CRL")
    return data


def _text(path: Path) -> str:
    """A certificate file: PEM as it is, DER as base64 (the API takes both)."""
    data = _read(path)
    return data.decode() if data.lstrip().startswith(b"-----BEGIN") else base64.b64encode(data).decode()


def _show(cas: list[dict[str, Any]]) -> None:
    rows = [
        (
            c["id"],
            c["subject"],
            "yes" if c["verified"] else "NO",
            c["not_after"][:10],
            len(c["revoked_serials"]),
            "yes" if c["crl"] else "-",
        )
        for c in cas
    ]
    print_table(rows, ["id", "subject", "verified", "expires", "revoked serials", "crl"])


def _emit(args: argparse.Namespace, ca: dict[str, Any]) -> None:
    if args.json:
        emit_json(ca)
        return
    _show([ca])
    if not ca["verified"]:
        print(f"verification code: {ca['verification_code']}")
        print(
            "sign it with the CA's key, then: fleetreg auto ca verify "
            f"{ca['id']} --certificate verification.pem\n"
            f"  openssl req -new -key ca.key -subj '/CN={ca['verification_code']}' -out verification.csr\n"
            "  openssl x509 -req -in verification.csr -CA ca.pem -CAkey ca.key -days 1 "
            "-out verification.pem"
        )
    for serial in ca["revoked_serials"]:
        print(f"revoked serial: {serial}")


async def add_ca(args: argparse.Namespace) -> int:
    body = {"certificate": _text(args.certificate)}
    async with operator_client() as client:
        _emit(args, await client.post(f"/v1/auto-registrations/{args.id}/cas", body))
    return 0


async def verify_ca(args: argparse.Namespace) -> int:
    body = {"verification_certificate": _text(args.certificate)}
    async with operator_client() as client:
        _emit(args, await client.post(f"/v1/attestation-cas/{args.ca_id}/verify", body))
    return 0


async def list_cas(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        found = await client.get(f"/v1/auto-registrations/{args.id}/cas")
    emit_json(found) if args.json else _show(found["cas"])
    return 0


async def show_ca(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        _emit(args, await client.get(f"/v1/attestation-cas/{args.ca_id}"))
    return 0


async def delete_ca(args: argparse.Namespace) -> int:
    confirm(
        f"Delete attestation CA {args.ca_id}? Devices whose certificates chain to it stop registering.",
        assume_yes=args.yes,
    )
    async with operator_client() as client:
        deleted = await client.delete(f"/v1/attestation-cas/{args.ca_id}")
    emit_json(deleted) if args.json else _show([deleted])
    return 0


async def revoke_serial(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        _emit(
            args, await client.post(f"/v1/attestation-cas/{args.ca_id}/{args.verb}", {"serial": args.serial})
        )
    return 0


async def upload_crl(args: argparse.Namespace) -> int:
    body = {"crl": _text(args.file)}
    async with operator_client() as client:
        _emit(args, await client.call("PUT", f"/v1/attestation-cas/{args.ca_id}/crl", body=body))
    return 0
