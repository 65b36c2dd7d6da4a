"""Every event that crosses Kafka, defined once, with an explicit schema version.

Wire format: one compact JSON object per record, ``{"type": ..., "v": N, ...fields}``.
Producers write every field of their version, also those with defaults.

Evolving an event (old and new instances run side by side during a rolling upgrade,
so each record may be read by code older or newer than its producer):

* Adding a field WITH a default does NOT bump ``VERSION``. An older reader ignores
  the field it does not know; a newer reader of an older record fills in the default.
* Renaming or removing a field, changing its type or its meaning, or adding a field
  without a default bumps ``VERSION`` by one and registers, next to the model, an
  upcaster from the previous version (:func:`register_upcaster`); ``decode`` chains
  them, so a record of any older version still decodes into the current class.
* Deploy a version bump consumers first, then producers: a consumer that meets a
  version newer than it knows fails loudly and the record goes to the dead-letter
  topic. (A field added with a default needs no order.)

Decoding fails loudly with :class:`SchemaError` on an unknown type, an unknown
(newer) or malformed version, a missing upcaster, a missing field without a default,
or a field of the wrong type. A field unknown to this version is dropped: it is
logged at debug level only (type and field names, never values), and not counted,
since during an upgrade it is on every record of the newer producers.

Secrets never travel in clear: the intake replaces a presented device secret or
registration key by its keyed digest before publishing.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import orjson

log = logging.getLogger(__name__)


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
    # The account whose code the request named ("" when none: an unknown code); webhooks'
    # registration.refused summary counts refusals by it.
    account_id: str = ""


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


@dataclass(frozen=True, slots=True)
class BulkPublished(Event):
    """A bulk registration's last chunk committed: every row is a preregistered device (or a
    conflict). Sent on the bulk.publish topic after that commit, and again when a publish
    event arrives for a registration already published (a crash before the first send),
    so it is sent at least once; webhooks deliver it as bulk.published."""

    TYPE: ClassVar[str] = "bulk.published"
    VERSION: ClassVar[int] = 1

    registration_id: str
    account_id: str
    product_id: str
    published: int  # devices preregistered
    conflicts: int  # rows whose hardware ID was taken meanwhile
    at: float  # when it was found published (Unix seconds)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        RegistrationRequested,
        RegistrationDecided,
        RegistrationOutcome,
        DeviceSignal,
        BulkPublish,
        BulkPublished,
    )
}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (type, version) -> function turning that version's payload into the next version's.
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register_upcaster(type_name: str, from_version: int, upcast: Upcaster) -> None:
    """Register the function turning a payload of ``type_name`` at ``from_version``
    (its fields, without ``type`` and ``v``) into one of ``from_version + 1``.

    Call it next to the model when its ``VERSION`` is bumped; one per older version.
    It may change and return the dict it is given.
    """
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise ValueError(f"unknown event type {type_name!r}")
    if not 1 <= from_version < cls.VERSION:
        raise ValueError(f"{type_name}: no version after {from_version} (current {cls.VERSION})")
    if (type_name, from_version) in _UPCASTERS:
        raise ValueError(f"{type_name}: an upcaster from version {from_version} is already registered")
    _UPCASTERS[type_name, from_version] = upcast


E = TypeVar("E", bound=Event)


def encode(event: Event) -> bytes:
    fields, _ = _schema(type(event))
    payload = {"type": event.TYPE, "v": event.VERSION}
    payload.update((name, getattr(event, name)) for name, _, _ in fields)  # flat fields: no deep copy needed
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
    if type(version) is not int or version < 1 or version > cls.VERSION:  # bool is no version
        raise SchemaError(f"{type_name}: unknown schema version {version!r} (knows 1..{cls.VERSION})")
    while version < cls.VERSION:
        upcast = _UPCASTERS.get((type_name, version))
        if upcast is None:
            raise SchemaError(f"{type_name}: no upcaster from version {version}")
        try:
            payload = upcast(payload)
        except Exception as exc:  # a malformed old record: dead-letter it, never crash the consumer
            raise SchemaError(f"{type_name}: cannot upcast from version {version}: {exc!r}") from exc
        version += 1
    return _build(cls, payload)


def decode_as(cls: type[E], raw: bytes) -> E:
    event = decode(raw)
    if not isinstance(event, cls):
        raise SchemaError(f"expected {cls.TYPE}, got {event.TYPE}")
    return event


# Per class: (name, type hint, required) of each field, and the set of field names.
_Schema = tuple[tuple[tuple[str, Any, bool], ...], frozenset[str]]
_SCHEMAS: dict[type[Event], _Schema] = {}


def _schema(cls: type[Event]) -> _Schema:
    """Fields of an event class, computed once (decoding is on the hot path)."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        fields = tuple(
            (
                f.name,
                hints[f.name],
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
        schema = _SCHEMAS[cls] = fields, frozenset(name for name, _, _ in fields)
    return schema


def _build(cls: type[E], payload: dict[str, Any]) -> E:
    fields, names = _schema(typing.cast(type[Event], cls))
    present = 0
    for name, hint, required in fields:
        if name in payload:
            if not _matches(payload[name], hint):
                raise SchemaError(f"{cls.TYPE}: field {name!r} has the wrong type")
            present += 1
        elif required:
            raise SchemaError(f"{cls.TYPE}: missing field {name!r}")
    if present != len(payload):  # fields of a newer producer, same version: ignore them
        unknown = [name for name in payload if name not in names]
        for name in unknown:
            del payload[name]
        log.debug(
            "ignored event fields unknown to this version",
            extra={"event_type": cls.TYPE, "event_version": cls.VERSION, "fields": sorted(unknown)},
        )
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
