"""Keeps docs/asyncapi.json, the AsyncAPI 3.0 description of the Kafka topics, in step with the code.

The code is the source of truth: the topic names of ``shared.kafka.Topics``, the event
dataclasses of ``shared.events``, what the services subscribe to and publish, the
dead-letter headers and the settings' defaults. References are followed with ``referencing``
and records are validated with ``jsonschema`` against the documented schemas (AsyncAPI 3.0's
default schema format, a superset of JSON Schema draft 7).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import typing
import uuid
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, cast, get_args, get_origin

import jsonschema
import pytest
from aiokafka import TopicPartition
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from services.dedup import handlers as dedup_handlers
from services.dedup import streams as dedup_streams
from services.dedup.app import SERVICE as DEDUP
from services.dedup.handlers import Decisions
from services.dedup.resources import Resources as DedupResources
from services.ingestion import streams as ingestion_streams
from services.ingestion.app import SERVICE as INGESTION
from services.intake import handlers as intake_handlers
from services.notifier import streams as notifier_streams
from services.notifier.app import SERVICE as NOTIFIER
from services.provisioning import handlers as provisioning_handlers
from services.provisioning import streams as provisioning_streams
from services.provisioning.app import SERVICE as PROVISIONING
from services.provisioning.resources import Resources as ProvisioningResources
from shared.domain.credentials import Keyring
from shared.domain.dedup import NO_LIMITS, DecisionKind
from shared.domain.identifiers import hardware_id_stem, new_code, new_request_id
from shared.events import (
    EVENT_TYPES,
    BulkPublish,
    BulkPublished,
    DeviceSignal,
    Event,
    HookRequested,
    RegistrationDecided,
    RegistrationOutcome,
    RegistrationRequested,
    SignalKind,
    decode,
    encode,
)
from shared.kafka import BatchConsumer, Topics
from shared.settings import KafkaSettings, PipelineSettings, load

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
URI = "urn:fleetreg:docs/asyncapi.json"
PREFIX = "fleetreg"
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
ENVELOPE = {"type", "v"}

KEYRING = Keyring(b"a test key of at least thirty-two bytes")
DEVICE_SECRET = "clear-device-secret-42"
REGISTRATION_KEY = "clear-registration-key-42"


# --- reading the document -------------------------------------------------------------


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (``json.loads`` keeps the last one silently)."""
    keys = [key for key, _ in pairs]
    twice = sorted({key for key in keys if keys.count(key) > 1})
    assert not twice, f"keys given twice in one object: {twice}"
    return dict(pairs)


@cache
def document() -> dict[str, Any]:
    loaded = json.loads(DOCUMENT.read_text(encoding="utf-8"), object_pairs_hook=unique_keys)
    assert isinstance(loaded, dict)
    return loaded


@cache
def registry() -> Registry[Any]:
    """The document as the one resource of a registry, at URI: ``referencing`` follows its
    references and pointers into it. Its schemas are in AsyncAPI 3.0's default schema format,
    a superset of JSON Schema draft 7."""
    return Registry().with_resource(URI, Resource.from_contents(document(), default_specification=DRAFT7))


def pointer(*parts: str) -> str:
    """A JSON pointer fragment into the document: ``#/components/messages/DeviceSignal``."""
    return "#" + "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in parts)


def lookup(location: str) -> Any:
    """The node at ``location``, a pointer fragment (``#/a/b``); a reference there is not followed."""
    assert location.startswith("#/"), f"only local references are used: {location}"
    return registry().resolver(URI).lookup(location).contents


def target(location: str) -> str:
    """Where the references at ``location`` lead, or ``location`` when there is none there: a
    JSON pointer does not pass through a reference, so a location below one starts there."""
    node = lookup(location)
    while isinstance(node, dict) and "$ref" in node:
        location = node["$ref"]
        node = lookup(location)
    return location


def at(location: str) -> Any:
    """The node at ``location``, references followed."""
    return lookup(target(location))


