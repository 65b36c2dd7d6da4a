"""Event encoding and decoding: round trips, loud failures, forward compatibility within
one schema version (unknown fields ignored) and the upcast of older versions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, get_args

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import events
from shared.domain.dedup import Quota, reason_clone_limit, reason_clone_rate, reason_max_devices
from shared.events import (
    BulkPublish,
    BulkPublished,
    DeviceSignal,
    Event,
    QuotaOrNone,
    RegistrationDecided,
    RegistrationOutcome,
    RegistrationRequested,
    SchemaError,
    decode,
    decode_as,
    encode,
    register_upcaster,
)

R = "0190f4a2-7c1e-7000-8000-00000000000a"  # a request ID (UUID v7)
A = "11111111-2222-4333-8444-555555555555"
P = "21111111-2222-4333-8444-555555555555"
D = "31111111-2222-4333-8444-555555555555"
B = "41111111-2222-4333-8444-555555555555"
CODE = "5A1B2C3D-0000-4000-8000-00000000C0DE"
T = 1_765_000_000.5  # December 2025, Unix seconds

SAMPLES: list[Event] = [
    RegistrationRequested(
        request_id=R,
        received_at=T,
        bulk_identification_code=CODE,
        hardware_id="b827eb8905e5",
        fingerprint="0f" * 16,
    ),
    RegistrationDecided(
        request_id=R,
        account_id=A,
        product_id=P,
        device_id=D,
        hardware_id="b827eb8905e5-1",
        decision="new",
        credential_generation=1,
    ),
    RegistrationOutcome(request_id=R, status="refused", reason="code unknown"),
    DeviceSignal(device_id=D, kind="ready", at=T),
    BulkPublish(registration_id=B, after_line=7),
    BulkPublished(registration_id=B, account_id=A, product_id=P, published=3, conflicts=0, at=T),
]


def test_every_event_survives_a_round_trip() -> None:
    for event in SAMPLES:
        assert decode(encode(event)) == event


def test_a_field_added_with_a_default_may_be_absent() -> None:
    raw = orjson.dumps({"type": "registration.outcome", "v": 1, "request_id": R, "status": "ready"})
    assert decode(raw) == RegistrationOutcome(request_id=R, status="ready")


def _refusal(**fields: object) -> bytes:
    return orjson.dumps(
        {"type": "registration.outcome", "v": 1, "request_id": R, "status": "refused", **fields}
    )


@pytest.mark.parametrize("quota", ["none", *get_args(Quota)])
def test_a_refusal_carries_the_limit_that_refused_it(quota: QuotaOrNone) -> None:
    refusal = RegistrationOutcome(request_id=R, status="refused", reason="words", quota=quota)
    raw = encode(refusal)
    assert orjson.loads(raw)["quota"] == quota  # written, as every field
    assert decode(raw) == refusal
    # The typed field is what counts, whatever the text says.
    assert refusal.refused_by() == (None if quota == "none" else quota)
    assert replace(refusal, reason=reason_max_devices(5)).refused_by() == (None if quota == "none" else quota)


def test_a_refusal_of_the_previous_release_decodes_and_its_limit_is_read_from_its_text() -> None:
    """Before the field, a refusal said its limit in its reason only: it still decodes (the
    default, "": not said), and only such a record is read by its text."""
    for reason, quota in [
        (reason_max_devices(5), "max_devices"),
        (reason_clone_limit(100, 3600), "clone_limit"),
        (reason_clone_rate(20, 60), "clone_rate"),
        ("unknown bulk identification code", None),
    ]:
        old = decode_as(RegistrationOutcome, _refusal(reason=reason, decision="refused"))
        assert old == RegistrationOutcome(request_id=R, status="refused", reason=reason, decision="refused")
        assert old.quota == ""
        assert old.refused_by() == quota, reason


def test_a_ready_outcome_is_refused_by_no_limit() -> None:
    assert RegistrationOutcome(request_id=R, status="ready").quota == ""
    assert RegistrationOutcome(request_id=R, status="ready").refused_by() is None
    assert RegistrationOutcome(request_id=R, status="ready", quota="max_devices").refused_by() is None


def test_a_field_unknown_to_this_version_is_ignored() -> None:
    """A newer producer added a defaulted field without bumping the version: an older
    consumer decodes the record as if the field were not there."""
    raw = orjson.dumps(
        {
            "type": "device.signal",
            "v": 1,
            "device_id": D,
            "kind": "heartbeat",
            "at": T,
            "x": 1,
            "nested": {"a": [1]},
        }
    )
    assert decode(raw) == DeviceSignal(device_id=D, kind="heartbeat", at=T)


def test_ignored_fields_are_logged_at_debug_level_by_name_only(caplog: pytest.LogCaptureFixture) -> None:
    raw = orjson.dumps(
        {"type": "device.signal", "v": 1, "device_id": D, "kind": "ready", "at": T, "zone": "z9"}
    )
    with caplog.at_level(logging.DEBUG, logger="shared.events"):
        decode(raw)
    [record] = caplog.records
    assert record.levelno == logging.DEBUG
    assert record.__dict__["fields"] == ["zone"]
    assert "z9" not in record.getMessage() and "z9" not in repr(record.__dict__)


def test_a_record_without_unknown_fields_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="shared.events"):
        decode(encode(SAMPLES[0]))
    assert caplog.records == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"type": "nope", "v": 1}, "unknown event type"),
        ({"v": 1, "device_id": D, "kind": "ready", "at": T}, "unknown event type None"),
        (
            {"type": "device.signal", "v": 2, "device_id": D, "kind": "ready", "at": T},
            "unknown schema version 2",
        ),
        (
            {"type": "device.signal", "v": 0, "device_id": D, "kind": "ready", "at": T},
            "unknown schema version 0",
        ),
        ({"type": "device.signal", "device_id": D, "kind": "ready", "at": T}, "unknown schema version None"),
        (
            {"type": "device.signal", "v": "1", "device_id": D, "kind": "ready", "at": T},
            "unknown schema version '1'",
        ),
        (
            {"type": "device.signal", "v": True, "device_id": D, "kind": "ready", "at": T},
            "unknown schema version True",
        ),
        ({"type": "device.signal", "v": 1, "device_id": D, "kind": "ready"}, "missing field 'at'"),
        (
            {"type": "device.signal", "v": 1, "device_id": 5, "kind": "ready", "at": T},
            "'device_id' has the wrong type",
        ),
        (
            {"type": "device.signal", "v": 1, "device_id": D, "kind": 2, "at": T, "x": 1},
            "'kind' has the wrong type",
        ),
    ],
)
def test_an_unknown_or_malformed_record_fails_loudly(payload: dict[str, object], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        decode(orjson.dumps(payload))


def test_not_json_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="not JSON"):
        decode(b"\xff\x00")


def test_not_an_object_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="not a JSON object"):
        decode(b"[1]")


def test_decode_as_checks_the_type() -> None:
    with pytest.raises(SchemaError, match="expected registration.outcome"):
        decode_as(RegistrationOutcome, encode(DeviceSignal(device_id=D, kind="ready", at=T)))


# --- forward compatibility, as a property ------------------------------------------------

utf8 = st.characters(codec="utf-8")  # no lone surrogates: orjson writes UTF-8 only
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=utf8, max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(alphabet=utf8, max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
extra_fields = st.dictionaries(
    st.text(alphabet=utf8, min_size=1, max_size=20),
    json_values,
    max_size=5,
)


@given(st.sampled_from(SAMPLES), extra_fields)
def test_any_extra_fields_on_a_valid_record_decode_to_the_same_event(
    event: Event, extra: dict[str, Any]
) -> None:
    payload = orjson.loads(encode(event))
    payload.update({key: value for key, value in extra.items() if key not in payload})
    assert decode(orjson.dumps(payload)) == event


# --- upcasting older versions, on test-only events ---------------------------------------
#
# "test.gadget" v1 was {gadget_id: str, weight_kg: float}; v2 renamed the weight to
# weight_grams: int; v3 added label: str without a default.


@dataclass(frozen=True, slots=True)
class GadgetV2(Event):
    TYPE: ClassVar[str] = "test.gadget"
    VERSION: ClassVar[int] = 2

    gadget_id: str
    weight_grams: int


@dataclass(frozen=True, slots=True)
class GadgetV3(Event):
    TYPE: ClassVar[str] = "test.gadget"
    VERSION: ClassVar[int] = 3

    gadget_id: str
    weight_grams: int
    label: str


def v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    payload["weight_grams"] = round(payload.pop("weight_kg") * 1000)
    return payload


def v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "label": payload["gadget_id"].upper()}


V1 = {"type": "test.gadget", "v": 1, "gadget_id": "g1", "weight_kg": 1.5}
V2 = {"type": "test.gadget", "v": 2, "gadget_id": "g1", "weight_grams": 1500}
V3 = {"type": "test.gadget", "v": 3, "gadget_id": "g1", "weight_grams": 1500, "label": "G1"}


@pytest.fixture
def registry() -> Iterator[None]:
    """Test-only events and upcasters, registered for one test and removed after it."""
    original_types, original_upcasters = events.EVENT_TYPES, events._UPCASTERS
    snapshot = dict(original_types), dict(original_upcasters)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events, "EVENT_TYPES", dict(original_types))
        patch.setattr(events, "_UPCASTERS", dict(original_upcasters))
        yield
    assert events.EVENT_TYPES is original_types and events._UPCASTERS is original_upcasters
    assert (dict(events.EVENT_TYPES), dict(events._UPCASTERS)) == snapshot
    assert "test.gadget" not in events.EVENT_TYPES


def use(cls: type[Event]) -> None:
    events.EVENT_TYPES[cls.TYPE] = cls


@pytest.mark.usefixtures("registry")
def test_a_previous_version_is_upcast() -> None:
    use(GadgetV2)
    register_upcaster("test.gadget", 1, v1_to_v2)
    assert decode(orjson.dumps(V1)) == GadgetV2(gadget_id="g1", weight_grams=1500)
    assert decode(orjson.dumps(V2)) == GadgetV2(gadget_id="g1", weight_grams=1500)
    assert decode(encode(GadgetV2(gadget_id="g2", weight_grams=7))) == GadgetV2(
        gadget_id="g2", weight_grams=7
    )


@pytest.mark.usefixtures("registry")
def test_upcasters_chain_from_any_older_version() -> None:
    use(GadgetV3)
    register_upcaster("test.gadget", 1, v1_to_v2)
    register_upcaster("test.gadget", 2, v2_to_v3)
    expected = GadgetV3(gadget_id="g1", weight_grams=1500, label="G1")
    assert decode(orjson.dumps(V1)) == expected
    assert decode(orjson.dumps(V2)) == expected
    assert decode(orjson.dumps(V3)) == expected


@pytest.mark.usefixtures("registry")
def test_an_upcast_record_is_checked_and_keeps_ignoring_unknown_fields() -> None:
    use(GadgetV2)
    register_upcaster("test.gadget", 1, v1_to_v2)
    assert decode(orjson.dumps({**V1, "colour": "red"})) == GadgetV2(gadget_id="g1", weight_grams=1500)
    with pytest.raises(SchemaError, match="missing field 'gadget_id'"):
        decode(orjson.dumps({"type": "test.gadget", "v": 1, "weight_kg": 1.5}))


@pytest.mark.usefixtures("registry")
def test_an_upcaster_that_fails_on_a_malformed_record_is_a_schema_error() -> None:
    use(GadgetV2)
    register_upcaster("test.gadget", 1, v1_to_v2)
    with pytest.raises(SchemaError, match="cannot upcast from version 1: KeyError"):
        decode(orjson.dumps({"type": "test.gadget", "v": 1, "gadget_id": "g1"}))
    with pytest.raises(SchemaError, match="cannot upcast from version 1: TypeError"):
        decode(orjson.dumps({**V1, "weight_kg": "heavy"}))


@pytest.mark.usefixtures("registry")
def test_a_missing_upcaster_fails_loudly() -> None:
    use(GadgetV3)
    register_upcaster("test.gadget", 2, v2_to_v3)
    with pytest.raises(SchemaError, match="no upcaster from version 1"):
        decode(orjson.dumps(V1))
    assert decode(orjson.dumps(V2)) == GadgetV3(gadget_id="g1", weight_grams=1500, label="G1")


@pytest.mark.usefixtures("registry")
def test_a_version_newer_than_known_fails_loudly() -> None:
    """An old consumer meets a record of a newer producer: the consumer must be deployed first."""
    use(GadgetV2)
    register_upcaster("test.gadget", 1, v1_to_v2)
    with pytest.raises(SchemaError, match=r"test.gadget: unknown schema version 3 \(knows 1..2\)"):
        decode(orjson.dumps(V3))


@pytest.mark.usefixtures("registry")
def test_register_upcaster_refuses_what_decode_could_never_use() -> None:
    use(GadgetV2)
    with pytest.raises(ValueError, match="unknown event type"):
        register_upcaster("test.nothing", 1, v1_to_v2)
    for version in (0, 2, 3):
        with pytest.raises(ValueError, match="no version after"):
            register_upcaster("test.gadget", version, v1_to_v2)
    register_upcaster("test.gadget", 1, v1_to_v2)
    with pytest.raises(ValueError, match="already registered"):
        register_upcaster("test.gadget", 1, v1_to_v2)


# --- rules beyond types: schema-valid poison fails at decode -----------------------------


def _with(event: Event, **changes: object) -> bytes:
    payload = orjson.loads(encode(event))
    payload.update(changes)
    return orjson.dumps(payload)


REQUESTED, DECIDED, OUTCOME, SIGNAL, PUBLISH, PUBLISHED = SAMPLES
POISON: list[tuple[Event, str, object, str]] = [
    # (a valid event, a field, a value of the right JSON type that breaks its rule, the rule)
    (REQUESTED, "request_id", "not-a-uuid", "a UUID"),
    (REQUESTED, "request_id", "{" + R + "}", "a UUID"),  # uuid.UUID takes it, Postgres does not
    (REQUESTED, "received_at", 1e308, "Unix seconds within years 2000-2200"),
    (REQUESTED, "received_at", -1.0, "Unix seconds within years 2000-2200"),
    (REQUESTED, "received_at", 2**64 - 1, "Unix seconds within years 2000-2200"),
    (REQUESTED, "hardware_id", "b827\x00eb", "a hardware ID"),
    (REQUESTED, "hardware_id", "b827eb\n", "a hardware ID"),
    (REQUESTED, "hardware_id", "x" * 65, "a hardware ID"),
    (REQUESTED, "hardware_id", "", "a hardware ID"),
    (REQUESTED, "bulk_identification_code", "C0DE", "a code in UUID form"),
    (REQUESTED, "fingerprint", "\x1b[2J", "lower-case hex digits"),
    (REQUESTED, "secret_digest", "ab" * 65, "lower-case hex digits"),
    (REQUESTED, "idempotency_key", "k\x00", "printable ASCII"),
    (REQUESTED, "idempotency_key", "k" * 129, "printable ASCII"),
    (REQUESTED, "protocol", "native\x00", "a lower-case name"),
    (DECIDED, "device_id", "", "a UUID"),
    (DECIDED, "account_id", "'; DROP TABLE devices; --", "a UUID or empty"),
    (DECIDED, "credential_generation", 2**63, "an integer from 0 to 2^31-1"),
    (DECIDED, "credential_generation", 2**31, "an integer from 0 to 2^31-1"),
    (DECIDED, "credential_generation", -1, "an integer from 0 to 2^31-1"),
    (DECIDED, "decision", "newer", "one of"),
    (DECIDED, "received_at", 1e308, "Unix seconds within years 2000-2200 or 0"),
    (OUTCOME, "status", "maybe", "one of"),
    (OUTCOME, "reason", "r" * 201, "printable ASCII"),
    (OUTCOME, "reason", "line\nbreak", "printable ASCII"),
    (OUTCOME, "hardware_id", "\u00e9", "a hardware ID"),
    (OUTCOME, "quota", "devices_max", "one of"),
    (OUTCOME, "quota", "none\x00", "one of"),
    (DECIDED, "hardware_id", "a" * 105, "a hardware ID"),
    (DECIDED, "hardware_id", "b8\x00eb", "a hardware ID"),
    (SIGNAL, "device_id", "d", "a UUID"),
    (SIGNAL, "at", 1e308, "Unix seconds"),
    (SIGNAL, "kind", "ready\x00", "one of"),
    (PUBLISH, "registration_id", "b", "a UUID"),
    (PUBLISH, "after_line", 2**63, "an integer from 0 to 2^31-1"),
    (PUBLISHED, "published", 2**64 - 1, "an integer from 0 to 2^31-1"),
    (PUBLISHED, "account_id", "", "a UUID"),
]


@pytest.mark.parametrize(("event", "field", "value", "rule"), POISON)
def test_a_value_of_the_right_type_that_breaks_its_rule_fails_at_decode(
    event: Event, field: str, value: object, rule: str
) -> None:
    with pytest.raises(SchemaError) as failed:
        decode(_with(event, **{field: value}))
    message = str(failed.value)
    assert message.startswith(f"{event.TYPE}: field {field!r} must be ")
    assert rule in message
    if isinstance(value, str) and len(value) > 2:
        assert value not in message  # the value is never quoted: it may be anything


@pytest.mark.parametrize(
    ("event", "changes"),
    [
        (REQUESTED, {"bulk_identification_code": CODE.lower()}),  # either case, as is_uuid
        (REQUESTED, {"hardware_id": "a" * 64 + "-1-2-3"}),  # an index assigned to a clone of a clone
        (DECIDED, {"hardware_id": "a" * 64 + "-1-2-3-4"}),  # ... and one more, assigned to its clone
        (DECIDED, {"hardware_id": "a" * 64 + "-123456789" * 4}),
        (REQUESTED, {"idempotency_key": "~ key with spaces ~", "protocol": "compat"}),
        (REQUESTED, {"received_at": 946_684_800}),  # an integer time is a time
        (DECIDED, {"account_id": "", "product_id": "", "received_at": 0.0}),  # replayed: unknown
        (DECIDED, {"credential_generation": 2**31 - 1}),
        (OUTCOME, {"device_id": "", "hardware_id": "", "decision": "", "account_id": ""}),
        (SIGNAL, {"kind": "heartbeat"}),
        (PUBLISH, {"after_line": 0}),
    ],
)
def test_the_edges_of_each_rule_still_decode(event: Event, changes: dict[str, object]) -> None:
    decoded = decode(_with(event, **changes))
    assert {name: getattr(decoded, name) for name in changes} == changes


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "x" * 10_000 + "\x1b[2J", "v": 1},
        {"type": "device.signal", "v": ["secret-looking value"] * 1000},
    ],
)
def test_an_error_quotes_a_record_s_own_values_short_and_escaped(payload: dict[str, object]) -> None:
    """The message lands in dead-letter headers and logs: bounded, no raw control characters."""
    with pytest.raises(SchemaError) as failed:
        decode(orjson.dumps(payload))
    message = str(failed.value)
    assert len(message) < 200 and "\x1b" not in message


@pytest.mark.usefixtures("registry")
def test_an_upcaster_s_error_is_named_by_its_type_only() -> None:
    use(GadgetV2)

    def strict(payload: dict[str, Any]) -> dict[str, Any]:
        return {**payload, "weight_grams": int(payload.pop("weight_kg"))}

    register_upcaster("test.gadget", 1, strict)
    with pytest.raises(SchemaError) as failed:
        decode(orjson.dumps({**V1, "weight_kg": "hunter2"}))
    assert str(failed.value) == "test.gadget: cannot upcast from version 1: ValueError"
