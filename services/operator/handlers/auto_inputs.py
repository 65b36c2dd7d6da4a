"""An auto registration's inputs, checked: its attestation, where an x509 device names its
hardware ID and its device quota (its registration hook's: shared/hook_settings.py, which
the bulk API checks a bulk registration's with)."""

from __future__ import annotations

from typing import Any

from shared.domain import derived_keys, x509_attestation
from shared.errors import InvalidInput

# The column's range (a Postgres integer): a larger quota is no quota, so it is refused.
MAX_DEVICES_LIMIT = 2_147_483_647


def attestation_of(value: object) -> str:
    """The ``attestation`` of a new auto registration: ``code`` (the default),
    ``derived_key`` or ``x509`` (a mode not in AVAILABLE_ATTESTATIONS is refused,
    InvalidInput ``rule: available``)."""
    if value is None:
        return "code"
    if value not in derived_keys.ATTESTATIONS:
        raise InvalidInput(
            f"attestation must be one of {', '.join(derived_keys.ATTESTATIONS)}",
            field="attestation",
            rule="enum=" + ",".join(derived_keys.ATTESTATIONS),
        )
    if value not in derived_keys.AVAILABLE_ATTESTATIONS:
        raise InvalidInput(
            f"attestation {value} is not available yet: use "
            + " or ".join(derived_keys.AVAILABLE_ATTESTATIONS),
            field="attestation",
            rule="available=" + ",".join(derived_keys.AVAILABLE_ATTESTATIONS),
        )
    return str(value)


def hardware_id_from_of(body: dict[str, Any], attestation: str) -> str:
    """Where an x509 registration reads a device's hardware ID (``hardware_id_from``:
    shared.domain.x509_attestation.HARDWARE_ID_SOURCES, ``cn`` by default); refused for
    another attestation, which takes the hardware ID the device sends."""
    value = body.get("hardware_id_from")
    if value is None:
        return "cn"
    if attestation != "x509":
        raise InvalidInput(
            "hardware_id_from is an x509 registration's setting",
            field="hardware_id_from",
            rule="attestation=x509",
        )
    if value not in x509_attestation.HARDWARE_ID_SOURCES:
        raise InvalidInput(
            f"hardware_id_from must be one of {', '.join(x509_attestation.HARDWARE_ID_SOURCES)}",
            field="hardware_id_from",
            rule="enum=" + ",".join(x509_attestation.HARDWARE_ID_SOURCES),
        )
    return str(value)


def max_devices_of(value: object) -> int | None:
    """An auto registration's device quota: a whole number 1..MAX_DEVICES_LIMIT, or null (none)."""
    if value is None:
        return None
    if isinstance(value, float) and abs(value) > MAX_DEVICES_LIMIT:
        value = MAX_DEVICES_LIMIT + 1  # a whole number too large for the JSON parser's integers
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(
            "max_devices must be a whole number or null", field="max_devices", rule="type=integer"
        )
    if not 1 <= value <= MAX_DEVICES_LIMIT:
        raise InvalidInput(
            f"max_devices must be 1-{MAX_DEVICES_LIMIT} (null: no quota)",
            field="max_devices",
            rule=f"range=1..{MAX_DEVICES_LIMIT}",
        )
    return value
