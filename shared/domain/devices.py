"""How a device is shown to its operator: online, offline or disabled.

The rule is defined here once. The operator API applies it to each device it shows
(:func:`shown_state`), and the device listing's ``state`` filter applies the same rule
in SQL (``shared/db/devices.py`` ``_STATE_CONDITIONS``) with the cut-off time computed here
(:func:`online_cutoff`), passed as a parameter: a device is online when it is not
disabled, is provisioned and was last seen strictly after the cut-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from shared.errors import Conflict

# The state an operator sees; the lifecycle step (preregistered, registered, provisioned)
# is shown as a field of its own.
ShownState = Literal["online", "offline", "disabled"]

# The lifecycle step after which a device can be online: it has fetched its files.
PROVISIONED = "provisioned"


def online_cutoff(now: datetime, online_ttl_s: float) -> datetime:
    """The time a device must have been seen strictly after to count as online at ``now``."""
    return now - timedelta(seconds=online_ttl_s)


def is_online(
    *, disabled: bool, lifecycle: str, last_seen_at: datetime | None, now: datetime, online_ttl_s: float
) -> bool:
    """A device is online when it is not disabled, is provisioned and was seen within the
    last ``online_ttl_s`` seconds (strictly: a device seen exactly ``online_ttl_s`` ago is
    offline)."""
    return (
        not disabled
        and lifecycle == PROVISIONED
        and last_seen_at is not None
        and last_seen_at > online_cutoff(now, online_ttl_s)
    )


def shown_state(
    *, disabled: bool, lifecycle: str, last_seen_at: datetime | None, now: datetime, online_ttl_s: float
) -> ShownState:
    """disabled (whatever else is true), online (see :func:`is_online`), or offline."""
    if disabled:
        return "disabled"
    online = is_online(
        disabled=disabled, lifecycle=lifecycle, last_seen_at=last_seen_at, now=now, online_ttl_s=online_ttl_s
    )
    return "online" if online else "offline"


@dataclass(frozen=True)
class MoveTarget:
    """The product a device is asked to move to, as the registry has it: its status, the
    kind of registration it serves (None: none yet), the registration a moved device
    would take (the auto registration, or the newest published bulk registration; None:
    none), and that registration's quota and devices (auto only; None: no quota)."""

    product_id: str
    status: str
    registration_kind: str | None
    registration_id: str | None
    max_devices: int | None = None
    devices: int = 0


def move_refusal(
    device_id: str, *, disabled: bool, product_id: str, has_registration_key: bool, target: MoveTarget
) -> Conflict | None:
    """Why a device (in ``product_id``) may not be moved to ``target``, or None when it may.

    A move resets the device for re-provisioning in the target product, so it is refused
    where a reset is (a disabled device: ``device_enabled``), where nothing would change
    (its own product: ``same_product``; a move is never a silent no-op, since a reset the
    operator did not ask for is not one either), where no device could claim it (a product
    not locked: ``product_locked``; a product serving no registration: ``no_registration``),
    where the device could never claim it (a bulk product, for a device without a
    registration key, which came from an auto registration: ``registration_key_required``),
    and past the target auto registration's quota (``max_devices``)."""
    if disabled:
        return Conflict(
            f"device {device_id} is disabled; a disabled device cannot be moved (enable it first)",
            rule="device_enabled",
        )
    if target.product_id == product_id:
        return Conflict(
            f"device {device_id} is already in product {product_id}", field="product_id", rule="same_product"
        )
    if target.status != "locked":
        return Conflict(
            f"product {target.product_id} must be locked first", field="product_id", rule="product_locked"
        )
    if target.registration_id is None:
        return Conflict(
            f"product {target.product_id} serves no registration a device could claim under "
            "(create its auto registration, or publish a bulk registration, first)",
            field="product_id",
            rule="no_registration",
        )
    if target.registration_kind == "bulk" and not has_registration_key:
        return Conflict(
            f"device {device_id} has no registration key (it came from an auto registration), and a "
            f"device of bulk product {target.product_id} claims with its key: list it in a bulk CSV "
            "of that product instead, or move it to an auto product",
            field="product_id",
            rule="registration_key_required",
        )
    if target.max_devices is not None and target.devices >= target.max_devices:
        return Conflict(
            f"the auto registration of product {target.product_id} holds its quota of "
            f"{target.max_devices} devices (raise max_devices first)",
            field="product_id",
            rule="max_devices",
        )
    return None
