from __future__ import annotations

import re

import pytest

from cli.simulate import DeviceResult, FleetPlan, percentile, plan_bulk, plan_fleet, summarize

CODE = "2513F28C-13AD-BEBE-7329-D70C2F5F34A6"


# ------------------------------------------------------------------ percentile


@pytest.mark.parametrize(
    ("pct", "expected"),
    [(1, 1.0), (10, 1.0), (11, 2.0), (50, 5.0), (51, 6.0), (95, 10.0), (99, 10.0), (100, 10.0)],
)
def test_percentile_is_the_nearest_rank(pct: float, expected: float) -> None:
    values = [10.0, 3.0, 1.0, 7.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]  # 1..10, unordered
    assert percentile(values, pct) == expected


def test_percentile_of_one_value_is_that_value() -> None:
    assert [percentile([42.0], p) for p in (1, 50, 99, 100)] == [42.0] * 4


def test_percentile_refuses_no_values_and_ranks_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    for pct in (0, -1, 100.5):
        with pytest.raises(ValueError, match="percentile must be in"):
            percentile([1.0], pct)


# ------------------------------------------------------------------ plan


def test_the_clone_share_is_exact_and_every_clone_copies_an_earlier_original() -> None:
    plan = plan_fleet(CODE, 200, clone_rate=0.25, lost_response_rate=0.0, seed=7)
    clones = [d for d in plan.devices if d.clone_of is not None]
    originals = [d for d in plan.devices if d.clone_of is None]
    assert plan.clones == len(clones) == 50
    assert len({d.hardware_id for d in originals}) == 150
    for clone in clones:
        source = plan.devices[clone.clone_of] if clone.clone_of is not None else None
        assert source is not None and source.clone_of is None
        assert source.index < clone.index
        assert clone.hardware_id == source.hardware_id
        assert (clone.cpu_id, clone.mac) != (source.cpu_id, source.mac)


def test_devices_have_mac_like_hardware_ids_and_distinct_fingerprints() -> None:
    plan = plan_fleet(CODE, 300, clone_rate=0.5, seed=1)
    assert [d.index for d in plan.devices] == list(range(300))
    assert all(re.fullmatch(r"[0-9a-f]{12}", d.hardware_id) for d in plan.devices)
    assert len({(d.cpu_id, d.mac) for d in plan.devices}) == 300
    assert plan.devices[0].clone_of is None


@pytest.mark.parametrize(
    ("devices", "rate", "clones"), [(1, 1.0, 0), (10, 1.0, 9), (10, 0.0, 0), (3, 0.5, 2)]
)
def test_clone_count_rounds_and_keeps_one_original(devices: int, rate: float, clones: int) -> None:
    assert plan_fleet(CODE, devices, clone_rate=rate, seed=3).clones == clones


def test_the_same_seed_gives_the_same_plan_and_another_seed_another() -> None:
    first = plan_fleet(CODE, 100, clone_rate=0.2, lost_response_rate=0.1, seed=42)
    again = plan_fleet(CODE, 100, clone_rate=0.2, lost_response_rate=0.1, seed=42)
    other = plan_fleet(CODE, 100, clone_rate=0.2, lost_response_rate=0.1, seed=43)
    assert first == again
    assert first.seed == 42
    assert first.devices != other.devices


def test_without_a_seed_one_is_drawn_and_reproduces_the_plan() -> None:
    drawn = plan_fleet(CODE, 20, clone_rate=0.3)
    assert plan_fleet(CODE, 20, clone_rate=0.3, seed=drawn.seed) == drawn


def test_the_lost_response_share_is_exact_and_every_device_carries_its_own_key() -> None:
    plan = plan_fleet(CODE, 200, clone_rate=0.1, lost_response_rate=0.05, seed=9)
    lost = [d for d in plan.devices if d.lost_response]
    assert plan.lost_responses == len(lost) == 10
    assert all(d.idempotency_key for d in lost)
    assert len({d.idempotency_key for d in lost}) == 10
    # Every device sends a key (docs/security.md: the key, not the fingerprint, is
    # what gets a secret back before "ready"), and no two devices share one.
    assert len({d.idempotency_key for d in plan.devices}) == len(plan.devices) == 200


def test_the_registration_body_is_what_the_device_api_expects() -> None:
    device = plan_fleet(CODE.lower(), 1, clone_rate=0.0, seed=5).devices[0]
    body = device.registration_body(CODE)
    assert body == {
        "bulk_identification_code": CODE,
        "hardware_id": device.hardware_id,
        "fingerprint": {"cpu_id": device.cpu_id, "mac": device.mac},
    }


def test_the_code_is_normalized_to_upper_case() -> None:
    assert plan_fleet(CODE.lower(), 1, clone_rate=0.0, seed=1).code == CODE


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"code": "not-a-code"}, "UUID form"),
        ({"devices": -1}, "devices must be 0 or more"),
        ({"clone_rate": 1.5}, "clone_rate must be between 0 and 1"),
        ({"clone_rate": float("nan")}, "clone_rate must be between 0 and 1"),
        ({"lost_response_rate": -0.1}, "lost_response_rate must be between 0 and 1"),
    ],
)
def test_bad_plan_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "code": CODE,
        "devices": 10,
        "clone_rate": 0.1,
        "lost_response_rate": 0.05,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        plan_fleet(**arguments)  # type: ignore[arg-type]  # wrong types on purpose: the checks must catch them


