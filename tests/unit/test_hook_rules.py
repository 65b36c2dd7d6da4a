"""The registration hook's rules (shared/domain/hooks.py): its settings' ranges, the
request's body, the answer's fixed shape (anything else is malformed: a failure of the
call) and the circuit breaker's states."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.domain import hooks
from shared.domain.hooks import Breaker, HookAnswer, HookRequest, MalformedAnswer, parse_answer
from shared.errors import InvalidInput


@pytest.mark.parametrize("value", [50, 2000, 10_000])
def test_a_timeout_in_range_is_kept(value: int) -> None:
    assert hooks.checked_timeout_ms(value) == value


@pytest.mark.parametrize("value", [49, 10_001, 0, -1, 1.5, "100", None, True])
def test_a_timeout_out_of_range_or_not_whole_is_refused(value: object) -> None:
    with pytest.raises(InvalidInput) as refused:
        hooks.checked_timeout_ms(value)
    assert (refused.value.field, refused.value.rule) == ("hook_timeout_ms", "range=50..10000")


def test_the_failure_policy_is_closed_or_open() -> None:
    assert [hooks.checked_failure(v) for v in ("closed", "open")] == ["closed", "open"]
    for value in ("Closed", "", None, 1):
        with pytest.raises(InvalidInput) as refused:
            hooks.checked_failure(value)
        assert refused.value.field == "hook_failure"


def test_the_request_body_carries_what_the_contract_names() -> None:
    request = HookRequest(
        call_id="msg_1",
        request_id="r-1",
        hardware_id="H",
        fingerprint="f" * 64,
        decision="clone",
        assigned_hardware_id="H-1",
        product_id="p-1",
        registration_id="g-1",
        attestation="code",
        source="203.0.113.7",
        protocol="native",
    )
    body = json.loads(hooks.request_body(request, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)))
    assert body["type"] == "registration.hook" and body["timestamp"] == "2026-01-02T03:04:05+00:00"
    for name in ("request_id", "hardware_id", "fingerprint", "decision", "product_id"):
        assert body["data"][name] == getattr(request, name)
    assert body["data"]["assigned_hardware_id"] == "H-1"


def test_an_allow_with_enrichment_is_read_whole() -> None:
    raw = json.dumps(
        {
            "allow": True,
            "name": "Kitchen 1",
            "category_a": "site-a",
            "category_b": "",
            "data": {"wifi": "guest"},
            "extra": "ignored",
        }
    ).encode()
    assert parse_answer(raw) == HookAnswer(True, "", "Kitchen 1", "site-a", "", {"wifi": "guest"})


def test_a_deny_keeps_its_reason_and_nulls_count_as_absent() -> None:
    raw = b'{"allow": false, "reason": "not in our production records", "name": null, "data": null}'
    assert parse_answer(raw) == HookAnswer(False, "not in our production records")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'"allow"',
        b"{}",
        b'{"allow": "yes"}',
        b'{"allow": 1}',
        b'{"allow": true, "name": 5}',
        b'{"allow": true, "name": "bad/name"}',
        b'{"allow": true, "name": "' + b"n" * 101 + b'"}',
        b'{"allow": false, "reason": "two\\nlines"}',
        b'{"allow": true, "category_a": ["x"]}',
        b'{"allow": true, "data": ["x"]}',
        b'{"allow": true, "data": {"k": 1}}',
        b'{"allow": true, "data": {"": "v"}}',
        b'{"allow": true, "reason": "' + b"r" * 201 + b'"}',
        b'{"allow": true, "pad": "' + b"x" * hooks.MAX_ANSWER_BYTES + b'"}',
        b"\xff\xfe",
    ],
)
def test_anything_but_the_contracts_shape_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedAnswer):
        parse_answer(raw)


def test_too_many_data_keys_are_malformed() -> None:
    data = {f"k{i}": "v" for i in range(hooks.MAX_DATA_KEYS + 1)}
    with pytest.raises(MalformedAnswer):
        parse_answer(json.dumps({"allow": True, "data": data}).encode())


def test_the_breaker_opens_after_failures_in_a_row_and_lets_one_trial_through() -> None:
    breaker = Breaker(failures_to_open=3, open_s=10.0)
    for now in (0.0, 1.0):
        assert breaker.allow(now)
        breaker.record(False, now)
    assert breaker.allow(1.5) and not breaker.is_open
    breaker.record(True, 1.5)  # a success starts the count again
    for now in (2.0, 3.0, 4.0):
        assert breaker.allow(now)
        breaker.record(False, now)
    assert breaker.is_open
    assert not breaker.allow(13.9)  # open: failed at once
    assert breaker.allow(14.0)  # half-open: one trial
    assert not breaker.allow(14.1)  # only one at a time
    breaker.record(False, 15.0)  # the trial failed: open again, from now
    assert not breaker.allow(24.9) and breaker.allow(25.0)
    breaker.record(True, 25.5)
    assert not breaker.is_open and breaker.allow(25.6) and breaker.allow(25.7)
