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
a field of the wrong type, or a field that breaks its rule. Rules go beyond types
(``typing.Annotated`` metadata on the field, checked by the same decoder): IDs are
canonical UUIDs, times finite Unix seconds within :data:`TIME_RANGE`, integers within
the Postgres column they are written to, texts free of control characters and within
the domain's lengths and alphabets (shared/domain/identifiers.py). A record that breaks
one is a poison record: its consumer dead-letters it at decode instead of letting a
query fail on it (see docs/architecture.md, "Delivery: nothing lost, nothing twice").
The error names the field and the rule, never the value. A field unknown to this version is dropped: it is
logged at debug level only (type and field names, never values), and not counted,
since during an upgrade it is on every record of the newer producers.

Secrets never travel in clear: the intake replaces a presented device secret or
registration key by its keyed digest before publishing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import reprlib
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import orjson

from shared.domain.dedup import Quota, quota_of_reason
from shared.domain.identifiers import (
    DEVICE_NAME_MAX,
    HARDWARE_ID_MAX,
    MAX_INDEX_LEVELS,
    is_uuid,
    normalize_code,
    validate_hardware_id,
)
from shared.errors import InvalidInput

log = logging.getLogger(__name__)


class SchemaError(ValueError):
    """A record does not match any event schema this code knows."""


@dataclass(frozen=True, slots=True)
class Event:
    TYPE: ClassVar[str]
    VERSION: ClassVar[int]


# What a device signals after its registration. One home: the intake publishes these kinds,
# dedup and the notifier decide by them, and docs/asyncapi.json lists them (a test compares).
SignalKind = Literal["ready", "heartbeat"]


