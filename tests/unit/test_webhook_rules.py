"""Webhooks' pure rules (shared/domain/webhooks.py) and the signing the notifier does,
checked against the ``standardwebhooks`` package a receiver would verify with."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import orjson
import pytest
import yaml
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.notifier.handlers import signed_headers
from shared.domain import webhooks as rules
from shared.domain.dedup import (
    REASON_BULK_NOT_LISTED,
    Quota,
    reason_clone_limit,
    reason_clone_rate,
    reason_max_devices,
)
from shared.errors import InvalidInput
from shared.events import RegistrationOutcome, decode_as
from shared.webhook_sender import Sender

ROOT = Path(__file__).resolve().parents[2]
R = "0190f4a2-7c1e-7000-8000-00000000000a"  # a request ID


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/fleetreg",
        "http://hooks.example.com:8080/a/b?c=d",
        "https://[2001:db8::1]/x",
        "http://127.0.0.1:18999/hook",
    ],
)
def test_a_plain_http_or_https_url_is_taken_as_it_is(url: str) -> None:
    assert rules.checked_url(url)[0] == url


def test_the_target_names_the_host_and_the_default_port() -> None:
    assert rules.checked_url("https://hooks.example.com/x")[1] == rules.Target(
        "https", "hooks.example.com", 443
    )
    assert rules.checked_url("http://10.0.0.1:81/")[1].port == 81
    assert str(rules.checked_url("http://[::1]:9/")[1].literal) == "::1"
    assert rules.checked_url("http://example.com/")[1].literal is None


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        (None, "type=string"),
        (42, "type=string"),
        (["https://x"], "type=string"),
        ("", "type=string"),
        ("ftp://example.com/x", "scheme=http,https"),
        ("file:///etc/passwd", "scheme=http,https"),
        ("javascript:alert(1)", "scheme=http,https"),
        ("example.com/hook", "scheme=http,https"),
        ("https://", "format=uri"),
        ("https://user:pw@example.com/", "no-userinfo"),
        ("https://example.com/#frag", "no-fragment"),
        ("https://example.com:0/", "range=port"),
        ("https://example.com:99999/", "format=uri"),
        ("https://exa mple.com/", "charset=printable-ascii"),
        ("https://example.com/\x00", "charset=printable-ascii"),
        ("https://exämple.com/", "charset=printable-ascii"),
        ("https://example.com/" + "a" * 2048, "max_length=2048"),
    ],
)
def test_a_bad_url_is_refused_naming_the_rule(url: object, rule: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        rules.checked_url(url)
    assert (refused.value.field, refused.value.rule) == ("url", rule)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.1.2.3",
        "::1",
        "169.254.169.254",  # cloud metadata
        "fe80::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "fd00::1",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104 -- an address to refuse, not one to bind
        "::",
        "224.0.0.1",
        "ff02::1",
        "240.0.0.1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1 (found by an outsider attack)
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "fec0::1",  # site-local, deprecated: is_global calls it global (found by an outsider attack)
        "feff:ffff::1",  # the top of fec0::/10
    ],
)
def test_non_public_addresses_are_refused_unless_allowed(address: str) -> None:
    refusal = rules.address_refusal(address, allow_private=False)
    assert refusal is not None and "FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS" in refusal
    assert rules.address_refusal(address, allow_private=True) is None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert rules.address_refusal(address, allow_private=False) is None


def test_a_non_address_is_refused_even_when_private_ones_are_allowed() -> None:
    assert rules.address_refusal("localhost", allow_private=True) is not None


async def test_the_sender_refuses_an_address_literal_before_connecting() -> None:
    sender = Sender(allow_private=False, timeout_s=1, concurrency=1)  # never opened: no connection made
    answer = await sender.post("http://169.254.169.254/latest/meta-data", "{}", {})
    assert answer.http_status is None and not answer.delivered
    assert answer.error.startswith("refused: 169.254.169.254 is a link-local address")


async def test_the_sender_fails_an_unknown_name_and_an_internal_one_alike() -> None:
    """At delivery as at creation: which internal names exist is not told (localhost is
    the internal name every machine has; .invalid never resolves, RFC 6761)."""
    sender = Sender(allow_private=False, timeout_s=5, concurrency=1)
    await sender.open()
    try:
        internal = await sender.post("http://localhost:9/hook", "{}", {})
        unknown = await sender.post("http://no-such-host.invalid:9/hook", "{}", {})
    finally:
        await sender.close()
    assert internal.http_status is None and unknown.http_status is None
    assert internal.error.replace("localhost", "HOST") == unknown.error.replace(
        "no-such-host.invalid", "HOST"
    )
    assert internal.error.startswith("refused: ") and "127.0.0.1" not in internal.error


def test_a_webhook_is_disabled_on_410_at_once_and_after_the_failure_period() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    five_days = rules.DEFAULT_DISABLE_AFTER_S
    gone = rules.disable_reason(410, now, now, five_days)
    assert gone is not None and "410 Gone" in gone
    assert rules.disable_reason(500, now, now, five_days) is None  # the first failure
    assert rules.disable_reason(None, now - timedelta(days=4, hours=23), now, five_days) is None
    failing = rules.disable_reason(500, now - timedelta(days=5), now, five_days)
    assert failing is not None and "2026-12-02T12:00:00+00:00" in failing
    assert "FLEETREG_WEBHOOK_DISABLE_AFTER_SECONDS" in failing
    assert rules.disable_reason(None, now - timedelta(days=6), now, five_days) is not None  # timeouts too
    assert rules.disable_reason(503, None, now, five_days) is None  # no streak recorded


def test_events_are_a_non_empty_list_of_known_names_each_once() -> None:
    assert rules.checked_events(["device.offline", "bulk.published", "device.offline"]) == (
        "device.offline",
        "bulk.published",
    )
    for bad in (None, [], "device.offline", ["device.deleted"], [1], [None], {"a": 1}):
        with pytest.raises(InvalidInput) as refused:
            rules.checked_events(bad)
        assert refused.value.field == "events"


def test_every_event_is_subscribable_and_named_in_the_operator_openapi_enum() -> None:
    """A new event is one name in EVENT_TYPES, and the OpenAPI document's WebhookEvent
    enum lists the same names in the same order (the API validates with the first, the
    fuzzing and clients read the second)."""
    document = yaml.safe_load((ROOT / "services/operator/openapi.yaml").read_text(encoding="utf-8"))
    assert document["components"]["schemas"]["WebhookEvent"]["enum"] == list(rules.EVENT_TYPES)
    assert rules.checked_events(["device.disabled"]) == ("device.disabled",)


def test_the_retry_schedule_gives_the_pause_before_each_retry_then_none() -> None:
    schedule = rules.DEFAULT_RETRY_SCHEDULE
    assert [rules.retry_delay(n, schedule) for n in range(1, 9)] == [*schedule, None]
    assert sum(schedule) / 3600 > 27  # retried for more than a day
    assert rules.parse_schedule("0.5, 1,2") == (0.5, 1.0, 2.0)
    for bad in ("", "a", "1,-1", "1,nan"):
        with pytest.raises(ValueError):
            rules.parse_schedule(bad)


def test_refusals_are_summarised_by_the_limit_that_refused_them() -> None:
    assert rules.refusal_reason("max_devices", reason_max_devices(5)) == "quota"
    assert rules.refusal_reason("clone_limit", reason_clone_limit(100, 3600)) == "quota"
    # a 429 the device retries
    assert rules.refusal_reason("clone_rate", reason_clone_rate(20, 60)) == "throttled"
    assert rules.refusal_reason(None, REASON_BULK_NOT_LISTED) == "wrong_key"
    assert rules.refusal_reason(None, "device disabled by the operator") == "other"
    # The typed limit decides, not the text.
    assert rules.refusal_reason(None, reason_max_devices(5)) == "other"
    assert rules.refusal_reason("max_devices", "some other words") == "quota"
    # Every limit is summarised as one of the documented reasons.
    assert {rules.refusal_reason(q, "") for q in get_args(Quota)} <= set(rules.REFUSAL_REASONS)


def test_a_refusal_of_the_previous_release_is_summarised_by_its_text_as_before() -> None:
    """An outcome without ``quota`` (the release before the field): the limit is read from
    the reason's start, only for such records."""
    for reason, summary in [
        (reason_max_devices(5), "quota"),
        (reason_clone_limit(100, 3600), "quota"),
        (reason_clone_rate(20, 60), "throttled"),
        (REASON_BULK_NOT_LISTED, "wrong_key"),
        ("device disabled by the operator", "other"),
    ]:
        old = decode_as(
            RegistrationOutcome,
            orjson.dumps(
                {
                    "type": "registration.outcome",
                    "v": 1,
                    "request_id": R,
                    "status": "refused",
                    "reason": reason,
                }
            ),
        )
        assert old.quota == ""
        assert rules.refusal_reason(old.refused_by(), old.reason) == summary, reason


