"""The operator API's JSON shapes: pure functions of the records the handlers return.

The shapes are the API's contract (services/operator/openapi.yaml); they are built
here, never in the repositories. Times are ISO 8601 text.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from urllib.parse import urlsplit

import orjson

from services.operator.handlers import (
    AlertPage,
    AuditPage,
    DecisionPage,
    DeliveryPage,
    DeviceChanges,
    DeviceDetail,
    DevicePage,
    IssuedWebhook,
    ShownDevice,
)
from shared.db.accounts import ApiKey, IssuedApiKey
from shared.db.alerts import SecurityAlert
from shared.db.audit import AuditEvent
from shared.db.decisions import DecisionEntry
from shared.db.devices import DeviceHistoryEntry
from shared.db.products import Product, ProductService
from shared.db.registrations import Registration
from shared.db.webhooks import Attempt, Delivery, Webhook
from shared.domain.accounts import Account
from shared.domain.device_search import spreadsheet_safe

Json = dict[str, object]


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def account(found: Account) -> Json:
    return {"id": found.id, "name": found.name}


# ---------------------------------------------------------------- products


def service(found: ProductService) -> Json:
    return {
        "provisioning_id": found.id.upper(),
        "name": found.name,
        "type": found.service_type,
        "type_code": found.type_code,
        "port": found.port,
        "enabled": found.enabled,
        "bulk_service": found.is_bulk_service,
    }


# What a read-only API key sees instead of a code: it may watch a fleet, never enroll one.
MASKED = "********"


def product(found: Product, *, masked: bool = False) -> Json:
    """A product; its codes are shown once it is locked, as MASKED when ``masked`` (a
    read-only key)."""
    shown: Json = {
        "id": found.id,
        "name": found.name,
        "status": found.status,
        "registration_kind": found.registration_kind,
        "created_at": found.created_at.isoformat(),
        "services": [service(s) for s in found.services],
    }
    if found.status == "locked":
        shown["bulk_identification_code"] = MASKED if masked else found.bulk_identification_code
        shown["product_code"] = MASKED if masked else found.product_code
    return shown


def deleted_product(found: Product) -> Json:
    """A product just deleted, as it was (its codes are gone with it: not shown)."""
    return {
        "deleted": True,
        "id": found.id,
        "name": found.name,
        "status": found.status,
        "services": [service(s) for s in found.services],
    }


def products(found: list[Product], *, masked: bool = False) -> Json:
    return {"products": [product(p, masked=masked) for p in found]}


# ---------------------------------------------------------------- auto registrations


def auto_registration(found: Registration, *, masked: bool = False) -> Json:
    """An auto registration with its product's current code (MASKED when ``masked``)."""
    code = found.bulk_identification_code
    return {
        "id": found.id,
        "product_id": found.product_id,
        "kind": found.kind,
        "status": found.status,
        "bulk_identification_code": MASKED if masked and code is not None else code,
        "max_devices": found.max_devices,
        "device_count": found.device_count,
        "created_at": found.created_at.isoformat(),
        "updated_at": found.updated_at.isoformat(),
    }


def auto_registrations(found: list[Registration], *, masked: bool = False) -> Json:
    return {"auto_registrations": [auto_registration(r, masked=masked) for r in found]}


# ---------------------------------------------------------------- devices


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
        "registered_at": _time(d.registered_at),
        "provisioned_at": _time(d.provisioned_at),
        "last_seen_at": _time(d.last_seen_at),
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


# ---------------------------------------------------------------- audit trail and alerts


def decision(entry: DecisionEntry) -> Json:
    return {
        "request_id": entry.request_id,
        "decided_at": entry.decided_at.isoformat(),
        "decision": entry.decision,
        "reason": entry.reason,
        "claimed_hardware_id": entry.claimed_hardware_id,
        "assigned_hardware_id": entry.assigned_hardware_id,
        "device_id": entry.device_id,
        "product_id": entry.product_id,
        "protocol": entry.protocol,
    }


def decision_page(page: DecisionPage) -> Json:
    return {
        "decisions": [decision(d) for d in page.decisions],
        "next_before": _time(page.next_before),
        "next_before_id": page.next_before_id,
    }


