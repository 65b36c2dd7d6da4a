"""The registration hook's rules (shared/domain/hooks.py): its settings' ranges, the
request's body, the answer's fixed shape (anything else is malformed: a failure of the
call) and the circuit breaker's states."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from shared.domain import hooks
from shared.domain.dedup import Claim
from shared.domain.hooks import Breaker, HookAnswer, HookRequest, MalformedAnswer, parse_answer
from shared.domain.refusals import ReasonCode, reason_code_of
from shared.errors import InvalidInput
from tests.unit.test_dedup_rules import FP_A, FP_B, KEY, Fleet, H, preregistered, presented_secret


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
        # jsonb keeps neither a NUL nor a lone surrogate: refused here, never a stuck call
        b'{"allow": true, "data": {"k": "a\\u0000b"}}',
        b'{"allow": true, "data": {"k": "\\ud800"}}',
        b'{"allow": true, "data": {"\\ud800": "v"}}',
        b'{"allow": true, "reason": "' + b"r" * 201 + b'"}',
        b'{"allow": true, "pad": "' + b"x" * hooks.MAX_ANSWER_BYTES + b'"}',
        b"\xff\xfe",
        # which of two values the hook meant is unknowable: malformed, as in any fleetreg body
        b'{"allow": true, "allow": false}',
        b'{"allow": true, "data": {"k": "a", "k": "b"}}',
        # a category by the device fields' rules: no spreadsheet formula
        b'{"allow": true, "category_a": "=HYPERLINK(\\"http://x\\")"}',
        b'{"allow": true, "category_b": "@SUM(A1)"}',
        # nesting deeper than the interpreter's stack is malformed, never a RecursionError
        b"[" * 5000,
        b'{"allow": true, "extra": ' + b"[" * 5000 + b"]" * 5000 + b"}",
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


# ---------------------------------------------------------------- the decision path


def test_a_new_device_a_clone_and_a_claimed_preregistered_device_consult_the_hook() -> None:
    fleet = Fleet()
    first = fleet.claim(H, FP_A)
    clone = fleet.claim(H, FP_B)
    assert (hooks.hook_decision(first), hooks.hook_decision(clone)) == ("new", "clone")
    assert clone.hardware_id == f"{H}-1"
    claim = Claim(request_id="r-1", hardware_id=H, fingerprint=FP_B, idempotency_key="boot-1", source="s")
    request = hooks.hook_request(
        claim, clone, "clone", product_id="p", registration_id="g", attestation="code"
    )
    assert (request.decision, request.hardware_id, request.assigned_hardware_id) == ("clone", H, f"{H}-1")

    bulk = Fleet(kind="bulk")
    bulk.family.devices[H.lower()] = preregistered()
    assert hooks.hook_decision(bulk.claim(H, FP_A, key=KEY)) == "claim"


def test_a_retry_a_reboot_and_a_refusal_never_consult_it() -> None:
    fleet = Fleet(max_devices=1)
    first = fleet.claim(H, FP_A, idempotency_key="boot-1")
    retry = fleet.claim(H, FP_A, idempotency_key="boot-1")
    assert retry.decision == "same" and hooks.hook_decision(retry) is None
    assert first.device is not None
    reboot = fleet.claim(H, FP_A, secret=presented_secret(fleet.confirm(H)))
    assert reboot.decision == "same" and hooks.hook_decision(reboot) is None
    refused = fleet.claim("other", FP_A)  # over the quota of 1
    assert refused.decision == "refused" and hooks.hook_decision(refused) is None


def test_a_retry_with_the_same_idempotency_key_is_the_same_call() -> None:
    one = Claim(request_id="r-1", hardware_id="H", fingerprint="f", idempotency_key="boot-1")
    retry = Claim(request_id="r-2", hardware_id="H", fingerprint="f", idempotency_key="boot-1")
    keyless = Claim(request_id="r-3", hardware_id="H", fingerprint="f")
    assert hooks.call_id("g", one) == hooks.call_id("g", retry)
    assert hooks.call_id("g", one) != hooks.call_id("other", one)  # per registration
    assert hooks.call_id("g", keyless) != hooks.call_id(
        "g", Claim(request_id="r-4", hardware_id="H", fingerprint="f")
    )
    assert hooks.call_id("g", one).startswith("msg_")
    # as deduplication takes a key as a retry, whatever the hardware ID's case
    assert hooks.call_id("g", one) == hooks.call_id("g", replace(retry, hardware_id="h"))


def test_one_key_sent_by_boards_of_different_hardware_ids_is_two_calls() -> None:
    # Boards of one copied image share the agent's persisted key: each claim is its own attempt.
    first = Claim(request_id="r-1", hardware_id="H1", fingerprint="f1", idempotency_key="copied")
    second = Claim(request_id="r-2", hardware_id="H2", fingerprint="f2", idempotency_key="copied")
    assert hooks.call_id("g", first) != hooks.call_id("g", second)


def test_an_allow_confirms_with_its_enrichment_and_a_deny_refuses_with_its_reason() -> None:
    allowed = HookAnswer(True, name="n1", category_a="a")
    assert hooks.rule_on("allow", allowed, "closed") == hooks.HookRuling("confirm", enrichment=allowed)
    denied = hooks.rule_on("deny", HookAnswer(False, "unknown serial"), "open")
    assert (denied.action, denied.reason) == ("refuse", f"{hooks.DENIED_REASON}: unknown serial")
    silent = hooks.rule_on("deny", HookAnswer(False), "closed")
    assert silent.reason == hooks.DENIED_REASON
    # The device is told hook_denied, from the stored reason, also when it polls later.
    assert reason_code_of(denied.reason) == reason_code_of(silent.reason) == ReasonCode.HOOK_DENIED


@pytest.mark.parametrize(
    "hook_reason", ["quota reached: auto registration max_devices=1", "unknown Bulk Identification Code", ""]
)
def test_a_hooks_reason_that_reads_like_another_refusal_is_still_a_hook_denial(hook_reason: str) -> None:
    assert reason_code_of(hooks.denied_reason(hook_reason)) == ReasonCode.HOOK_DENIED
    assert not hooks.is_hook_denial(hook_reason)
    with pytest.raises(ValueError):
        hooks.rule_on("allow", None, "closed")
    with pytest.raises(ValueError):
        hooks.rule_on("allow", HookAnswer(False), "closed")


@pytest.mark.parametrize(
    "outcome", ["timeout", "error", "http_error", "redirect", "malformed", "refused", "breaker_open", "busy"]
)
def test_a_failure_answers_pending_when_closed_and_decides_without_the_hook_when_open(outcome: str) -> None:
    closed = hooks.rule_on(outcome, None, "closed")
    assert (closed.action, closed.retry_after_s, closed.reason) == (
        "pending",
        hooks.PENDING_RETRY_AFTER_S,
        "",
    )
    assert hooks.rule_on(outcome, None, "open") == hooks.HookRuling("confirm", failed_open=True)
