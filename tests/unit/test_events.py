from __future__ import annotations

import orjson
import pytest

from shared.events import (
    DeviceSignal,
    RegistrationOutcome,
    RegistrationRequested,
    SchemaError,
    decode,
    decode_as,
    encode,
)


def test_every_event_survives_a_round_trip() -> None:
    events = [
        RegistrationRequested(
            request_id="r",
            received_at=1.5,
            bulk_identification_code="C",
            hardware_id="h",
            fingerprint="f",
        ),
        RegistrationOutcome(request_id="r", status="refused", reason="code unknown"),
        DeviceSignal(device_id="d", kind="ready", at=2.0),
    ]
    for event in events:
        assert decode(encode(event)) == event


def test_a_field_added_with_a_default_may_be_absent() -> None:
    raw = orjson.dumps({"type": "registration.outcome", "v": 1, "request_id": "r", "status": "ready"})
    assert decode(raw) == RegistrationOutcome(request_id="r", status="ready")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"type": "nope", "v": 1}, "unknown event type"),
        (
            {"type": "device.signal", "v": 2, "device_id": "d", "kind": "k", "at": 1},
            "unknown schema version 2",
        ),
        ({"type": "device.signal", "v": 1, "device_id": "d", "kind": "k"}, "missing field 'at'"),
        (
            {"type": "device.signal", "v": 1, "device_id": 5, "kind": "k", "at": 1},
            "'device_id' has the wrong type",
        ),
        (
            {"type": "device.signal", "v": 1, "device_id": "d", "kind": "k", "at": 1, "x": 1},
            "unexpected fields",
        ),
    ],
)
def test_an_unknown_or_malformed_record_fails_loudly(payload: dict[str, object], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        decode(orjson.dumps(payload))


def test_not_json_is_a_schema_error() -> None:
    with pytest.raises(SchemaError, match="not JSON"):
        decode(b"\xff\x00")


def test_decode_as_checks_the_type() -> None:
    with pytest.raises(SchemaError, match="expected registration.outcome"):
        decode_as(RegistrationOutcome, encode(DeviceSignal(device_id="d", kind="ready", at=1.0)))
