"""Products and their services, and auto registrations (a product's code, paused,
resumed or rotated, with an optional device quota)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from services.operator.handlers.auto_inputs import attestation_of, hardware_id_from_of, max_devices_of
from shared.db import attestation, certificates, products, registrations
from shared.db.pool import Pool
from shared.db.products import Product
from shared.db.registrations import GroupKeys, Registration
from shared.domain import derived_keys
from shared.domain.accounts import Account
from shared.domain.derived_keys import KeySlot
from shared.domain.hooks import HOOK_FIELDS
from shared.domain.identifiers import is_uuid, validate_hardware_id
from shared.domain.products import (
    RegistrationKind,
    validate_product,
    validate_service,
    validate_service_change,
)
from shared.errors import InvalidInput, shortened
from shared.hook_settings import hook_change, require_hook_role, store_hook_change
from shared.settings import Secret

AUTO: RegistrationKind = "auto"


async def create_product(pool: Pool, account: Account, body: dict[str, Any]) -> Product:
    name, services = validate_product(body)
    return await products.create_product(pool, account, name, services)


async def list_products(pool: Pool, account: Account) -> list[Product]:
    return await products.list_products(pool, account.id)


async def get_product(pool: Pool, account: Account, product_id: str) -> Product:
    return await products.get_product(pool, account.id, product_id)


async def add_service(pool: Pool, account: Account, product_id: str, body: dict[str, Any]) -> Product:
    return await products.add_service(pool, account, product_id, validate_service(body, None))


async def lock_product(pool: Pool, account: Account, product_id: str) -> Product:
    return await products.lock_product(pool, account, product_id)


async def change_service(
    pool: Pool, account: Account, product_id: str, service_name: str, body: dict[str, Any]
) -> Product:
    """Edit one service of a product (``enabled``, ``port``; ``name`` while the product is
    new; never ``type``); the product as it is then."""
    return await products.change_service(
        pool, account, product_id, service_name, validate_service_change(body)
    )


async def delete_product(pool: Pool, account: Account, product_id: str) -> Product:
    """Delete a product no registration and no device uses; the product as it was."""
    before = await products.get_product(pool, account.id, product_id)
    await products.delete_product(pool, account, product_id)
    return before


# ---------------------------------------------------------------- auto registrations


@dataclass(frozen=True)
class IssuedAutoRegistration:
    """An auto registration just created or changed, with its group keys (slot -> base64)
    when it attests by derived keys, and its hook's signing secret when one was made: shown
    once, in this answer only."""

    registration: Registration
    group_keys: dict[str, str] = field(default_factory=dict)
    hook_secret: str = ""  # a hook's signing secret just made ("": none)


@dataclass(frozen=True)
class DerivedKey:
    """A device key derived for a factory line: of ``hardware_id`` under the group key
    ``slot`` of the registration, base64."""

    registration_id: str
    hardware_id: str
    slot: KeySlot
    device_key: str


async def create_auto_registration(
    pool: Pool,
    account: Account,
    body: dict[str, Any],
    *,
    secret_key: Secret,
    allow_private: bool = False,
) -> IssuedAutoRegistration:
    """An auto registration of ``body`` (``product_id``, optional ``max_devices``,
    ``attestation`` and, for x509, ``hardware_id_from``, and a registration hook:
    ``hook_url``, ``hook_timeout_ms``, ``hook_failure``); for ``derived_key``, two new
    256-bit group keys, and for a hook its signing secret, sealed at rest with
    ``secret_key`` (FLEETREG_SECRET_KEY) and returned in the clear this once.
    ``allow_private``: FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS, for the hook's address.
    Forbidden (403) naming the field for hook fields from a caller below admin, first."""
    require_hook_role(account, body)
    product_id = body.get("product_id")
    if not isinstance(product_id, str) or not product_id:
        raise InvalidInput("product_id is required", field="product_id", rule="required")
    if not is_uuid(product_id):
        raise InvalidInput("product_id is not a product ID", field="product_id", rule="format=uuid")
    max_devices = max_devices_of(body.get("max_devices")) if "max_devices" in body else None
    issued: dict[str, str] = {}
    sealed = None
    attestation_mode = attestation_of(body.get("attestation"))
    hardware_id_from = hardware_id_from_of(body, attestation_mode)
    new_id = str(uuid.uuid4())
    hook = await hook_change(
        body, new_id, actor=account, secret_key=secret_key, allow_private=allow_private, creation=True
    )
    if attestation_mode == "derived_key":
        box = derived_keys.GroupKeyBox(secret_key.reveal().encode())
        issued = {slot: derived_keys.new_group_key() for slot in derived_keys.KEY_SLOTS}
        sealed = GroupKeys(
            new_id,
            box.seal(new_id, "primary", issued["primary"]),
            box.seal(new_id, "secondary", issued["secondary"]),
        )
    # The account's issuing CA of device certificates exists before the registration (created
    # on first use): EST ``cacerts`` of the registration always answers, and a failure here
    # leaves no registration behind whose 500 hid its group keys (shown once) from a retry.
    await certificates.issuing_ca(pool, secret_key.reveal().encode(), account.id)
    registration_id = await registrations.create_registration(
        pool,
        account,
        product_id,
        AUTO,
        "active",
        max_devices,
        group_keys=sealed,
        x509=attestation_mode == "x509",
        hardware_id_from=hardware_id_from,
        registration_id=new_id,
        hook=hook.hook,
    )
    found = await registrations.get_registration(pool, account.id, AUTO, registration_id)
    return IssuedAutoRegistration(found, issued, hook.secret)


def key_slot(body: dict[str, Any]) -> KeySlot:
    """The ``key`` of a rotation or derivation: ``primary`` (the default) or ``secondary``."""
    value = body.get("key", "primary")
    if value == "primary":
        return "primary"
    if value == "secondary":
        return "secondary"
    raise InvalidInput("key must be primary or secondary", field="key", rule="enum=primary,secondary")


async def rotate_group_key(
    pool: Pool, account: Account, registration_id: str, body: dict[str, Any], *, secret_key: Secret
) -> IssuedAutoRegistration:
    """Replace one group key of a derived_key registration (``body``: ``key``, primary or
    secondary); the new key is returned this once. Conflict for another attestation."""
    unknown = sorted(set(body) - {"key"})
    if unknown:
        raise InvalidInput(
            f"unknown field {shortened(unknown[0])!r}", field=shortened(unknown[0]), rule="known_fields"
        )
    slot = key_slot(body)
    group_key = derived_keys.new_group_key()
    sealed = derived_keys.GroupKeyBox(secret_key.reveal().encode()).seal(registration_id, slot, group_key)
    await attestation.rotate_group_key(pool, account, registration_id, slot, sealed)
    found = await registrations.get_registration(pool, account.id, AUTO, registration_id)
    return IssuedAutoRegistration(found, {slot: group_key})


async def derive_device_key(
    pool: Pool, account: Account, registration_id: str, body: dict[str, Any], *, secret_key: Secret
) -> DerivedKey:
    """The device key of ``body``'s ``hardware_id`` (trimmed, case kept) under the group key
    ``key`` (primary, the default, or secondary) of a derived_key registration, for a
    factory line: base64. Audited (the hardware ID, never a key). Conflict for another
    attestation."""
    unknown = sorted(set(body) - {"hardware_id", "key"})
    if unknown:
        raise InvalidInput(
            f"unknown field {shortened(unknown[0])!r}", field=shortened(unknown[0]), rule="known_fields"
        )
    hardware_id = validate_hardware_id(body.get("hardware_id"))
    slot = key_slot(body)
    found = await attestation.sealed_group_keys(pool, account.id, registration_id)
    sealed = found.primary_sealed if slot == "primary" else found.secondary_sealed
    group_key = derived_keys.GroupKeyBox(secret_key.reveal().encode()).open(registration_id, slot, sealed)
    await attestation.record_derivation(pool, account, registration_id, hardware_id, slot)
    return DerivedKey(
        registration_id, hardware_id, slot, derived_keys.derive_device_key(group_key, hardware_id)
    )


async def list_auto_registrations(pool: Pool, account: Account) -> list[Registration]:
    return await registrations.list_registrations(pool, account.id, AUTO)


async def get_auto_registration(pool: Pool, account: Account, registration_id: str) -> Registration:
    return await registrations.get_registration(pool, account.id, AUTO, registration_id)


async def update_auto_registration(
    pool: Pool,
    account: Account,
    registration_id: str,
    body: dict[str, Any],
    *,
    secret_key: Secret,
    allow_private: bool = False,
) -> IssuedAutoRegistration:
    """Change an auto registration's settings: ``max_devices`` (null clears the quota) and
    its hook (``hook_url``, null removes it; a URL gets a new signing secret, shown once;
    ``hook_timeout_ms``, ``hook_failure``)."""
    unknown = sorted(set(body) - {"max_devices", *HOOK_FIELDS})
    if unknown:
        raise InvalidInput(
            f"{shortened(unknown[0])} cannot be changed here (only max_devices and the hook's settings)",
            field=shortened(unknown[0]),
            rule="unknown_field",
        )
    if not body:
        raise InvalidInput("max_devices or a hook setting is required", field="max_devices", rule="required")
    max_devices = max_devices_of(body["max_devices"]) if "max_devices" in body else None
    hook = await hook_change(
        body, registration_id, actor=account, secret_key=secret_key, allow_private=allow_private
    )
    # The hook first: it may still be refused (a timeout or policy without a hook), and a
    # refused call must leave the quota as it was.
    await store_hook_change(pool, account, AUTO, registration_id, hook)
    if "max_devices" in body:
        await registrations.set_max_devices(pool, account, registration_id, max_devices)
    found = await registrations.get_registration(pool, account.id, AUTO, registration_id)
    return IssuedAutoRegistration(found, hook_secret=hook.secret)


AutoAction = Literal["pause", "resume", "rotate-code"]


async def change_auto_registration(
    pool: Pool, account: Account, registration_id: str, action: AutoAction
) -> Registration:
    if action == "rotate-code":
        await registrations.rotate_code(pool, account, registration_id)
    else:
        status = {"pause": "paused", "resume": "active"}[action]
        await registrations.set_registration_status(pool, account, AUTO, registration_id, status)
    return await registrations.get_registration(pool, account.id, AUTO, registration_id)
