from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

import aiohttp
import pytest

from cli.simulate import (
    DeviceApi,
    DeviceFailure,
    DeviceResult,
    DeviceRetries,
    FleetPlan,
    RunOptions,
    _provision,
    _Ready,
    percentile,
    plan_bulk,
    plan_fleet,
    retry_kind,
    summarize,
    verify_inline_files,
)
from tests.support.fake_time import FakeTime

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


# ------------------------------------------------------------------ retries


def _retries(
    time_: FakeTime, deadline_s: float = 1e9, initial: float = 0.5, cap: float = 4.0
) -> DeviceRetries:
    options = RunOptions(
        deadline_s=deadline_s,
        initial_backoff_s=initial,
        max_backoff_s=cap,
        clock=time_.clock,
        sleep=time_.sleep,
    )
    return DeviceRetries(options, time_.clock() + deadline_s)


def _failing(failures: list[BaseException], result: str = "done") -> Callable[[], Awaitable[str]]:
    """An operation raising each of ``failures`` in turn, then returning ``result``."""
    calls = iter(failures)

    async def operation() -> str:
        failure = next(calls, None)
        if failure is not None:
            raise failure
        return result

    return operation


@pytest.mark.parametrize(("draw", "expected"), [("high", [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]), ("low", [0.0] * 6)])
async def test_the_backoff_window_doubles_up_to_its_cap(
    monkeypatch: pytest.MonkeyPatch, draw: str, expected: list[float]
) -> None:
    """Full jitter draws uniformly in [0, min(cap, initial * 2**(retry - 1))]: pinned to
    either end of the draw, the waits are the window's bounds."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high if draw == "high" else low)
    time_ = FakeTime()
    retries = _retries(time_)
    failures: list[BaseException] = [aiohttp.ClientConnectionError() for _ in expected]
    assert await retries.call(_failing(failures)) == "done"
    assert time_.waits == expected
    assert retries.counts == {"connection": 6}


async def test_jittered_waits_stay_within_the_window_and_spread() -> None:
    time_ = FakeTime()
    retries = _retries(time_, initial=0.5, cap=4.0)
    failures: list[BaseException] = [TimeoutError() for _ in range(200)]
    await retries.call(_failing(failures))
    windows = [min(4.0, 0.5 * 2**n) for n in range(200)]
    assert all(0.0 <= wait <= window for wait, window in zip(time_.waits, windows, strict=True))
    assert len(set(time_.waits)) > 100  # random, not a fixed schedule
    assert retries.counts == {"timeout": 200}


async def test_retry_after_is_the_floor_of_the_wait() -> None:
    time_ = FakeTime()
    retries = _retries(time_, initial=0.5, cap=4.0)
    failures: list[BaseException] = [
        DeviceFailure("http_5xx", status=503, retry_after=7.0),
        DeviceFailure("http_429", status=429, retry_after=2.0),
        DeviceFailure("http_5xx", status=502),
    ]
    await retries.call(_failing(failures))
    first, second, third = time_.waits
    assert 7.0 <= first <= 7.0 + 0.5
    assert 2.0 <= second <= 2.0 + 1.0
    assert 0.0 <= third <= 2.0
    assert retries.counts == {"http_503": 1, "http_429": 1, "http_502": 1}


async def test_the_deadline_stops_the_retries_and_the_last_fault_is_raised() -> None:
    time_ = FakeTime()
    retries = _retries(time_, deadline_s=30.0, initial=0.5, cap=4.0)
    attempts = 0

    async def always_500() -> str:
        nonlocal attempts
        attempts += 1
        raise DeviceFailure("http_5xx", "register", status=500)

    with pytest.raises(DeviceFailure) as raised:
        await retries.call(always_500)
    assert raised.value.status == 500
    assert time_.now < 30.0  # no attempt started at or after the deadline
    assert attempts == len(time_.waits) + 1 > 5
    assert retries.counts == {"http_500": attempts - 1}


async def test_a_retry_after_beyond_the_deadline_ends_the_retries_at_once() -> None:
    time_ = FakeTime()
    retries = _retries(time_, deadline_s=10.0)
    with pytest.raises(DeviceFailure):
        await retries.call(_failing([DeviceFailure("http_5xx", status=503, retry_after=60.0)]))
    assert time_.waits == [] and retries.counts == {}


@pytest.mark.parametrize(
    "failure",
    [
        DeviceFailure("refused", "blocked"),
        DeviceFailure("http_404", status=404),
        DeviceFailure("http_401", status=401),
        DeviceFailure("bad_answer", "body is not JSON"),
    ],
)
async def test_a_definitive_answer_is_not_retried(failure: DeviceFailure) -> None:
    time_ = FakeTime()
    retries = _retries(time_)
    with pytest.raises(DeviceFailure):
        await retries.call(_failing([failure]))
    assert time_.waits == [] and retries.counts == {}


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (aiohttp.ClientConnectionError(), "connection"),
        (aiohttp.ServerDisconnectedError(), "connection"),
        (aiohttp.ClientPayloadError("cut"), "connection"),
        (aiohttp.ServerTimeoutError(), "timeout"),
        (TimeoutError(), "timeout"),
        (DeviceFailure("http_5xx", status=500), "http_500"),
        (DeviceFailure("http_5xx", status=503), "http_503"),
        (DeviceFailure("http_429", status=429), "http_429"),
        (DeviceFailure("http_403", status=403), None),
        (DeviceFailure("refused"), None),
        (ValueError("bug"), None),
    ],
)
def test_retry_kinds(failure: BaseException, kind: str | None) -> None:
    assert retry_kind(failure) == kind


def test_the_summary_counts_retries_by_kind_and_times_to_provisioned() -> None:
    results = [
        _ok(0, "aa", "aa", 1.0),
        _ok(1, "bb", "bb", 2.0),
        _ok(2, "cc", "cc", 30.0),
        DeviceResult(index=3, claimed_hardware_id="dd", error="http_5xx", retries={"http_500": 9}),
    ]
    results[1].retries = {"connection": 2, "http_503": 1}
    results[2].retries = {"connection": 1, "http_429": 3}
    summary = summarize(_plan(4), results, duration_s=40.0)
    document = summary.to_dict()
    assert document["retries"] == 16
    assert document["retry_kinds"] == {"connection": 3, "http_429": 3, "http_500": 9, "http_503": 1}
    assert document["devices_retried"] == 3
    assert document["time_to_provisioned_s"] == {"p50": 2.0, "p95": 30.0, "p99": 30.0}
    assert document["latency_ms"] == {"p50": 2000.0, "p95": 30000.0, "p99": 30000.0}
    assert document["error_kinds"] == {"http_5xx": 1}


# ------------------------------------------------------------------ two-call boot


def _inline_ready(raw: bytes, **entry: object) -> _Ready:
    """A two-call ready answer holding one inline file, with the entry's fields as given."""
    item: dict[str, object] = {
        "name": "02-ssh.conf",
        "provisioning_id": PROVISIONING_ID,
        "size": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "url": "http://h/v1/devices/d/files/02-ssh.conf",
        "content": raw.decode("ascii"),
        **entry,
    }
    manifest = {"device_id": "d", "hardware_id": "h", "files": [item]}
    return _Ready("r", "d", "h", "h", False, "/v1/devices/d/manifest", "secret", manifest)


