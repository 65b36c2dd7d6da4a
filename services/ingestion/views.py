"""The bulk API's JSON shapes, built from the registry's records."""

from __future__ import annotations

from typing import Any

from services.ingestion.handlers import Upload
from shared.db.bulk import BulkRegistration

# The reason shown for each conflict row (a row is a conflict for this reason only).
CONFLICT_REASON = "hardware ID registered in the account between upload and publish"


def registration(found: BulkRegistration) -> dict[str, Any]:
    return {
        "id": found.id,
        "product_id": found.product_id,
        "status": found.status,
        "rows": found.rows,
        "published": found.published,
        "conflicts": found.conflicts,
        "file_name": found.file_name,
        "created_at": found.created_at.isoformat(),
        "updated_at": found.updated_at.isoformat(),
    }


def registrations(found: list[BulkRegistration]) -> dict[str, Any]:
    return {"bulk_registrations": [registration(b) for b in found]}


def registration_detail(found: BulkRegistration) -> dict[str, Any]:
    return {
        **registration(found),
        "conflict_rows": [
            {"line": c.line, "hardware_id": c.hardware_id, "reason": CONFLICT_REASON}
            for c in found.conflict_rows
        ],
    }


def upload(done: Upload) -> dict[str, Any]:
    return {
        **registration_detail(done.registration),
        "warnings": [w.to_dict() for w in done.warnings.shown],
        "warnings_total": done.warnings.total,
    }


def cancelled(found: BulkRegistration) -> dict[str, Any]:
    """A cancelled registration, as it was: it no longer exists."""
    return {**registration(found), "status": "cancelled"}