def test_a_bulk_plan_keeps_the_list_order_sends_keys_and_has_no_clones() -> None:
    listed = [(f"f0038c1be5{i:02x}", f"key{i}") for i in range(40)]
    plan = plan_bulk(CODE, listed, lost_response_rate=0.1, seed=2)
    assert plan.bulk and plan.clones == 0 and plan.lost_responses == 4
    assert [(d.hardware_id, d.registration_key) for d in plan.devices] == listed
    assert plan.devices[0].registration_body(CODE)["registration_key"] == "key0"
    assert plan_bulk(CODE, listed, lost_response_rate=0.1, seed=2) == plan


@pytest.mark.parametrize(
    ("listed", "message"),
    [
        ([("aa", "k"), ("aa", "k2")], "listed twice"),
        ([("a b", "k")], "hardware ID 'a b'"),
        ([("aa", "")], "no registration key"),
    ],
)
def test_a_bad_bulk_list_is_refused(listed: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_bulk(CODE, listed)


# ------------------------------------------------------------------ summary


def _ok(index: int, claimed: str, assigned: str, latency_s: float) -> DeviceResult:
    return DeviceResult(
        index=index,
        claimed_hardware_id=claimed,
        device_id=f"d{index}",
        hardware_id=assigned,
        clone=assigned != claimed,
        provisioned=True,
        latency_s=latency_s,
    )


def _plan(devices: int) -> FleetPlan:
    return plan_fleet(CODE, devices, clone_rate=0.0, lost_response_rate=0.0, seed=11)


def test_a_clean_run_is_summarized() -> None:
    results = [
        _ok(0, "aa", "aa", 0.1),
        _ok(1, "aa", "aa-1", 0.2),
        _ok(2, "aa", "aa-2", 0.3),
        _ok(3, "bb", "bb", 0.4),
    ]
    summary = summarize(_plan(4), results, duration_s=2.0)
    assert summary.ok
    document = summary.to_dict()
    assert document["devices"] == 4
    assert document["provisioned"] == 4
    assert document["clones_detected"] == 2
    assert document["errors"] == 0 and document["error_kinds"] == {}
    assert document["throughput_per_s"] == 2.0
    assert document["latency_ms"] == {"p50": 200.0, "p95": 400.0, "p99": 400.0}
    assert document["hardware_ids_unique"] is True
    assert document["seed"] == 11


def test_failures_are_counted_by_kind_and_latency_covers_only_provisioned_devices() -> None:
    results = [
        _ok(0, "aa", "aa", 0.5),
        DeviceResult(index=1, claimed_hardware_id="bb", error="refused"),
        DeviceResult(index=2, claimed_hardware_id="cc", error="timeout"),
        DeviceResult(index=3, claimed_hardware_id="dd", error="refused"),
    ]
    summary = summarize(_plan(4), results, duration_s=1.0)
    assert not summary.ok
    assert summary.errors == 3
    assert summary.error_kinds == {"refused": 2, "timeout": 1}
    assert summary.latency_ms == {"p50": 500.0, "p95": 500.0, "p99": 500.0}


def test_no_provisioned_device_gives_no_latency() -> None:
    summary = summarize(_plan(1), [DeviceResult(index=0, claimed_hardware_id="aa", error="connection")], 0.5)
    assert summary.latency_ms == {"p50": None, "p95": None, "p99": None}
    assert summary.throughput_per_s == 0.0


def test_a_shared_hardware_id_is_an_error_and_so_is_an_undetected_clone() -> None:
    results = [_ok(0, "aa", "aa", 0.1), _ok(1, "aa", "aa", 0.1)]
    summary = summarize(_plan(2), results, duration_s=1.0)
    assert summary.hardware_ids_unique is False
    assert summary.error_kinds == {"duplicate_hardware_id": 1, "clone_undetected": 1}
    assert summary.errors == 2


def test_every_claimant_may_be_a_clone_when_the_id_was_taken_before_the_run() -> None:
    results = [_ok(0, "aa", "aa-1", 0.1), _ok(1, "aa", "aa-2", 0.1)]
    assert summarize(_plan(2), results, duration_s=1.0).ok


@pytest.mark.parametrize("value", ["../api-keys?label=", "../devices/disable?", "{x}", "", "1234"])
def test_cli_ids_never_reach_a_url_unchecked(value: str) -> None:
    """An ID argument is checked before it goes into a URL path: ``../api-keys`` once
    made ``fleetreg auto pause`` create an API key."""
    import argparse

    from cli.arguments import object_id

    with pytest.raises(argparse.ArgumentTypeError, match="is not an ID"):
        object_id(value)
    assert object_id(" 7E0D1A4E-0000-4000-8000-00000000000A ") == "7e0d1a4e-0000-4000-8000-00000000000a"
