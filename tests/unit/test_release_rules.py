"""When a device's secrets may be handed out (shared/domain/release.py): the rules the
native API's poll and the reference protocol's register and ready steps share."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from shared.db.compat import DeviceCredentials
from shared.domain.release import (
    Check,
    Release,
    claimed_by,
    secret_check,
    secret_release,
    service_secret_release,
)

FINGERPRINT = "f" * 64
KEY_DIGEST = "k" * 64
LIFECYCLES = (None, "preregistered", "registered", "provisioned")


def device(**changes: object) -> DeviceCredentials:
    """A device registered by the caller that reported FINGERPRINT, its files rendered."""
    registered = DeviceCredentials(
        device_id="0190a2b4-0000-7000-8000-000000000001",
        hardware_id="DE01",
        lifecycle="registered",
        disabled=False,
        fingerprint=FINGERPRINT,
        credential_generation=1,
        registration_key_digest=KEY_DIGEST,
        service_uid="80:00:00:00:01:00:00:01",
        provisioned_files=True,
        registered_with_key=False,
    )
    return dataclasses.replace(registered, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("lifecycle", "disabled"), list(itertools.product(LIFECYCLES, (False, True))))
def test_the_device_secret_is_handed_out_only_while_registered_and_enabled(
    lifecycle: str | None, disabled: bool
) -> None:
    """The native poll's rule: the old inline check was ``registered and not disabled``."""
    granted = secret_release(lifecycle, disabled) is Release.GRANTED
    assert granted == (lifecycle == "registered" and not disabled)


def test_why_the_device_secret_is_not_handed_out() -> None:
    assert secret_release("registered", True) is Release.DISABLED
    assert secret_release("provisioned", True) is Release.DISABLED  # disabled is said first
    assert secret_release("provisioned", False) is Release.PROVISIONED
    assert secret_release("preregistered", False) is Release.NOT_REGISTERED
    assert secret_release(None, False) is Release.NOT_REGISTERED


def test_a_registered_device_gets_its_service_secret_from_the_device_that_registered_it() -> None:
    assert service_secret_release(device(), FINGERPRINT, files_ready=True) is Release.GRANTED


def test_the_service_secret_waits_for_the_files() -> None:
    found = device(service_uid=None)
    assert not found.files_ready
    assert service_secret_release(found, FINGERPRINT, found.files_ready) is Release.FILES_PENDING
    found = device(provisioned_files=False)
    assert not found.files_ready
    assert service_secret_release(found, FINGERPRINT, found.files_ready) is Release.FILES_PENDING
    assert device().files_ready


@pytest.mark.parametrize(
    ("changes", "fingerprint", "verdict"),
    [
        ({"disabled": True}, FINGERPRINT, Release.DISABLED),
        ({"lifecycle": "provisioned"}, FINGERPRINT, Release.PROVISIONED),
        ({"lifecycle": "preregistered"}, FINGERPRINT, Release.NOT_REGISTERED),
        ({}, "", Release.NOT_REGISTERED),  # nothing reported at step 1 from this address
        ({}, "e" * 64, Release.NOT_REGISTERED),  # another board (or anyone else)
        ({"fingerprint": ""}, "", Release.NOT_REGISTERED),  # no fingerprint on either side
        # Registered through the native API with an Idempotency-Key: a fingerprint,
        # anyone's to claim, never hands out that device's secrets.
        ({"registered_with_key": True}, FINGERPRINT, Release.NOT_REGISTERED),
        # The refusals come before "pending": files not ready does not hide them.
        ({"disabled": True, "service_uid": None}, FINGERPRINT, Release.DISABLED),
        ({"lifecycle": "provisioned", "provisioned_files": False}, FINGERPRINT, Release.PROVISIONED),
        ({"registered_with_key": True, "service_uid": None}, FINGERPRINT, Release.NOT_REGISTERED),
        ({"fingerprint": "e" * 64, "service_uid": None}, FINGERPRINT, Release.NOT_REGISTERED),
        # Disabled is said before provisioned, provisioned before a fingerprint mismatch.
        ({"disabled": True, "lifecycle": "provisioned"}, "", Release.DISABLED),
        ({"lifecycle": "provisioned"}, "", Release.PROVISIONED),
    ],
)
def test_the_service_secret_is_refused(
    changes: dict[str, object], fingerprint: str, verdict: Release
) -> None:
    found = device(**changes)
    assert service_secret_release(found, fingerprint, found.files_ready) is verdict


def test_the_native_and_reference_rules_agree_on_the_device_state() -> None:
    """Whatever the caller proves, the reference protocol never hands out a secret the
    native poll would withhold for the device's state."""
    for lifecycle, disabled in itertools.product(LIFECYCLES[1:], (False, True)):
        found = device(lifecycle=lifecycle, disabled=disabled)
        native = secret_release(lifecycle, disabled)
        reference = service_secret_release(found, FINGERPRINT, found.files_ready)
        assert (reference is Release.GRANTED) <= (native is Release.GRANTED)
        if native is not Release.GRANTED:
            assert reference is native


def test_a_device_is_claimed_by_the_caller_with_its_fingerprint_and_key() -> None:
    assert claimed_by(device(), FINGERPRINT, KEY_DIGEST)
    assert not claimed_by(None, FINGERPRINT, KEY_DIGEST)
    assert not claimed_by(device(), FINGERPRINT, "other")
    assert not claimed_by(device(), "e" * 64, KEY_DIGEST)
    assert not claimed_by(device(fingerprint=""), "", KEY_DIGEST)  # no fingerprint proves nothing
    assert not claimed_by(device(lifecycle="preregistered"), FINGERPRINT, KEY_DIGEST)
    assert not claimed_by(device(lifecycle="provisioned"), FINGERPRINT, KEY_DIGEST)
    # Claimed whether or not it is disabled: the register step then refuses it as disabled.
    assert claimed_by(device(disabled=True), FINGERPRINT, KEY_DIGEST)
    assert claimed_by(device(registration_key_digest=""), FINGERPRINT, "")


def test_the_secret_is_checked_before_the_device_state_is_told() -> None:
    assert secret_check(True, False) is Check.ACCEPTED
    assert secret_check(True, True) is Check.DISABLED
    # A wrong secret (or an unknown device) learns nothing of the device's state.
    assert secret_check(False, True) is Check.UNPROVEN
    assert secret_check(False, False) is Check.UNPROVEN
