"""The bulk API's JSON shapes, built from the registry's records."""

from __future__ import annotations

from typing import Any

from services.ingestion.handlers import Changed, Upload
from shared.db.bulk import BulkRegistration
from shared.domain.accounts import masked_url
from shared.hook_surface import hook_calls_json, hook_test_json

# The reason shown for each conflict row (a row is a conflict for this reason only).
CONFLICT_REASON = "hardware ID registered in the account between upload and publish"


def registration(found: BulkRegistration, *, masked: bool = False) -> dict[str, Any]:
    """A bulk registration with its hook's settings (the URL's scheme and host only when
    ``masked``, for a key below admin, as the operator API shows an auto registration's:
    the hook is an admin's, docs/security.md, "Roles")."""
    hook_url = found.hook_url
    return {
        "id": found.id,
        "product_id": found.product_id,
        "status": found.status,
        "rows": found.rows,
        "published": found.published,
        "conflicts": found.conflicts,
        "file_name": found.file_name,
        "hook_url": masked_url(hook_url) if masked and hook_url else hook_url,
        "hook_timeout_ms": found.hook_timeout_ms,
        "hook_failure": found.hook_failure,
        "created_at": found.created_at.isoformat(),
        "updated_at": found.updated_at.isoformat(),
    }


def registrations(found: list[BulkRegistration], *, masked: bool = False) -> dict[str, Any]:
    return {"bulk_registrations": [registration(b, masked=masked) for b in found]}


def registration_detail(found: BulkRegistration, *, masked: bool = False) -> dict[str, Any]:
    return {
        **registration(found, masked=masked),
        "conflict_rows": [
            {"line": c.line, "hardware_id": c.hardware_id, "reason": CONFLICT_REASON}
            for c in found.conflict_rows
        ],
    }


def upload(done: Upload) -> dict[str, Any]:
    """An accepted upload with its report, and its hook's signing secret (``hook_secret``,
    ``whsec_...``) when it was given a hook: shown this once."""
    return {
        **registration_detail(done.registration),
        "warnings": [w.to_dict() for w in done.warnings.shown],
        "warnings_total": done.warnings.total,
        **({"hook_secret": done.hook_secret} if done.hook_secret else {}),
    }


def changed(done: Changed) -> dict[str, Any]:
    """A bulk registration as changed, with its hook's new signing secret (``hook_secret``)
    when the change set a URL: shown this once."""
    return {
        **registration_detail(done.registration),
        **({"hook_secret": done.hook_secret} if done.hook_secret else {}),
    }


def cancelled(found: BulkRegistration) -> dict[str, Any]:
    """A cancelled registration, as it was: it no longer exists."""
    return {**registration(found), "status": "cancelled"}


# A test call of the hook and its recent calls: the operator API's shapes for an auto
# registration's (shared/hook_surface.py), one shape for both kinds.
hook_test = hook_test_json
hook_calls = hook_calls_json
