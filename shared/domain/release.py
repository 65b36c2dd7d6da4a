"""When a device's secrets may be handed out, and when a device may act on its secret.

Both device APIs (the native ``/v1`` and the reference protocol apv/v27) answer with
secrets: the native poll hands the device secret out again, the reference protocol's
register step (step 5) hands out a service's UID and password (or the device secret
for the bulk service). The rules live here once, as pure functions over the
registry's state, so that the two protocols cannot drift apart:

* a secret is handed out only while the device is ``registered`` (not yet
  ``provisioned``: once it confirmed, only an operator's reset hands out new ones) and
  not disabled by the operator (:func:`secret_release`);
* the reference protocol cannot authenticate its caller at step 5, so it also needs
  the caller to be the device that registered: the same fingerprint reported at step
  1, and a device that did not register with an Idempotency-Key (the native API's
  proof, which a fingerprint cannot stand in for); and it waits for the files
  (:func:`service_secret_release`); a device that confirmed already gets a service
  enabled since then (not the bulk service) when it proved its device secret at step
  1, as a native device proves it for its manifest;
* a device acting on its secret (the native device calls, the reference ready step)
  proves the secret first and only then learns that it is disabled: a guesser learns
  nothing about a device's state (:func:`secret_check`).
"""

from __future__ import annotations

import enum
from typing import Protocol

# The lifecycle in which a device may be handed its secrets (registered, not yet provisioned).
REGISTERED = "registered"
PROVISIONED = "provisioned"


class Release(enum.Enum):
    """Whether a device's secrets may be handed out, and if not, why."""

    GRANTED = "granted"
    DISABLED = "disabled"  # by the operator
    PROVISIONED = "provisioned"  # the device confirmed: a reset by the operator is needed
    NOT_REGISTERED = "not registered"  # not registered (yet), or not by this caller
    FILES_PENDING = "files pending"  # registered, its files not rendered yet: ask again


class Check(enum.Enum):
    """A device's secret presented by a caller, with the device's state."""

    ACCEPTED = "accepted"
    UNPROVEN = "unproven"  # a wrong secret, or an unknown device: the same answer
    DISABLED = "disabled"


class Registration(Protocol):
    """What the registry holds about how a device registered (e.g.
    :class:`shared.db.compat.DeviceCredentials`)."""

    @property
    def lifecycle(self) -> str: ...
    @property
    def disabled(self) -> bool: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def registration_key_digest(self) -> str: ...
    @property
    def registered_with_key(self) -> bool: ...


def secret_release(lifecycle: str | None, disabled: bool) -> Release:
    """The device secret is handed out again only until the device confirmed its
    provisioning, and never while it is disabled. ``lifecycle`` None: no device."""
    if disabled:
        return Release.DISABLED
    if lifecycle == PROVISIONED:
        return Release.PROVISIONED
    if lifecycle != REGISTERED:
        return Release.NOT_REGISTERED
    return Release.GRANTED


def claimed_by(device: Registration | None, fingerprint: str, key_digest: str) -> bool:
    """The device is already claimed by this very caller: registered with the fingerprint
    and the registration key digest it presents now (a later service of the same boot)."""
    return (
        device is not None
        and device.lifecycle == REGISTERED
        and bool(fingerprint)
        and device.fingerprint == fingerprint
        and device.registration_key_digest == key_digest
    )


def service_secret_release(
    device: Registration,
    fingerprint: str,
    files_ready: bool,
    *,
    secret_proven: bool = False,
    bulk_service: bool = True,
) -> Release:
    """Whether a caller that reported ``fingerprint`` (at the reference protocol's step 1)
    may be handed a service's secrets of ``device``: the rule of :func:`secret_release`,
    and the caller must be the device that registered, which the reference protocol can
    tell only by the fingerprint.

    A device that registered with an Idempotency-Key (the native API) is recognised
    before "ready" only by that key; the fingerprint is anyone's to claim (CPU ID and MAC
    are not secret), so it never hands out that device's secrets.

    A device that confirmed (provisioned) gets no secret again, except a service's other
    than the bulk service (``bulk_service`` False) when it proves its current device
    secret (``secret_proven``: the secret it reported at step 1 from the same address)
    from the fingerprint it registered with: a service enabled after it was provisioned
    reaches it at its next boot, without a reset, as the native manifest does."""
    verdict = secret_release(device.lifecycle, device.disabled)
    if (
        verdict is Release.PROVISIONED
        and secret_proven
        and not bulk_service
        and bool(fingerprint)
        and device.fingerprint == fingerprint
    ):
        return Release.GRANTED if files_ready else Release.FILES_PENDING
    if verdict is not Release.GRANTED:
        return verdict
    if not fingerprint or device.fingerprint != fingerprint or device.registered_with_key:
        return Release.NOT_REGISTERED
    if not files_ready:
        return Release.FILES_PENDING
    return Release.GRANTED


def secret_check(secret_matches: bool, disabled: bool) -> Check:
    """A caller presenting a device's secret: the secret is checked before anything is
    said about the device (``secret_matches`` False also for an unknown device)."""
    if not secret_matches:
        return Check.UNPROVEN
    if disabled:
        return Check.DISABLED
    return Check.ACCEPTED