def resolve(node: Any) -> Any:
    """``node``, or what its reference points at."""
    return at(node["$ref"]) if isinstance(node, dict) and "$ref" in node else node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def channels() -> dict[str, dict[str, Any]]:
    return typing.cast(dict[str, dict[str, Any]], document()["channels"])


def operations() -> dict[str, dict[str, Any]]:
    return typing.cast(dict[str, dict[str, Any]], document()["operations"])


def channel_at(address: str) -> str:
    """The location of the one channel with ``address``."""
    found = [pointer("channels", name) for name, c in channels().items() if c["address"] == address]
    assert len(found) == 1, f"{len(found)} channels with address {address}"
    return found[0]


def channel_messages(channel: str) -> list[str]:
    """The locations of the messages of the channel at ``channel``."""
    return [target(channel + pointer("messages", name)[1:]) for name in at(channel)["messages"]]


def payload_of(message: str) -> str:
    return f"{message}/payload"


def key_of(message: str) -> str:
    return f"{message}/bindings/kafka/key"


def payload_schema(message: str) -> dict[str, Any]:
    return typing.cast(dict[str, Any], at(payload_of(message)))


def key_schema(message: str) -> dict[str, Any]:
    return typing.cast(dict[str, Any], at(key_of(message)))


def type_const(message: dict[str, Any]) -> str | None:
    prop = resolve(resolve(message["payload"]).get("properties", {}).get("type", {}))
    const = prop.get("const")
    assert const is None or isinstance(const, str)
    return const


def message_of(cls: type[Event]) -> str:
    """The location of the one documented message whose payload is the event ``cls``."""
    messages: dict[str, dict[str, Any]] = document()["components"]["messages"]
    found = [
        target(pointer("components", "messages", name))
        for name, m in messages.items()
        if type_const(resolve(m)) == cls.TYPE
    ]
    assert len(found) == 1, f"{len(found)} messages with type const {cls.TYPE!r}"
    return found[0]


def services_of(op: dict[str, Any]) -> set[str]:
    return {resolve(tag)["name"] for tag in op.get("tags", [])}


def service_operations(service: str) -> list[dict[str, Any]]:
    return [op for op in operations().values() if service in services_of(op)]


def documented(service: str, action: str) -> set[str]:
    """The addresses of the channels on which ``service`` performs ``action``."""
    return {resolve(op["channel"])["address"] for op in service_operations(service) if op["action"] == action}


def group_default(service: str) -> str:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092",
        "DATABASE_URL": "postgresql://u@h/db",
        "FLEETREG_SECRET_KEY": "k" * 32,
    }
    return load(lambda e: PipelineSettings.from_env(e, service, default_port=0), env).group_id


# --- validating with jsonschema --------------------------------------------------------------

# As the decoder: an integer is an int (not 1.0, not True), as in the checks before jsonschema.
Validator = jsonschema.validators.extend(
    Draft7Validator,
    type_checker=Draft7Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)
# Every format jsonschema knows, "uuid" among them (draft 7's own checker has no "uuid").
FORMATS = jsonschema.FormatChecker()


def violations(value: Any, location: str) -> list[str]:
    """What is wrong with ``value`` under the schema at ``location`` in the document; an empty
    list when it is valid. By reference, so that the schema's own references resolve."""
    validator = Validator({"$ref": URI + location}, registry=registry(), format_checker=FORMATS)
    return [
        f"${''.join(f'.{part}' for part in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(value)
    ]


def same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


# --- events as the code makes them ---------------------------------------------------------


def registration(idempotency_key: str | None = None, **fields: Any) -> RegistrationRequested:
    """A request through the intake's real path: validation, then secrets replaced by digests."""
    body = json.dumps({"bulk_identification_code": new_code().lower(), **fields}).encode()
    parsed = intake_handlers.parse_registration(body, idempotency_key)
    return intake_handlers.to_event(parsed, KEYRING, protocol="native")


