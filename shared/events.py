"""Every event that crosses Kafka, defined once, with an explicit schema version.

Wire format: one compact JSON object per record, ``{"type": ..., "v": N, ...fields}``.
A new field always gets a default; an older version is upcast by a small
function registered next to the model (see ``_UPCASTERS``). Decoding fails
loudly with :class:`SchemaError` on an unknown type, an unknown (newer) version,
a missing or unexpected field, or a field of the wrong type.

Secrets never travel in clear: the intake replaces a presented device secret or
registration key by its keyed digest before publishing.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import orjson


class SchemaError(ValueError):
    """A record does not match any event schema this code knows."""


@dataclass(frozen=True, slots=True)
class Event:
    TYPE: ClassVar[str]
    VERSION: ClassVar[int]


Decision = Literal["new", "same", "clone", "refused"]


@dataclass(frozen=True, slots=True)
class RegistrationRequested(Event):
    """A device asked to register; published by the intake, keyed by account-independent
    hardware-ID stem so that every claim of one hardware ID lands on one partition."""

    TYPE: ClassVar[str] = "registration.requested"
    VERSION: ClassVar[int] = 1

    request_id: str
    received_at: float
    bulk_identification_code: str
    hardware_id: str
    fingerprint: str  # digest of the device's system identifiers; "" when none were sent
    secret_digest: str = ""  # keyed digest of the device secret presented, "" if none
    registration_key_digest: str = ""  # keyed digest of the registration key, "" if none
    idempotency_key: str = ""
    protocol: str = "native"


@dataclass(frozen=True, slots=True)
class RegistrationDecided(Event):
    """Deduplication accepted a claim and wrote the registry; provisioning renders the files."""

    TYPE: ClassVar[str] = "registration.decided"
    VERSION: ClassVar[int] = 1

    request_id: str
    account_id: str
    product_id: str
    device_id: str
    hardware_id: str
    decision: str
    credential_generation: int
    received_at: float = 0.0  # when the intake received the request, for pipeline latency


@dataclass(frozen=True, slots=True)
class RegistrationOutcome(Event):
    """The final answer to one registration request, for the intake waiting on it."""

    TYPE: ClassVar[str] = "registration.outcome"
    VERSION: ClassVar[int] = 1

    request_id: str
    status: str  # "ready" or "refused"
    device_id: str = ""
    hardware_id: str = ""
    decision: str = ""
    reason: str = ""
    credential_generation: int = 0


@dataclass(frozen=True, slots=True)
class DeviceSignal(Event):
    """A device confirmed its provisioning ("ready") or sent a heartbeat."""

    TYPE: ClassVar[str] = "device.signal"
    VERSION: ClassVar[int] = 1

    device_id: str
    kind: str  # "ready" or "heartbeat"
    at: float


@dataclass(frozen=True, slots=True)
class BulkPublish(Event):
    """Publish the next chunk of a bulk registration's rows after ``after_line``; each
    handled chunk sends the next one, so a long publish is many short transactions."""

    TYPE: ClassVar[str] = "bulk.publish"
    VERSION: ClassVar[int] = 1

    registration_id: str
    after_line: int = 0


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (RegistrationRequested, RegistrationDecided, RegistrationOutcome, DeviceSignal, BulkPublish)
}

# (type, version) -> function turning that version's payload into the next version's.
_UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}

E = TypeVar("E", bound=Event)


def encode(event: Event) -> bytes:
    _, fields = _schema(type(event))
    payload = {"type": event.TYPE, "v": event.VERSION}
    payload.update((name, getattr(event, name)) for name in fields)  # flat fields: no deep copy needed
    return orjson.dumps(payload)


def decode(raw: bytes) -> Event:
    """Parse one record into its event, upcasting old versions; raise SchemaError otherwise."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SchemaError(f"record is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise SchemaError("record is not a JSON object")
    type_name = payload.pop("type", None)
    version = payload.pop("v", None)
    cls = EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise SchemaError(f"unknown event type {type_name!r}")
    if not isinstance(version, int) or version < 1 or version > cls.VERSION:
        raise SchemaError(f"{type_name}: unknown schema version {version!r} (knows 1..{cls.VERSION})")
    while version < cls.VERSION:
        upcast = _UPCASTERS.get((type_name, version))
        if upcast is None:
            raise SchemaError(f"{type_name}: no upcaster from version {version}")
        payload = upcast(payload)
        version += 1
    return _build(cls, payload)


def decode_as(cls: type[E], raw: bytes) -> E:
    event = decode(raw)
    if not isinstance(event, cls):
        raise SchemaError(f"expected {cls.TYPE}, got {event.TYPE}")
    return event


_SCHEMAS: dict[str, tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]] = {}


def _schema(cls: type[Event]) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """Type hints and fields of an event class, computed once (decoding is on the hot path)."""
    if cls.TYPE not in _SCHEMAS:
        _SCHEMAS[cls.TYPE] = typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    return _SCHEMAS[cls.TYPE]


def _build(cls: type[E], payload: dict[str, Any]) -> E:
    hints, fields = _schema(typing.cast(type[Event], cls))
    unexpected = set(payload) - set(fields)
    if unexpected:
        raise SchemaError(f"{cls.TYPE}: unexpected fields {sorted(unexpected)}")
    for name, field in fields.items():
        if name not in payload:
            has_default = field.default is not dataclasses.MISSING
            if not has_default:
                raise SchemaError(f"{cls.TYPE}: missing field {name!r}")
            continue
        if not _matches(payload[name], hints[name]):
            raise SchemaError(f"{cls.TYPE}: field {name!r} has the wrong type")
    return cls(**payload)


def _matches(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