# Field rules beyond types ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """A check of one field's value beyond its type (``Annotated[str, Rule...]``): ``name``
    is what a SchemaError says the field must be, never quoting the value."""

    name: str
    check: Callable[[Any], bool]


def _canonical_uuid(empty: bool) -> Rule:
    if empty:
        return Rule("a UUID or empty", lambda v: v == "" or is_uuid(v))
    return Rule("a UUID", is_uuid)


def _between(low: float, high: float, *, zero: bool = False, what: str) -> Rule:
    """``low <= value <= high`` (NaN never is); with ``zero``, also exactly 0 ("unknown")."""
    return Rule(
        what + (" or 0" if zero else ""),
        lambda v: (zero and v == 0) or (math.isfinite(v) and low <= v <= high),
    )


def _text(pattern: str, what: str) -> Rule:
    compiled = re.compile(pattern)
    return Rule(what, lambda v: v.isascii() and compiled.fullmatch(v) is not None)


def _domain(validate: Callable[[object], str], what: str) -> Rule:
    """The domain's own rule (shared/domain/identifiers.py), which the value must pass
    unchanged (or only upper-cased: codes): the intake published it as the rule returned it."""

    def check(value: str) -> bool:
        try:
            return validate(value) in (value, value.upper())
        except InvalidInput:
            return False

    return Rule(what, check)


def _one_of(values: Collection[str]) -> Rule:
    allowed = frozenset(values)
    return Rule("one of " + ", ".join(sorted(repr(v) for v in allowed)), lambda v: v in allowed)


# Unix seconds from 2000-01-01 to 2200-01-01: every time an event carries was taken by a
# clock of this century; past the range Postgres' timestamptz or Python's datetime fail.
TIME_RANGE = (946_684_800.0, 7_258_118_400.0)
INT32_MAX = 2**31 - 1  # Postgres integer: credential generations, bulk row lines
TOKEN_MAX = 128  # the intake's limit on a client's tokens (Idempotency-Key), services/intake/handlers.py
REASON_MAX = 2 * DEVICE_NAME_MAX  # refusal reasons are fleetreg's own sentences (shared/domain)

Uuid = Annotated[str, _canonical_uuid(empty=False)]
UuidOrEmpty = Annotated[str, _canonical_uuid(empty=True)]
UnixTime = Annotated[float, _between(*TIME_RANGE, what="Unix seconds within years 2000-2200")]
UnixTimeOrZero = Annotated[
    float, _between(*TIME_RANGE, zero=True, what="Unix seconds within years 2000-2200")
]
Generation = Annotated[int, _between(0, INT32_MAX, what="an integer from 0 to 2^31-1")]
LineCount = Annotated[int, _between(0, INT32_MAX, what="an integer from 0 to 2^31-1")]
# Seconds a refused-for-now claim waits (the clone rate's window at most; a day bounds it).
RetryAfter = Annotated[int, _between(0, 86_400, what="whole seconds from 0 to 86400")]
# A claimed hardware ID as the device APIs accept it: a stem of 1-64 characters and up
# to 3 index suffixes "-N" (shared.domain.identifiers.validate_hardware_id).
HardwareId = Annotated[str, _domain(validate_hardware_id, "a hardware ID")]
# One the registry holds (decided, outcomes): dedup may assign one more suffix to a claim
# of 3 ("H-1-1-1" cloned: "H-1-1-1-1"), so the alphabet, and the longest stem with one
# more level of at most 9 digits each.
ASSIGNED_HARDWARE_ID_MAX = HARDWARE_ID_MAX + (MAX_INDEX_LEVELS + 1) * 10
_ASSIGNED = rf"[A-Za-z0-9._-]{{1,{ASSIGNED_HARDWARE_ID_MAX}}}"
AssignedHardwareId = Annotated[str, _text(_ASSIGNED, "a hardware ID")]
AssignedHardwareIdOrEmpty = Annotated[str, _text(f"(?:{_ASSIGNED})?", "a hardware ID or empty")]
Code = Annotated[str, _domain(normalize_code, "a code in UUID form")]
Digest = Annotated[str, _text(r"(?:[0-9a-f]{2}){0,64}", "lower-case hex digits (a keyed digest) or empty")]
Token = Annotated[
    str, _text(rf"[\x20-\x7e]{{0,{TOKEN_MAX}}}", f"at most {TOKEN_MAX} printable ASCII characters")
]
# The source a request is counted under (shared.throttle.source_of): an IPv4 address, an
# IPv6 /64 ("2001:db8:1:2::/64"), "unknown", or "" (a record from before sources travelled).
Source = Annotated[str, _text(r"(?:[0-9A-Fa-f.:/]{1,64}|unknown)?", "an address, an IPv6 /64, or empty")]
Name = Annotated[str, _text(r"[a-z][a-z_]{0,31}", "a lower-case name of at most 32 letters or '_'")]
Reason = Annotated[
    str, _text(rf"[\x20-\x7e]{{0,{REASON_MAX}}}", f"at most {REASON_MAX} printable ASCII characters")
]
DecisionName = Annotated[str, _one_of(("new", "same", "clone", "refused"))]
DecisionOrEmpty = Annotated[str, _one_of(("", "new", "same", "clone", "refused"))]
# The limit that refused a claim, in deduplication's terms (shared.domain.dedup.Quota);
# "none": a refusal by no limit; "": not said (a ready outcome, or a refusal of the release
# before the field, see RegistrationOutcome.refused_by).
QuotaOrNone = Literal["", "none", Quota]


@dataclass(frozen=True, slots=True)
class RegistrationRequested(Event):
    """A device asked to register; published by the intake, keyed by account-independent
    hardware-ID stem so that every claim of one hardware ID lands on one partition."""

    TYPE: ClassVar[str] = "registration.requested"
    VERSION: ClassVar[int] = 1

    request_id: Uuid
    received_at: UnixTime
    bulk_identification_code: Code
    hardware_id: HardwareId
    fingerprint: Digest  # digest of the device's system identifiers; "" when none were sent
    secret_digest: Digest = ""  # keyed digest of the device secret presented, "" if none
    registration_key_digest: Digest = ""  # keyed digest of the registration key, "" if none
    idempotency_key: Token = ""
    protocol: Name = "native"
    # Where the call came from (shared.throttle.source_of): deduplication bounds what one
    # source may create and notices two sources claiming one hardware ID (docs/security.md).
    source: Source = ""
    # The intake verified the device's X.509 certificate of this hardware ID (x509
    # attestation): a claim of a registered hardware ID without its secret is that device (a
    # wiped board; its key cannot be copied out of a secure element), with new credentials.
    attested: bool = False


@dataclass(frozen=True, slots=True)
class RegistrationDecided(Event):
    """Deduplication accepted a claim and wrote the registry; provisioning renders the files."""

    TYPE: ClassVar[str] = "registration.decided"
    VERSION: ClassVar[int] = 1

    request_id: Uuid
    account_id: UuidOrEmpty
    product_id: UuidOrEmpty
    device_id: Uuid
    hardware_id: AssignedHardwareId
    decision: DecisionName
    credential_generation: Generation
    received_at: UnixTimeOrZero = 0.0  # when the intake received the request, for pipeline latency


@dataclass(frozen=True, slots=True)
class RegistrationOutcome(Event):
    """The final answer to one registration request, for the intake waiting on it."""

    TYPE: ClassVar[str] = "registration.outcome"
    # 2: the status ``pending`` (a registration hook failed and its policy is fail closed:
    # the device is answered pending with ``retry_after`` at once; docs/registration-hook.md).
    VERSION: ClassVar[int] = 2

    request_id: Uuid
    status: Annotated[str, _one_of(("ready", "refused", "pending"))]
    device_id: UuidOrEmpty = ""
    hardware_id: AssignedHardwareIdOrEmpty = ""
    decision: DecisionOrEmpty = ""
    reason: Reason = ""
    credential_generation: Generation = 0
    # The account whose code the request named ("" when none: an unknown code); webhooks'
    # registration.refused summary counts refusals by it.
    account_id: UuidOrEmpty = ""
    # A refusal for now (the clone rate per source): seconds after which the same claim may
    # succeed; the intake answers 429 with Retry-After. 0: the answer is final. Of a
    # ``pending``: the Retry-After the device is told.
    retry_after: RetryAfter = 0
    # The decision's credential generation was no longer the device's when provisioning
    # handled it (a later reclaim before "ready", in the same batch or after): the intake
    # answers ready without the device secret, so only the last claim holds the credentials.
    superseded: bool = False
    # A refusal: the limit that refused it, as deduplication decided it (Verdict.quota), or
    # "none". Added with a default in the same version: read it through refused_by.
    quota: QuotaOrNone = ""

    def refused_by(self) -> Quota | None:
        """The limit that refused this request, or None: refused by no limit, or not refused."""
        if self.status != "refused" or self.quota == "none":
            return None
        if self.quota == "":
            # Today's fallback, ONLY for a refusal of the release before the field (it says
            # nothing, and its reason's text is all there is): every refusal this release
            # publishes says "none" or the limit, so the text is never read for those.
            return quota_of_reason(self.reason)
        return self.quota


@dataclass(frozen=True, slots=True)
class HookRequested(Event):
    """Call a registration's hook about one reserved claim (docs/registration-hook.md):
    ``call_id`` names its row in ``registration_hook_calls``, which holds everything else
    (the request's body, the decision to send when it allows). Sent by deduplication after
    the reservation committed, and again for each retry of a claim not yet allowed; the
    notifier takes the row with a conditional update, so a repeat calls at most once."""

    TYPE: ClassVar[str] = "registration.hook_requested"
    VERSION: ClassVar[int] = 1

    call_id: Annotated[str, _text(r"[A-Za-z0-9_-]{1,64}", "a hook call ID")]
    registration_id: Uuid
    request_id: Uuid


@dataclass(frozen=True, slots=True)
class DeviceSignal(Event):
    """A device confirmed its provisioning ("ready") or sent a heartbeat."""

    TYPE: ClassVar[str] = "device.signal"
    VERSION: ClassVar[int] = 1

    device_id: Uuid
    kind: SignalKind
    at: UnixTime
    # The credential generation the device authenticated with: a "ready" is applied only
    # while the device is still at it (a reclaim before "ready" since revoked it). 0: unknown
    # (records of the previous release): applied as before.
    credential_generation: Generation = 0


@dataclass(frozen=True, slots=True)
class BulkPublish(Event):
    """Publish the next chunk of a bulk registration's rows after ``after_line``; each
    handled chunk sends the next one, so a long publish is many short transactions."""

    TYPE: ClassVar[str] = "bulk.publish"
    VERSION: ClassVar[int] = 1

    registration_id: Uuid
    after_line: LineCount = 0


@dataclass(frozen=True, slots=True)
class BulkPublished(Event):
    """A bulk registration's last chunk committed: every row is a preregistered device (or a
    conflict). Sent on the bulk.publish topic after that commit, and again when a publish
    event arrives for a registration already published (a crash before the first send),
    so it is sent at least once; webhooks deliver it as bulk.published."""

    TYPE: ClassVar[str] = "bulk.published"
    VERSION: ClassVar[int] = 1

    registration_id: Uuid
    account_id: Uuid
    product_id: Uuid
    published: LineCount  # devices preregistered
    conflicts: LineCount  # rows whose hardware ID was taken meanwhile
    at: UnixTime  # when it was found published (Unix seconds)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        RegistrationRequested,
        RegistrationDecided,
        RegistrationOutcome,
        HookRequested,
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
    payload.update((name, getattr(event, name)) for name, *_ in fields)  # flat fields: no deep copy needed
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
        raise SchemaError(f"unknown event type {_short(type_name)}")
    if type(version) is not int or version < 1 or version > cls.VERSION:  # bool is no version
        raise SchemaError(f"{type_name}: unknown schema version {_short(version)} (knows 1..{cls.VERSION})")
    while version < cls.VERSION:
        upcast = _UPCASTERS.get((type_name, version))
        if upcast is None:
            raise SchemaError(f"{type_name}: no upcaster from version {version}")
        try:
            payload = upcast(payload)
        except Exception as exc:  # a malformed old record: dead-letter it, never crash the consumer
            # The exception's type only: its message may quote the record's values.
            raise SchemaError(
                f"{type_name}: cannot upcast from version {version}: {type(exc).__name__}"
            ) from exc
        version += 1
    return _build(cls, payload)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlist = _REPR.maxdict = 3


def _short(value: object) -> str:
    """A record's own value in an error message (dead-letter headers, logs): at most about
    40 characters a string and 3 items a list, control characters escaped (``repr``)."""
    return _REPR.repr(value)


def decode_as(cls: type[E], raw: bytes) -> E:
    event = decode(raw)
    if not isinstance(event, cls):
        raise SchemaError(f"expected {cls.TYPE}, got {event.TYPE}")
    return event


# Per class: (name, type hint, required, rules) of each field, and the set of field names.
_Schema = tuple[tuple[tuple[str, Any, bool, tuple[Rule, ...]], ...], frozenset[str]]
_SCHEMAS: dict[type[Event], _Schema] = {}


def _schema(cls: type[Event]) -> _Schema:
    """Fields of an event class, computed once (decoding is on the hot path)."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = tuple(
            (
                f.name,
                *_rules_of(hints[f.name]),
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        )
        schema = _SCHEMAS[cls] = (
            tuple((name, hint, required, rules) for name, hint, rules, required in fields),
            frozenset(name for name, *_ in fields),
        )
    return schema


