"""Products with their services and codes, and auto registrations (codes masked for a
read-only key)."""

from __future__ import annotations

from services.operator.handlers.products import DerivedKey, IssuedAutoRegistration
from services.operator.views.common import Json
from shared.db.products import Product, ProductService
from shared.db.registrations import Registration
from shared.domain.accounts import MASKED, masked_url


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


def auto_registration(found: Registration, *, masked: bool = False, hook_masked: bool | None = None) -> Json:
    """An auto registration with its product's current code (MASKED when ``masked``) and its
    hook's settings (the URL without path and query when ``hook_masked``, by default
    ``masked``, as a webhook's: the hook is an admin's, docs/security.md, "Roles")."""
    code = found.bulk_identification_code
    hook_masked = masked if hook_masked is None else hook_masked
    return {
        "id": found.id,
        "product_id": found.product_id,
        "kind": found.kind,
        "status": found.status,
        "bulk_identification_code": MASKED if masked and code is not None else code,
        "max_devices": found.max_devices,
        "attestation": found.attestation,
        **({"hardware_id_from": found.hardware_id_from} if found.attestation == "x509" else {}),
        "hook_url": masked_url(found.hook_url) if hook_masked and found.hook_url else found.hook_url,
        "hook_timeout_ms": found.hook_timeout_ms,
        "hook_failure": found.hook_failure,
        "device_count": found.device_count,
        "created_at": found.created_at.isoformat(),
        "updated_at": found.updated_at.isoformat(),
    }


def auto_registrations(
    found: list[Registration], *, masked: bool = False, hook_masked: bool | None = None
) -> Json:
    return {
        "auto_registrations": [auto_registration(r, masked=masked, hook_masked=hook_masked) for r in found]
    }


def issued_auto_registration(
    issued: IssuedAutoRegistration, *, masked: bool = False, hook_masked: bool | None = None
) -> Json:
    """An auto registration as created or changed: for derived_key, the new group keys
    (``primary_key``, ``secondary_key``, base64), and a new hook's signing secret
    (``hook_secret``, ``whsec_...``), shown this once."""
    shown = auto_registration(issued.registration, masked=masked, hook_masked=hook_masked)
    for slot, group_key in issued.group_keys.items():
        shown[f"{slot}_key"] = group_key
    if issued.hook_secret:
        shown["hook_secret"] = issued.hook_secret
    return shown


def device_key(derived: DerivedKey) -> Json:
    """A derived device key, as ``fleetreg auto derive-key`` prints it."""
    return {
        "auto_registration_id": derived.registration_id,
        "hardware_id": derived.hardware_id,
        "key": derived.slot,
        "device_key": derived.device_key,
    }