def sample_events() -> list[Event]:
    device_id = str(uuid.uuid4())
    return [
        registration(
            hardware_id="B827EB123456-2",
            fingerprint={"cpu_id": "0000000012345678", "mac": "b8:27:eb:12:34:56"},
            device_secret=DEVICE_SECRET,
            registration_key=REGISTRATION_KEY,
            idempotency_key="boot-1",
        ),
        registration(hardware_id="H"),
        RegistrationDecided(
            request_id=new_request_id(),
            account_id=str(uuid.uuid4()),
            product_id=str(uuid.uuid4()),
            device_id=device_id,
            hardware_id="B827EB123456-2",
            decision="clone",
            credential_generation=1,
            received_at=time.time(),
        ),
        RegistrationDecided(
            request_id=new_request_id(),
            account_id=str(uuid.uuid4()),
            product_id=str(uuid.uuid4()),
            device_id=device_id,
            hardware_id="H",
            decision="same",
            credential_generation=2,
        ),
        RegistrationOutcome(
            request_id=new_request_id(),
            status="ready",
            device_id=device_id,
            hardware_id="B827EB123456-2",
            decision="clone",
            credential_generation=1,
        ),
        RegistrationOutcome(
            request_id=new_request_id(),
            status="refused",
            decision="refused",
            reason="unknown bulk identification code",
        ),
        RegistrationOutcome(request_id=new_request_id(), status="ready"),
        DeviceSignal(device_id=device_id, kind="ready", at=time.time()),
        DeviceSignal(device_id=device_id, kind="heartbeat", at=946_684_800),  # the earliest time decoded
        HookRequested(
            call_id="msg_" + uuid.uuid4().hex, registration_id=str(uuid.uuid4()), request_id=str(uuid.uuid4())
        ),
        RegistrationOutcome(request_id=str(uuid.uuid4()), status="pending", retry_after=5),
        BulkPublish(registration_id=str(uuid.uuid4())),
        BulkPublish(registration_id=str(uuid.uuid4()), after_line=5000),
        BulkPublished(
            registration_id=str(uuid.uuid4()),
            account_id=str(uuid.uuid4()),
            product_id=str(uuid.uuid4()),
            published=9998,
            conflicts=2,
            at=time.time(),
        ),
    ]


SAMPLES = sample_events()


