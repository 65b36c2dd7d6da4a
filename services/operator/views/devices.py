"""Devices as the listing, the export (CSV or JSON lines), the detail and the batch
actions show them."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import orjson

from services.operator.handlers.devices import DeviceChanges, DeviceDetail, DevicePage, ShownDevice
from services.operator.views.common import Json, time
from services.operator.views.trail import audit_event
from shared.db.certificates import IssuedCertificate
from shared.db.devices import DeviceHistoryEntry
from shared.domain.device_search import spreadsheet_safe


def device(shown: ShownDevice) -> Json:
    """A device with the state it is shown in; the lifecycle step is a field of its own."""
    d = shown.device
    return {
        "id": d.id,
        "hardware_id": d.hardware_id,
        "claimed_hardware_id": d.claimed_hardware_id,
        "name": d.name,
        "state": shown.state,
        "lifecycle": d.lifecycle,
        "online": shown.online,
        "disabled": d.disabled,
        "product_id": d.product_id,
        "registration_id": d.registration_id,
        "category_a": d.category_a,
        "category_b": d.category_b,
        "created_at": d.created_at.isoformat(),
        "registered_at": time(d.registered_at),
        "provisioned_at": time(d.provisioned_at),
        "last_seen_at": time(d.last_seen_at),
    }


def deleted_device(shown: ShownDevice) -> Json:
    """A device just deleted (decommissioned), as it was."""
    return {**device(shown), "deleted": True}


def device_page(page: DevicePage) -> Json:
    return {
        "devices": [device(d) for d in page.devices],
        "next_after": page.next_after,
        "total": page.total,
        "total_exact": page.total_exact,
    }


# The columns of a CSV export, in order (docs/operations.md, "Exporting devices"): the
# fields of a device as the listing shows it, without the derived ``online`` flag.
EXPORT_COLUMNS = (
    "id",
    "hardware_id",
    "claimed_hardware_id",
    "name",
    "state",
    "lifecycle",
    "disabled",
    "product_id",
    "registration_id",
    "category_a",
    "category_b",
    "created_at",
    "registered_at",
    "provisioned_at",
    "last_seen_at",
)


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return spreadsheet_safe(str(value))


def _csv(rows: Sequence[Sequence[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)  # RFC 4180: CRLF, quotes doubled
    return buffer.getvalue().encode("utf-8")


def export_header(export_format: str) -> bytes:
    """What an export starts with: the CSV's header line, nothing for JSON lines."""
    return _csv([EXPORT_COLUMNS]) if export_format == "csv" else b""


def export_lines(batch: Sequence[ShownDevice], export_format: str) -> bytes:
    """Devices as export lines: CSV rows of EXPORT_COLUMNS (empty for null, true/false,
    spreadsheet-safe text), or one JSON object per line (the listing's device shape)."""
    if export_format == "csv":
        shown = [device(d) for d in batch]
        return _csv([[_csv_cell(one[column]) for column in EXPORT_COLUMNS] for one in shown])
    return b"".join(orjson.dumps(device(d)) + b"\n" for d in batch)


def history_entry(entry: DeviceHistoryEntry) -> Json:
    return {"at": entry.at.isoformat(), "kind": entry.kind, **entry.detail}


def device_detail(detail: DeviceDetail) -> Json:
    return {
        **device(detail.device),
        "history": [history_entry(e) for e in detail.history],
        "audit_events": [audit_event(e) for e in detail.audit],
        "certificate": certificate(detail.certificate),
    }


def certificate(issued: IssuedCertificate | None) -> Json | None:
    """The device's newest certificate (serial in hex, validity, revocation), or None."""
    if issued is None:
        return None
    return {
        "serial": issued.serial,
        "issued_at": issued.issued_at.isoformat(),
        "not_after": issued.not_after.isoformat(),
        "revoked_at": time(issued.revoked_at),
    }


def device_changes(changed: DeviceChanges) -> Json:
    return {
        "action": changed.action,
        "results": [
            {
                "id": change.device_id,
                "outcome": change.outcome,
                "device": device(now) if now is not None else None,
            }
            for change, now in changed.changes
        ],
        "counts": changed.counts,
    }
