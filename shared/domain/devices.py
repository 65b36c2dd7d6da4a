"""How a device is shown to its operator: online, offline or disabled.

The rule is defined here once. The operator API applies it to each device it shows
(:func:`shown_state`), and the device listing's ``state`` filter applies the same rule
in SQL (``shared/db/devices.py`` ``_STATE_CONDITIONS``) with the cut-off time computed here
(:func:`online_cutoff`), passed as a parameter: a device is online when it is not
disabled, is provisioned and was last seen strictly after the cut-off.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

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