class RecordingProducer:
    """Stands in for shared.kafka.Producer: keeps what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]] | None]] = []

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        self.sent.append((topic, key, value, headers))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        await (await self.send(topic, value, key=key, headers=headers))

    async def send_many(self, records: list[tuple[str, bytes, bytes]]) -> None:
        for topic, key, value in records:
            await self.send(topic, value, key=key)


# --- the document as a whole ----------------------------------------------------------------


def test_the_document_is_asyncapi_3_for_the_local_broker() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "fleetreg"
    assert doc["info"]["version"] == "1"
    assert [(s["host"], s["protocol"]) for s in doc["servers"].values()] == [("127.0.0.1:19092", "kafka")]


def test_every_reference_resolves() -> None:
    found = list(refs(document()))
    assert found
    for ref in found:
        lookup(ref)  # referencing.exceptions.Unresolvable when dangling


def test_every_schema_is_a_valid_json_schema() -> None:
    schemas = document()["components"]["schemas"]
    assert schemas
    for name, schema in schemas.items():
        errors = [e.message for e in Draft7Validator(Draft7Validator.META_SCHEMA).iter_errors(schema)]
        assert errors == [], name


def test_every_operation_uses_messages_of_its_own_channel() -> None:
    for name, op in operations().items():
        assert op["action"] in {"send", "receive"}, name
        channel_ref = op["channel"]["$ref"]
        assert op["messages"], f"{name} names no message"
        for message in op["messages"]:
            assert message["$ref"].startswith(f"{channel_ref}/messages/"), name
        assert len(services_of(op)) == 1, f"{name} is tagged with exactly one service"
        assert services_of(op) <= {"intake", DEDUP, PROVISIONING, INGESTION, NOTIFIER}, name


# --- topics ---------------------------------------------------------------------------------


def test_there_is_exactly_one_channel_per_topic_and_no_other() -> None:
    addresses = Counter(c["address"] for c in channels().values())
    assert addresses == Counter(Topics(PREFIX).all())


def test_every_channel_has_the_default_partition_count() -> None:
    partitions = load(KafkaSettings.from_env, {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:19092"}).partitions
    for channel in channels().values():
        assert channel["bindings"]["kafka"]["partitions"] == partitions, channel["address"]


def test_every_component_message_is_carried_by_exactly_one_channel() -> None:
    carried = Counter(ref for c in channels().values() for ref in (m["$ref"] for m in c["messages"].values()))
    for name in document()["components"]["messages"]:
        assert carried[f"#/components/messages/{name}"] == 1, name


# --- event payloads -------------------------------------------------------------------------

EVENTS = pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))


@EVENTS
def test_each_event_has_exactly_one_message_of_its_type_and_version(cls: type[Event]) -> None:
    properties = payload_schema(message_of(cls))["properties"]
    assert properties["type"] == {"type": "string", "const": cls.TYPE}
    assert properties["v"] == {"type": "integer", "const": cls.VERSION}


def test_no_message_documents_an_event_the_code_does_not_know() -> None:
    messages = document()["components"]["messages"].values()
    documented_types = {type_const(resolve(m)) for m in messages} - {None}
    assert documented_types == set(EVENT_TYPES)


@EVENTS
def test_the_payload_schema_has_the_dataclass_fields_their_types_and_defaults(cls: type[Event]) -> None:
    schema = payload_schema(message_of(cls))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    properties = schema["properties"]
    assert set(properties) - ENVELOPE == set(fields)
    without_default = {
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert len(schema["required"]) == len(set(schema["required"]))
    assert set(schema["required"]) == without_default | ENVELOPE
    assert schema["additionalProperties"] is False
    for name, f in fields.items():
        prop = resolve(properties[name])
        hint = hints[name]
        if get_origin(hint) is Literal:  # a closed set of strings: a string schema listing them
            assert all(isinstance(a, str) for a in get_args(hint)), f"{cls.__name__}.{name}"
            assert prop["type"] == "string" and set(prop["enum"]) == set(get_args(hint)), (
                f"{cls.__name__}.{name}"
            )
        else:
            assert hint in JSON_TYPES, f"{cls.__name__}.{name}: no JSON type for {hint!r}"
            assert prop["type"] == JSON_TYPES[hint], f"{cls.__name__}.{name}"
        if name in without_default:
            assert "default" not in prop, f"{cls.__name__}.{name} has no default"
        else:
            assert same(prop.get("default"), f.default), f"{cls.__name__}.{name}: default {f.default!r}"


def test_documented_choices_follow_the_code() -> None:
    decisions = set(get_args(DecisionKind))
    decided = payload_schema(message_of(RegistrationDecided))["properties"]
    outcome = payload_schema(message_of(RegistrationOutcome))["properties"]
    signal = payload_schema(message_of(DeviceSignal))["properties"]
    assert set(decided["decision"]["enum"]) == decisions - {"refused"}
    assert set(outcome["decision"]["enum"]) == decisions | {""}
    assert set(signal["kind"]["enum"]) == set(get_args(SignalKind))
    assert typing.get_type_hints(intake_handlers.signal)["kind"] == SignalKind


def test_the_samples_cover_every_event() -> None:
    assert {type(e) for e in SAMPLES} == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: f"{e.TYPE}")
def test_an_encoded_event_matches_its_documented_schema(event: Event) -> None:
    record = json.loads(encode(event))
    assert violations(record, payload_of(message_of(type(event)))) == []


def test_secrets_travel_only_as_digests() -> None:
    event = SAMPLES[0]
    assert isinstance(event, RegistrationRequested)
    assert event.secret_digest and event.registration_key_digest and event.fingerprint
    raw = encode(event)
    assert DEVICE_SECRET.encode() not in raw
    assert REGISTRATION_KEY.encode() not in raw


def test_the_validation_finds_what_the_decoder_refuses() -> None:
    """The validation is not vacuous: each kind of malformed record is caught."""
    schema = payload_of(message_of(DeviceSignal))
    good = json.loads(encode(DeviceSignal(device_id=str(uuid.uuid4()), kind="ready", at=1_765_000_000.5)))
    assert violations(good, schema) == []
    assert violations({k: v for k, v in good.items() if k != "at"}, schema)
    assert violations({**good, "extra": 1}, schema)
    assert violations({**good, "at": "soon"}, schema)
    assert violations({**good, "at": True}, schema)
    assert violations({**good, "v": 2}, schema)
    assert violations({**good, "v": 1.0}, schema)
    assert violations({**good, "v": True}, schema)
    assert violations({**good, "type": "device.other"}, schema)
    assert violations({**good, "kind": "asleep"}, schema)
    assert violations({**good, "device_id": "not-a-uuid"}, schema)
    assert violations({**good, "at": 1e308}, schema)  # the decode rules beyond types are documented too


def test_the_documented_examples_are_records_the_code_decodes() -> None:
    seen = 0
    for cls in EVENT_TYPES.values():
        message = message_of(cls)
        for example in at(message).get("examples", []):
            payload = example["payload"]
            assert isinstance(decode(json.dumps(payload).encode()), cls), example["name"]
            assert violations(payload, payload_of(message)) == [], example["name"]
            seen += 1
    assert seen >= len(EVENT_TYPES)


# --- keys -----------------------------------------------------------------------------------


def test_every_message_documents_its_key() -> None:
    for name, channel in channels().items():
        for message in channel_messages(pointer("channels", name)):
            key = key_schema(message)
            assert key["type"] == "string", channel["address"]
            assert key.get("description"), channel["address"]


def test_the_intake_keys_match_the_documented_key_schemas() -> None:
    """The intake keys requests and signals by hardware-ID stem (shared.kafka.PUBLICATIONS)."""
    for event in SAMPLES:
        if isinstance(event, RegistrationRequested):
            stem = hardware_id_stem(event.hardware_id)
            assert violations(stem, key_of(message_of(RegistrationRequested))) == []
    assert violations(hardware_id_stem("B827EB123456-2"), key_of(message_of(DeviceSignal))) == []


# --- who publishes and reads what -----------------------------------------------------------


def check_published(service: str, sent: list[tuple[str, bytes | None, bytes, Any]]) -> None:
    """Every record a service produced goes to a channel it documents sending on, carrying the
    documented message for its event, with a key and value valid under the documented schemas."""
    assert sent
    for topic, key, value, _ in sent:
        assert topic in documented(service, "send"), f"{service} sends to {topic}"
        event = decode(value)
        message = message_of(type(event))
        assert message in channel_messages(channel_at(topic)), f"{event.TYPE} on {topic}"
        assert key is not None
        assert violations(key.decode(), key_of(message)) == [], topic
        assert violations(json.loads(value), payload_of(message)) == [], topic


async def test_deduplication_publishes_what_the_document_says(monkeypatch: pytest.MonkeyPatch) -> None:
    request, signal = SAMPLES[0], SAMPLES[-1]
    decided = next(e for e in SAMPLES if isinstance(e, RegistrationDecided))
    refused = next(e for e in SAMPLES if isinstance(e, RegistrationOutcome) and e.status == "refused")

    async def decide_batch(*_: Any) -> Decisions:
        return Decisions(decided=[decided], refused=[refused])

    async def apply_signals(*_: Any) -> None:
        return None

    monkeypatch.setattr(dedup_handlers, "decide_batch", decide_batch)
    monkeypatch.setattr(dedup_handlers, "apply_signals", apply_signals)
    producer = RecordingProducer()
    resources = DedupResources(
        pool=cast(Any, None), producer=producer, topics=Topics(PREFIX), keyring=KEYRING, limits=NO_LIMITS
    )
    await dedup_streams.handle_batch(resources, [request, signal])
    check_published(DEDUP, producer.sent)
    assert {topic for topic, *_ in producer.sent} == {
        Topics(PREFIX).registration_decided,
        Topics(PREFIX).registration_outcomes,
    }


async def test_provisioning_publishes_what_the_document_says(monkeypatch: pytest.MonkeyPatch) -> None:
    decided = next(e for e in SAMPLES if isinstance(e, RegistrationDecided))
    ready = next(e for e in SAMPLES if isinstance(e, RegistrationOutcome) and e.status == "ready")

    async def provision_batch(*_: Any) -> list[RegistrationOutcome]:
        return [ready]

    monkeypatch.setattr(provisioning_handlers, "provision_batch", provision_batch)
    producer = RecordingProducer()
    resources = ProvisioningResources(
        pool=cast(Any, None), producer=producer, topics=Topics(PREFIX), keyring=KEYRING
    )
    await provisioning_streams.handle_batch(resources, [decided])
    check_published(PROVISIONING, producer.sent)


@pytest.mark.parametrize(
    ("service", "streams"),
    [
        (DEDUP, dedup_streams),
        (PROVISIONING, provisioning_streams),
        (INGESTION, ingestion_streams),
        (NOTIFIER, notifier_streams),
    ],
)
def test_a_pipeline_service_receives_its_subscriptions_in_its_consumer_group(
    service: str, streams: Any
) -> None:
    # The notifier's second subscription (registration hooks) has a consumer group of its own.
    hooks = getattr(streams, "HOOK_SUBSCRIPTION", None)
    hook_topics = set(hooks.topics(Topics(PREFIX))) if hooks is not None else set()
    assert documented(service, "receive") == set(streams.SUBSCRIPTION.topics(Topics(PREFIX))) | hook_topics
    for op in service_operations(service):
        if op["action"] == "receive":
            group = resolve(op["bindings"]["kafka"]["groupId"])
            assert group["type"] == "string"
            topic = resolve(op["channel"])["address"]
            suffix = "-hooks" if topic in hook_topics else ""
            assert group["default"] == group_default(service) + suffix


def test_the_intake_sends_requests_and_signals_and_reads_outcomes_without_a_group() -> None:
    topics = Topics(PREFIX)
    assert documented("intake", "send") == {topics.registration_requested, topics.device_signals}
    assert documented("intake", "receive") == {topics.registration_outcomes}
    for op in service_operations("intake"):
        assert "groupId" not in op.get("bindings", {}).get("kafka", {})


async def test_dead_letters_carry_the_documented_headers() -> None:
    """Drive the real BatchConsumer with one undecodable record and compare what it sends."""
    topics = Topics(PREFIX)
    record = SimpleNamespace(
        topic=topics.registration_requested,
        partition=4,
        offset=17,
        key=b"B827EB123456",
        value=b"\xffnot json",
    )
    batches = [{TopicPartition(record.topic, record.partition): [record]}]
    producer = RecordingProducer()

    async def handler(_: list[Event]) -> None:
        raise AssertionError("nothing decodable was in the batch")

    class Consumer:
        async def getmany(self, **_: Any) -> dict[TopicPartition, list[Any]]:
            if batches:
                return batches.pop()
            consumer.stop()
            return {}

        async def commit(self, offsets: dict[TopicPartition, int]) -> None:
            assert offsets == {TopicPartition(record.topic, record.partition): record.offset + 1}

        def highwater(self, tp: TopicPartition) -> int | None:
            return None  # no fetch response seen: the lag is not known

    consumer = BatchConsumer(Consumer(), handler, dead_letter=(producer, topics.dead_letter))
    await asyncio.wait_for(consumer.run(), timeout=5)

    [(topic, key, value, headers)] = producer.sent
    assert topic == topics.dead_letter
    assert (key, value) == (record.key, record.value)
    message = target(channel_at(topic) + pointer("messages", "deadLetter")[1:])
    assert type_const(at(message)) is None
    header_schema = at(f"{message}/headers")
    assert headers is not None
    received = {name: raw.decode() for name, raw in headers}
    assert len(received) == len(headers)
    assert violations(received, f"{message}/headers") == []
    assert set(received) == set(header_schema["properties"]) == set(header_schema["required"])
    assert received["fleetreg.source"] == f"{record.topic}/{record.partition}/{record.offset}"
    assert key is not None
    assert violations(key.decode(), key_of(message)) == []
    for service in (
        DEDUP,
        PROVISIONING,
        INGESTION,
    ):  # each runs shared.pipeline, which wires the dead-letter topic
        assert topics.dead_letter in documented(service, "send"), service
