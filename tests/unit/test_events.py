"""Event encoding and decoding: round trips, loud failures, forward compatibility within
one schema version (unknown fields ignored) and the upcast of older versions."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import events
from shared.events import (
    BulkPublish,
    DeviceSignal,
    Event,
    RegistrationDecided,
    RegistrationOutcome,
    RegistrationRequested,
    SchemaError,
    decode,
    decode_as,
    encode,
    register_upcaster,
)

SAMPLES: list[Event] = [
    RegistrationRequested(
        request_id="r",
        received_at=1.5,
        bulk_identification_code="C",
        hardware_id="h",
        fingerprint="f",
    ),
    RegistrationDecided(
        request_id="r",
        account_id="a",
        product_id="p",
        device_id="d",
        hardware_id="h",
        decision="new",
        credential_generation=1,
    ),
    RegistrationOutcome(request_id="r", status="refused", reason="code unknown"),
    DeviceSignal(device_id="d", kind="ready", at=2.0),
    BulkPublish(registration_id="b", after_line=7),
]


def test_every_event_survives_a_round_trip() -> None:
    for event in SAMPLES:
        assert decode(encode(event)) == event


def test_a_field_added_with_a_default_may_be_absent() -> None:
    raw = orjson.dumps({"type": "registration.outcome", "v": 1, "request_id": "r", "status": "ready"})
    assert decode(raw) == RegistrationOutcome(request_id="r", status="ready")


def test_a_field_unknown_to_this_version_is_ignored() -> None:
    """A newer producer added a defaulted field without bumping the version: an older
    consumer decodes the record as if the field were not there."""
    raw = orjson.dumps(
        {
            "type": "device.signal",
            "v": 1,
            "device_id": "d",
            "kind": "k",
            "at": 1,
            "x": 1,
            "nested": {"a": [1]},
        }
    )
    assert decode(raw) == DeviceSignal(device_id="d", kind="k", at=1)


def test_ignored_fields_are_logged_at_debug_level_by_name_only(caplog: pytest.LogCaptureFixture) -> None:
    raw = orjson.dumps(
        {"type": "device.signal", "v": 1, "device_id": "d", "kind": "k", "at": 1, "zone": "z9"}
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
        ({"v": 1, "device_id": "d", "kind": "k", "at": 1}, "unknown event type None"),
        (
            {"type": "device.signal", "v": 2, "device_id": "d", "kind": "k", "at": 1},
            "unknown schema version 2",
        ),
        (
            {"type": "device.signal", "v": 0, "device_id": "d", "kind": "k", "at": 1},
            "unknown schema version 0",
        ),
        ({"type": "device.signal", "device_id": "d", "kind": "k", "at": 1}, "unknown schema version None"),
        (
            {"type": "device.signal", "v": "1", "device_id": "d", "kind": "k", "at": 1},
            "unknown schema version '1'",
        ),
        (
            {"type": "device.signal", "v": True, "device_id": "d", "kind": "k", "at": 1},
            "unknown schema version True",
        ),
        ({"type": "device.signal", "v": 1, "device_id": "d", "kind": "k"}, "missing field 'at'"),
        (
            {"type": "device.signal", "v": 1, "device_id": 5, "kind": "k", "at": 1},
            "'device_id' has the wrong type",
        ),
        (
            {"type": "device.signal", "v": 1, "device_id": "d", "kind": 2, "at": 1, "x": 1},
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
        decode_as(RegistrationOutcome, encode(DeviceSignal(device_id="d", kind="ready", at=1.0)))


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
