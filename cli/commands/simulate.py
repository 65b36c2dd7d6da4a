"""``fleetreg simulate``: boot simulated devices against the running system and report."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cli.arguments import object_id, positive_int
from cli.client import operator_client
from cli.commands.bulk import BULK_URL, uploaded_file
from cli.config import ConfigError, load_endpoints, require
from cli.errors import CliError
from cli.output import emit_json, print_table, progress
from cli.simulate import FleetPlan, ProgressCallback, RunOptions, Summary, plan_bulk, plan_fleet, run_fleet
from shared.domain import derived_keys
from shared.domain.bulk_csv import CsvReader
from shared.service import use_fewer_collections


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    parser = groups.add_parser(
        "simulate",
        parents=[common],
        help="boot simulated devices against the running system and summarize",
        description=(
            "Boot N simulated devices of one Bulk Identification Code (by default the demo "
            "product's), some of them clones or with a lost first response; each registers, "
            "verifies its provisioning files and confirms. Like a real device, each call that "
            "meets a fault (connection error, timeout, 5xx, 429) is retried after a capped "
            "exponential backoff with full jitter, never sooner than the server's Retry-After, "
            "until the device's deadline; a refusal or other 4xx is final. "
            "Exit code 1 if any device failed."
        ),
    )
    parser.add_argument(
        "--devices", type=positive_int, help="how many devices (100; with --bulk: all the CSV's)"
    )
    parser.add_argument(
        "--clone-rate", type=_rate, default=0.1, help="share of devices reusing another's hardware ID (0.1)"
    )
    parser.add_argument("--concurrency", type=positive_int, default=20, help="devices booting at once (20)")
    parser.add_argument(
        "--lost-response-rate",
        type=_rate,
        default=0.05,
        help="share of devices that retry their registration as if the answer was lost (0.05)",
    )
    parser.add_argument(
        "--deadline-seconds",
        type=_seconds,
        default=RunOptions.deadline_s,
        help="a device gives up this long after its first call (%(default)s)",
    )
    parser.add_argument(
        "--max-backoff-seconds",
        type=_seconds,
        default=RunOptions.max_backoff_s,
        help="cap of the backoff window between a call's retries; each wait is random "
        f"below it, starting at {RunOptions.initial_backoff_s} s and doubling (%(default)s)",
    )
    parser.add_argument(
        "--two-call",
        action="store_true",
        help="boot in two calls: register with include=files, verify the inline files' size and "
        "SHA-256, confirm (docs/device-api.md); a ready answer without files falls back to downloads",
    )
    parser.add_argument(
        "--csr",
        action="store_true",
        help="send a CSR (P-256) with each registration and require a device certificate in every "
        "ready answer carrying the device secret (docs/device-identity.md)",
    )
    parser.add_argument("--seed", type=int, help="seed of the fleet plan (default: random, reported)")
    parser.add_argument("--code", help="Bulk Identification Code (default: FLEETREG_DEMO_CODE)")
    parser.add_argument(
        "--group-key",
        help="a derived_key product's group key (base64, as 'fleetreg auto create --attestation "
        "derived_key' printed it): each device proves the key derived from it and its hardware ID "
        "(docs/device-identity.md); also FLEETREG_SIMULATE_GROUP_KEY",
    )
    parser.add_argument(
        "--bulk", metavar="ID", type=object_id, help="boot the devices of this published bulk registration"
    )
    parser.add_argument(
        "--csv",
        type=Path,
        help="with --bulk: the uploaded CSV (the registry keeps keys only hashed); "
        "default: the file 'fleetreg bulk upload' sent from this folder",
    )
    parser.add_argument("--device-url", help="native device API (default: FLEETREG_DEVICE_URL)")
    parser.set_defaults(run=run)


async def _bulk_plan(args: argparse.Namespace) -> FleetPlan:
    """The devices of a published bulk registration: hardware IDs and keys from its CSV,
    the code from its product."""
    csv_path = args.csv or uploaded_file(args.bulk)
    if csv_path is None:
        raise CliError(f"no CSV known for bulk registration {args.bulk}: pass --csv FILE")
    async with operator_client(BULK_URL) as bulk:
        registration = await bulk.get(f"/v1/bulk-registrations/{args.bulk}")
    if registration["status"] not in ("publishing", "preregistered"):
        raise CliError(f"bulk registration {args.bulk} is {registration['status']}: publish it first")
    async with operator_client() as operator:
        product = await operator.get(f"/v1/products/{registration['product_id']}")
    listed = await asyncio.to_thread(_listed_devices, csv_path, args.devices)
    try:
        return plan_bulk(product["bulk_identification_code"], listed, args.lost_response_rate, args.seed)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _listed_devices(path: Path, limit: int | None) -> list[tuple[str, str]]:
    with path.open("rb") as handle:
        reader = CsvReader(handle, max_rows=10_000_000)
        listed = [(row.hardware_id, row.registration_key) for row in reader]
    if reader.errors.total:
        first = reader.errors.shown[0]
        raise CliError(f"{path}: line {first.line}: {first.reason}")
    return listed[:limit] if limit else listed


def _plan(args: argparse.Namespace, endpoints: dict[str, str]) -> FleetPlan:
    code = args.code or endpoints.get("FLEETREG_DEMO_CODE")
    if not code:
        raise CliError(
            "no Bulk Identification Code: pass --code, or run 'make up' "
            "(it sets up the demo product and writes FLEETREG_DEMO_CODE to var/endpoints.env)"
        )
    try:
        return plan_fleet(code, args.devices or 100, args.clone_rate, args.lost_response_rate, args.seed)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def progress_bar(devices: int) -> ProgressCallback:
    """A callback redrawing the bar on stderr about 200 times a run at most, and at the end."""
    step = max(1, devices // 200)

    def show(done: int, total: int) -> None:
        if done == total or done % step == 0:
            progress(done, total, "devices")

    return show


def print_summary(summary: Summary) -> None:
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(summary.error_kinds.items())) or "-"
    retry_kinds = ", ".join(f"{k}={v}" for k, v in sorted(summary.retry_kinds.items())) or "-"
    latency = summary.latency_ms
    rows = [
        ("devices", summary.devices),
        ("provisioned", summary.provisioned),
        ("clones planned", summary.clones_planned),
        ("clones detected", summary.clones_detected),
        ("lost responses planned", summary.lost_responses_planned),
        ("errors", summary.errors),
        ("error kinds", kinds),
        ("retries", summary.retries),
        ("retry kinds", retry_kinds),
        ("devices that retried", summary.devices_retried),
        ("hardware IDs unique", "yes" if summary.hardware_ids_unique else "NO"),
        ("throughput (devices/s)", summary.throughput_per_s),
        *((f"latency {name} (ms)", "-" if v is None else v) for name, v in latency.items()),
        *(
            (f"time to provisioned {name} (s)", "-" if v is None else v)
            for name, v in summary.time_to_provisioned_s.items()
        ),
        ("duration (s)", summary.duration_s),
        ("seed", summary.seed),
    ]
    print_table(rows, ["metric", "value"])


async def run(args: argparse.Namespace) -> int:
    endpoints = load_endpoints()
    plan = await _bulk_plan(args) if args.bulk else _plan(args, endpoints)
    group_key = args.group_key or os.environ.get("FLEETREG_SIMULATE_GROUP_KEY")
    if group_key:
        try:
            derived_keys.derive_device_key(group_key, "check")
        except ValueError as exc:
            raise CliError(f"--group-key: {exc}") from exc
        plan = replace(plan, group_key=group_key)
    try:
        device_url = args.device_url or require(endpoints, "FLEETREG_DEVICE_URL")
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    if not device_url.startswith(("http://", "https://")):
        raise CliError(f"the device API URL must start with http:// or https://, not {device_url!r}")
    # The plan (thousands of devices) lives until the end of the run: out of the cyclic
    # collector's reach, and collections less often. Measured (gc.callbacks), a
    # 4,000-device five-call run spent 1.65 s of its 7.3 s CPU collecting; then 0.58 s.
    gc.freeze()
    use_fewer_collections()
    options = RunOptions(
        deadline_s=args.deadline_seconds,
        max_backoff_s=args.max_backoff_seconds,
        two_call=args.two_call,
        csr=device_csr() if args.csr else "",
    )
    summary = await run_fleet(plan, device_url, args.concurrency, progress_bar(len(plan.devices)), options)
    document = summary.to_dict()
    if not args.json:
        print_summary(summary)
    if summary.ok:
        if args.json:
            emit_json(document)
        return 0
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(summary.error_kinds.items()))
    raise CliError(f"{summary.errors} error(s) among {summary.devices} devices: {kinds}", document=document)


def device_csr() -> str:
    """A PKCS#10 request (PEM) of a new P-256 key, as a device would make."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "simulated device")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