def test_an_event_id_is_the_same_for_the_same_cause_and_differs_otherwise() -> None:
    assert rules.event_id("device.registered", "r1") == rules.event_id("device.registered", "r1")
    assert rules.event_id("device.registered", "r1") != rules.event_id("device.clone_detected", "r1")
    assert rules.event_id("device.registered", "r1") != rules.event_id("device.registered", "r2")


def test_a_sealed_secret_opens_only_with_its_key_and_for_its_webhook() -> None:
    box = rules.SecretBox(b"k" * 40)
    secret = rules.new_secret()
    sealed = box.seal("webhook-1", secret)
    assert secret.encode() not in sealed
    assert box.open("webhook-1", sealed) == secret
    with pytest.raises(ValueError, match="FLEETREG_SECRET_KEY"):
        box.open("webhook-2", sealed)
    with pytest.raises(ValueError, match="FLEETREG_SECRET_KEY"):
        rules.SecretBox(b"j" * 40).open("webhook-1", sealed)
    assert box.seal("webhook-1", secret) != sealed  # a fresh nonce each time


def test_the_signature_verifies_with_the_standardwebhooks_package() -> None:
    secret = rules.new_secret()
    assert secret.startswith("whsec_")
    body = json.dumps(rules.body("device.registered", datetime.now(UTC), {"device_id": "d"}))
    headers = signed_headers(secret, "msg_1", body, datetime.now(UTC))
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace('"d"', '"e"'), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(rules.new_secret()).verify(body, headers)


def test_a_refusal_reads_as_english() -> None:
    assert "is an unspecified address" in (rules.address_refusal("0.0.0.0", allow_private=False) or "")  # noqa: S104
    assert "is a loopback address" in (rules.address_refusal("127.0.0.1", allow_private=False) or "")
