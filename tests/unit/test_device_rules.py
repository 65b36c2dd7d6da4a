"""How a device is shown (shared.domain.devices): online, offline or disabled, one rule
for the states shown and for the listing's state filter (its cut-off time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.domain.devices import is_online, online_cutoff, shown_state

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
TTL = 300.0


RECENT = NOW - timedelta(seconds=10)


def online(
    *, disabled: bool = False, lifecycle: str = "provisioned", last_seen_at: datetime | None = RECENT
) -> bool:
    return is_online(
        disabled=disabled, lifecycle=lifecycle, last_seen_at=last_seen_at, now=NOW, online_ttl_s=TTL
    )


def state(
    *, disabled: bool = False, lifecycle: str = "provisioned", last_seen_at: datetime | None = RECENT
) -> str:
    return shown_state(
        disabled=disabled, lifecycle=lifecycle, last_seen_at=last_seen_at, now=NOW, online_ttl_s=TTL
    )


def test_the_cutoff_is_the_ttl_before_now() -> None:
    assert online_cutoff(NOW, TTL) == NOW - timedelta(seconds=300)
    assert online_cutoff(NOW, 0.5) == NOW - timedelta(milliseconds=500)


def test_a_provisioned_device_seen_within_the_ttl_is_online() -> None:
    assert online()
    assert state() == "online"


def test_seen_strictly_after_the_cutoff_counts_exactly_at_it_does_not() -> None:
    cutoff = online_cutoff(NOW, TTL)
    assert online(last_seen_at=cutoff + timedelta(microseconds=1))
    assert not online(last_seen_at=cutoff)
    assert not online(last_seen_at=cutoff - timedelta(microseconds=1))
    assert state(last_seen_at=cutoff) == "offline"


def test_a_device_never_seen_is_offline() -> None:
    assert not online(last_seen_at=None)
    assert state(last_seen_at=None) == "offline"


@pytest.mark.parametrize("lifecycle", ["preregistered", "registered"])
def test_a_device_not_provisioned_is_offline_however_recently_seen(lifecycle: str) -> None:
    assert not online(lifecycle=lifecycle, last_seen_at=NOW)
    assert state(lifecycle=lifecycle, last_seen_at=NOW) == "offline"


@pytest.mark.parametrize("last_seen_at", [NOW, None, NOW - timedelta(days=1)])
def test_a_disabled_device_is_shown_disabled_and_never_online(last_seen_at: datetime | None) -> None:
    assert not online(disabled=True, last_seen_at=last_seen_at)
    assert state(disabled=True, last_seen_at=last_seen_at) == "disabled"


def test_a_device_seen_in_the_future_of_now_is_online() -> None:
    """Clocks differ (the heartbeat's time comes from the pipeline): a time after ``now``
    is after the cut-off too."""
    assert online(last_seen_at=NOW + timedelta(seconds=5))


def test_the_rule_is_the_one_the_view_used_before_within_a_microsecond() -> None:
    """The view used to compute ``(now - last_seen).total_seconds() < ttl``."""
    for seconds_ago in (0.0, 1.5, 299.999, 299.999999, 300.0, 300.000001, 301.0, 10_000.0):
        last_seen = NOW - timedelta(seconds=seconds_ago)
        assert online(last_seen_at=last_seen) == ((NOW - last_seen).total_seconds() < TTL), seconds_ago