PROVISIONING_ID = "D8179AB6-0000-4000-8000-000000000001"
FILE = f"# ssh\n#begin\n{PROVISIONING_ID}\nport 22\n#end\n".encode()


def test_inline_files_of_their_size_and_digest_pass() -> None:
    assert verify_inline_files(_inline_ready(FILE)) == 1


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ({"size": len(FILE) + 1}, "file_mismatch"),
        ({"sha256": "0" * 64}, "file_mismatch"),
        ({"content": FILE.decode() + " "}, "file_mismatch"),  # one byte more than size says
        ({"content": "é"}, "file_mismatch"),  # not ASCII
        ({"content": None}, "bad_answer"),
        ({"provisioning_id": "short"}, "bad_answer"),
    ],
)
def test_an_inline_file_that_is_not_what_its_entry_says_fails_the_device(
    entry: dict[str, object], kind: str
) -> None:
    with pytest.raises(DeviceFailure) as failed:
        verify_inline_files(_inline_ready(FILE, **entry))
    assert failed.value.kind == kind


def test_an_inline_manifest_about_another_device_fails_the_device() -> None:
    ready = _inline_ready(FILE)
    assert ready.manifest is not None
    other = dataclasses.replace(ready, manifest={**ready.manifest, "device_id": "other"})
    with pytest.raises(DeviceFailure) as failed:
        verify_inline_files(other)
    assert failed.value.kind == "manifest_mismatch"


