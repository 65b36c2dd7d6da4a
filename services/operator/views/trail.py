"""The trail: registration decisions, operator audit events and security alerts, each
shown in a newest-first page (views.common.page)."""

from __future__ import annotations

from services.operator.views.common import Json
from shared.db.alerts import SecurityAlert
from shared.db.audit import AuditEvent
from shared.db.decisions import DecisionEntry


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
        "hook": entry.hook,
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
        "actor": {
            "user_id": event.user_id,
            "user_email": event.user_email,
            "role": event.role,
            "service_account": event.service_account,
            "session_id": event.session_id,
        },
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