def _build(cls: type[E], payload: dict[str, Any]) -> E:
    fields, names = _schema(typing.cast(type[Event], cls))
    present = 0
    for name, hint, required, rules in fields:
        if name in payload:
            value = payload[name]
            if not _matches(value, hint):
                raise SchemaError(f"{cls.TYPE}: field {name!r} has the wrong type")
            for rule in rules:
                if not rule.check(value):
                    raise SchemaError(f"{cls.TYPE}: field {name!r} must be {rule.name}")
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


def _rules_of(hint: Any) -> tuple[Any, tuple[Rule, ...]]:
    """A field's type without ``Annotated``, and the rules its metadata holds."""
    if get_origin(hint) is Annotated:
        base, *metadata = get_args(hint)
        return base, tuple(m for m in metadata if isinstance(m, Rule))
    if get_origin(hint) is Literal and all(isinstance(a, str) for a in get_args(hint)):
        # A closed set of strings (SignalKind): checked as a string, then as one of the set,
        # so a wrong value is refused as "must be one of ...", not as a wrong type.
        return str, (_one_of(get_args(hint)),)
    return hint, ()


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


# registration.outcome 1 -> 2: version 2 added the status "pending"; a version 1 record is
# one of "ready" or "refused", unchanged.
register_upcaster(RegistrationOutcome.TYPE, 1, lambda payload: payload)