def audit_event(event: AuditEvent) -> Json:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "api_key_id": event.api_key_id,
        "api_key_label": event.api_key_label,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "changes": event.changes,
    }


def audit_page(page: AuditPage) -> Json:
    return {
        "audit_events": [audit_event(e) for e in page.events],
        "next_before": _time(page.next_before),
        "next_before_id": page.next_before_id,
    }


def security_alert(alert: SecurityAlert) -> Json:
    return {
        "id": alert.id,
        "kind": alert.kind,
        "product_id": alert.product_id,
        "hardware_id": alert.hardware_id,
        "source": alert.source,
        "count": alert.count,
        "listed": alert.listed,
        "wrong_keys": alert.wrong_keys,
        "window_seconds": alert.window_seconds,
        "first_seen_at": alert.first_seen_at.isoformat(),
        "last_seen_at": alert.last_seen_at.isoformat(),
    }


def alert_page(page: AlertPage) -> Json:
    return {
        "security_alerts": [security_alert(a) for a in page.alerts],
        "next_before": _time(page.next_before),
        "next_before_id": page.next_before_id,
    }


# ---------------------------------------------------------------- API keys


def api_key(found: ApiKey) -> Json:
    return {
        "id": found.id,
        "prefix": found.prefix,
        "label": found.label,
        "read_only": found.read_only,
        "created_at": found.created_at.isoformat(),
        "revoked_at": _time(found.revoked_at),
    }


def api_keys(found: list[ApiKey]) -> Json:
    return {"api_keys": [api_key(k) for k in found]}


def issued_api_key(issued: IssuedApiKey) -> Json:
    return {
        "id": issued.id,
        "api_key": issued.key,
        "label": issued.label,
        "read_only": issued.read_only,
        "note": "shown once: store it now, it cannot be shown again",
    }


def revoked_api_key(key_id: str) -> Json:
    return {"revoked": key_id}


# ---------------------------------------------------------------- webhooks


def webhook(found: Webhook, *, masked: bool = False) -> Json:
    """A webhook; for a read-only key (``masked``) its URL without path and query, which
    often carry the receiver's own token (the audit trail records only the host too).
    ``enabled`` false: the notifier disabled it at ``disabled_at`` for ``disabled_reason``
    and queues nothing for it; ``failing_since``: every attempt has failed since then."""
    return {
        "id": found.id,
        "url": masked_url(found.url) if masked else found.url,
        "events": list(found.events),
        "created_at": _time(found.created_at),
        "enabled": found.enabled,
        "disabled_at": _time(found.disabled_at),
        "disabled_reason": found.disabled_reason or None,
        "failing_since": _time(found.failing_since),
    }


def webhooks(found: list[Webhook], *, masked: bool = False) -> Json:
    return {"webhooks": [webhook(w, masked=masked) for w in found]}


def masked_url(url: str) -> str:
    """``https://hooks.example.com/...``: the scheme and host (and port) of a URL, its
    user information, path and query replaced by an ellipsis."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/{MASKED}"


def issued_webhook(issued: IssuedWebhook) -> Json:
    return {
        **webhook(issued.webhook),
        "secret": issued.secret,
        "note": "the signing secret is shown once: store it now, it cannot be shown again",
    }


def deleted_webhook(webhook_id: str) -> Json:
    return {"deleted": webhook_id}


def webhook_attempt(attempt: Attempt) -> Json:
    return {
        "attempt": attempt.attempt,
        "at": _time(attempt.at),
        "status_code": attempt.http_status,
        "error": attempt.error,
        "latency_ms": attempt.latency_ms,
    }


def webhook_delivery(delivery: Delivery) -> Json:
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "created_at": _time(delivery.created_at),
        "next_attempt_at": _time(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "finished_at": _time(delivery.finished_at),
        "attempt_log": [webhook_attempt(a) for a in delivery.attempt_log],
    }


def delivery_page(page: DeliveryPage) -> Json:
    return {
        "deliveries": [webhook_delivery(d) for d in page.deliveries],
        "next_before": _time(page.next_before),
        "next_before_id": page.next_before_id,
    }
