"""The pure rules of issue 13's edits: what a service edit may say and change
(shared.domain.products), and when a device that confirmed already gets the secrets of a
service enabled after it was provisioned (shared.domain.release)."""

from __future__ import annotations

import dataclasses

import pytest

from shared.db.compat import DeviceCredentials
from shared.domain.products import ServiceChange, service_change_refusal, validate_service_change
from shared.domain.release import Release, service_secret_release
from shared.errors import InvalidInput

FINGERPRINT = "f" * 64


def test_a_service_edit_takes_enabled_port_and_name() -> None:
    assert validate_service_change({"enabled": False}) == ServiceChange(enabled=False)
    assert validate_service_change({"port": 8443, "enabled": True}) == ServiceChange(enabled=True, port=8443)
    assert validate_service_change({"name": "admin-2"}) == ServiceChange(name="admin-2")


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"type": "web"}, "type", "immutable"),
        ({"type": "web", "port": 80}, "type", "immutable"),
        ({"enabled": True, "colour": "red"}, "colour", "known_fields"),
        ({}, None, "required"),
        ({"enabled": "yes"}, "enabled", "type=boolean"),
        ({"enabled": None}, "enabled", "type=boolean"),
        ({"enabled": 1}, "enabled", "type=boolean"),
        ({"port": True}, "port", "range=1..65535"),
        ({"port": "22"}, "port", "range=1..65535"),
        ({"port": 0}, "port", "range=1..65535"),
        ({"port": 65536}, "port", "range=1..65535"),
        ({"port": 22.0}, "port", "range=1..65535"),
        ({"name": "has space"}, "name", "charset=[A-Za-z0-9_.-]"),
        ({"name": "nul\0"}, "name", "charset=[A-Za-z0-9_.-]"),
        ({"name": "é"}, "name", "charset=[A-Za-z0-9_.-]"),
        ({"name": "x" * 65}, "name", "charset=[A-Za-z0-9_.-]"),
        ({"name": ".."}, "name", "charset=[A-Za-z0-9_.-]"),
        ({"name": "-x"}, "name", "charset=[A-Za-z0-9_.-]"),
        ({"name": "bulk"}, "name", "unique"),
    ],
)
def test_a_bad_service_edit_names_its_field_and_rule(
    body: dict[str, object], field: str | None, rule: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_service_change(body)
    assert (refused.value.field, refused.value.rule) == (field, rule)


@pytest.mark.parametrize("body", [[], "enabled", None, 3])
def test_a_service_edit_is_an_object(body: object) -> None:
    with pytest.raises(InvalidInput):
        validate_service_change(body)


def test_what_the_products_state_lets_an_edit_change() -> None:
    rename = ServiceChange(name="shell")
    assert service_change_refusal("p", "ssh", "new", False, rename) is None
    assert service_change_refusal("p", "ssh", "locked", False, ServiceChange(enabled=True, port=2)) is None
    locked = service_change_refusal("p", "ssh", "locked", False, rename)
    assert locked is not None and locked.rule == "product_locked"
    # Naming a locked product's service by its own name changes nothing: allowed.
    assert service_change_refusal("p", "ssh", "locked", False, ServiceChange(name="ssh")) is None
    for status in ("new", "locked"):
        bulk = service_change_refusal("p", "bulk", status, True, ServiceChange(enabled=True))
        assert bulk is not None and bulk.rule == "bulk_service_fixed"


def test_an_edit_records_only_the_fields_it_changes() -> None:
    change = ServiceChange(enabled=True, port=22, name=None)
    assert change.changed_from(enabled=False, port=22, name="ssh") == {"enabled": {"from": False, "to": True}}
    assert change.changed_from(enabled=True, port=22, name="ssh") == {}


def _provisioned(**changes: object) -> DeviceCredentials:
    device = DeviceCredentials(
        device_id="0190a2b4-0000-7000-8000-000000000001",
        hardware_id="DE01",
        lifecycle="provisioned",
        disabled=False,
        fingerprint=FINGERPRINT,
        credential_generation=1,
        registration_key_digest="",
        service_uid="80:00:00:00:01:00:00:01",
        provisioned_files=True,
        registered_with_key=False,
    )
    return dataclasses.replace(device, **changes)  # type: ignore[arg-type]


def test_a_confirmed_device_proving_its_secret_gets_a_service_enabled_later() -> None:
    later = {"secret_proven": True, "bulk_service": False}
    assert service_secret_release(_provisioned(), FINGERPRINT, True, **later) is Release.GRANTED
    assert service_secret_release(_provisioned(), FINGERPRINT, False, **later) is Release.FILES_PENDING


@pytest.mark.parametrize(
    ("device", "fingerprint", "secret_proven", "bulk_service", "verdict"),
    [
        # Without the device secret, a confirmed device's secrets need an operator reset.
        (_provisioned(), FINGERPRINT, False, False, Release.PROVISIONED),
        # The bulk service's secret is the device secret itself: never handed out again.
        (_provisioned(), FINGERPRINT, True, True, Release.PROVISIONED),
        # The secret from another board (a copied SD card): not the device that registered.
        (_provisioned(), "e" * 64, True, False, Release.PROVISIONED),
        (_provisioned(), "", True, False, Release.PROVISIONED),
        (_provisioned(disabled=True), FINGERPRINT, True, False, Release.DISABLED),
    ],
)
def test_a_confirmed_device_gets_nothing_more_otherwise(
    device: DeviceCredentials, fingerprint: str, secret_proven: bool, bulk_service: bool, verdict: Release
) -> None:
    assert (
        service_secret_release(
            device, fingerprint, True, secret_proven=secret_proven, bulk_service=bulk_service
        )
        is verdict
    )