def test_the_inline_manifest_is_never_shown() -> None:
    assert "manifest=" not in repr(_inline_ready(FILE)) and "port 22" not in repr(_inline_ready(FILE))


# ------------------------------------------------------------------ the device API's URLs


@pytest.mark.parametrize(
    ("base", "given", "expected"),
    [
        ("http://h:8080", "/v1/registrations?include=files", "http://h:8080/v1/registrations?include=files"),
        ("http://h:8080/", "/v1/devices/d/manifest", "http://h:8080/v1/devices/d/manifest"),
        ("http://h:8080/api", "/v1/x", "http://h:8080/v1/x"),
        (
            "http://h:8080",
            "http://h:8080/v1/devices/d/files/a.conf",
            "http://h:8080/v1/devices/d/files/a.conf",
        ),
        ("http://h:8080", "v1/x", "http://h:8080/v1/x"),
    ],
)
def test_urls_on_the_device_api_are_made_absolute(base: str, given: str, expected: str) -> None:
    api = DeviceApi(None, base, RunOptions())  # type: ignore[arg-type]  # no call is made
    assert api.url(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        "http://evil:8080/v1/x",
        "https://h:8080/v1/x",
        "http://h:8081/v1/x",
        "//evil/v1/x",
        "http://h:8080@evil/x",
    ],
)
def test_a_url_off_the_device_api_is_refused(given: str) -> None:
    """Secrets go only where the registration was made."""
    api = DeviceApi(None, "http://h:8080", RunOptions())  # type: ignore[arg-type]  # no call is made
    with pytest.raises(DeviceFailure) as refused:
        api.url(given)
    assert refused.value.kind == "foreign_url"


# ------------------------------------------------------------------ files changed while downloading


class ChangingApi:
    """A device API whose files change (a rename) after the first ``changes`` manifests:
    each manifest lists the digest of the file as it is when the manifest is read, and the
    file itself is one version ahead until the changes stop."""

    def __init__(self, changes: int) -> None:
        self.changes = changes
        self.version = 0
        self.readies = 0

    def _content(self) -> bytes:
        return f"#begin\n{PROVISIONING_ID}\ndevice_name v{self.version}\n#end\n".encode()

    async def manifest(self, ready: _Ready) -> dict[str, Any]:
        content = self._content()
        if self.changes:  # renamed between this manifest and the download
            self.changes -= 1
            self.version += 1
        entry = {
            "url": "/v1/devices/d/files/ssh.conf",
            "provisioning_id": PROVISIONING_ID,
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
        }
        return {"device_id": ready.device_id, "hardware_id": ready.hardware_id, "files": [entry]}

    async def file(self, url: str, secret: str) -> bytes:
        return self._content()

    async def ready(self, ready: _Ready) -> None:
        self.readies += 1


@pytest.mark.parametrize(("changes", "provisioned"), [(0, True), (2, True), (3, False)])
async def test_a_file_changed_since_its_manifest_is_fetched_again_a_bounded_number_of_times(
    changes: int, provisioned: bool
) -> None:
    api = ChangingApi(changes)
    retries = _retries(FakeTime())
    ready = _Ready("r", "d", "h", "h", False, "/v1/devices/d/manifest", "secret")
    if provisioned:
        await _provision(cast(DeviceApi, api), ready, retries)
        assert api.readies == 1
        assert retries.counts == ({"file_changed": changes} if changes else {})
    else:
        with pytest.raises(DeviceFailure, match="sha256|size"):
            await _provision(cast(DeviceApi, api), ready, retries)
        assert api.readies == 0  # never confirms files it could not verify


def test_a_derived_key_devices_body_carries_a_fresh_proof_of_its_own_key() -> None:
    from cli.simulate import DevicePlan
    from shared.domain import derived_keys

    group_key = derived_keys.new_group_key()
    device = DevicePlan(index=0, hardware_id="sim-1", cpu_id="c", mac="m")
    first, second = device.registration_body("C", group_key), device.registration_body("C", group_key)
    assert "proof" not in device.registration_body("C")
    assert first["proof"]["nonce"] != second["proof"]["nonce"]
    for body in (first, second):
        shown = derived_keys.Proof(**body["proof"])
        assert derived_keys.proof_matches((group_key,), "sim-1", shown)
        assert not derived_keys.proof_matches((group_key,), "sim-2", shown)
