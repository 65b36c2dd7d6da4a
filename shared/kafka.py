"""Kafka helpers with safe defaults.

* Producers are idempotent with ``acks=all``: a retried send is never written twice.
  An aiokafka producer whose idempotence state broke (the broker lost or rejected its
  sequence numbers, e.g. across a broker restart under load) never sends again; a
  :class:`Producer` replaces it with a new one and sends once more.
* Consumers never auto-commit. :class:`BatchConsumer` hands a batch of decoded
  events to a handler and commits the batch's offsets only after the handler
  returned, i.e. after the handler's database transaction committed. A crash in
  between redelivers the batch, and the handler's idempotency record in Postgres
  turns the redelivery into a no-op.
* A handler that fails for a transient reason (database restarting, say) gets the
  same batch again after a growing pause; nothing is committed until it succeeds.
* A record that cannot be decoded, or that its handler fails on alone (the batch
  failed for a reason that is not transient and was handled record by record), is
  copied to the dead-letter topic with the reason and its position, then skipped, so
  one poison record neither blocks a partition nor is lost.
* Every client (producer, consumer, admin) connects as :func:`connection_options`
  says: TLS and SASL (SCRAM) from :class:`~shared.settings.KafkaSettings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TopicAlreadyExistsError,
    UnknownProducerId,
)
from aiokafka.helpers import create_ssl_context

from shared.domain.identifiers import hardware_id_stem
from shared.events import (
    BulkPublish,
    BulkPublished,
    DeviceSignal,
    Event,
    HookRequested,
    RegistrationDecided,
    RegistrationOutcome,
    RegistrationRequested,
    SchemaError,
    decode,
    encode,
)
from shared.logging import exception_summary
from shared.metrics import CONSUMER_LAG, DEAD_LETTERED, ERRORS, PRODUCER_REPLACED
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topics:
    """The topic names of one deployment, all under one prefix (see docs/asyncapi.json)."""

    prefix: str

    @property
    def registration_requested(self) -> str:
        return f"{self.prefix}.registration.requested"

    @property
    def registration_decided(self) -> str:
        return f"{self.prefix}.registration.decided"

    @property
    def registration_outcomes(self) -> str:
        return f"{self.prefix}.registration.outcomes"

    @property
    def registration_hooks(self) -> str:
        return f"{self.prefix}.registration.hooks"

    @property
    def device_signals(self) -> str:
        return f"{self.prefix}.device.signals"

    @property
    def bulk_publish(self) -> str:
        return f"{self.prefix}.bulk.publish"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.deadletter"

    def all(self) -> list[str]:
        return [
            self.registration_requested,
            self.registration_decided,
            self.registration_outcomes,
            self.registration_hooks,
            self.device_signals,
            self.bulk_publish,
            self.dead_letter,
        ]


E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Publication(Generic[E]):
    """Where every event of one type is published: its topic, and its record key. Records
    of one key stay on one partition, in the order they were sent: each consumer's order
    rests on the key, so it is chosen here and nowhere else (docs/asyncapi.json says the
    same; tests/unit/test_publications.py compares).

    ``key`` is a function of the event; None for an event that does not carry what it is
    keyed by (a device's signal, keyed by the device's hardware-ID stem): its publisher
    gives the hardware ID (:func:`publish`), and the stem is taken here."""

    topic: Callable[[Topics], str]
    key: Callable[[E], str] | None


def _request_key(event: RegistrationRequested) -> str:
    # Every claim of the IDs an index could collide with on one partition, decided in order.
    return hardware_id_stem(event.hardware_id)


def _decided_key(event: RegistrationDecided) -> str:
    return event.device_id


def _outcome_key(event: RegistrationOutcome) -> str:
    return event.request_id


def _hook_key(event: HookRequested) -> str:
    # One hook's calls on one partition: a slow hook holds one partition's calls, not all.
    return event.registration_id


def _bulk_key(event: BulkPublish | BulkPublished) -> str:
    # A registration's chunks one after the other, and its announcement after its last chunk.
    return event.registration_id


# The one declaration of every event's topic and key; every publisher goes through it.
PUBLICATIONS: dict[type[Event], Publication[Any]] = {
    RegistrationRequested: Publication(lambda t: t.registration_requested, _request_key),
    # Keyed like the device's registration requests (the hardware-ID stem), so that a
    # "ready" follows its registration on one partition.
    DeviceSignal: Publication[DeviceSignal](lambda t: t.device_signals, None),
    RegistrationDecided: Publication(lambda t: t.registration_decided, _decided_key),
    RegistrationOutcome: Publication(lambda t: t.registration_outcomes, _outcome_key),
    HookRequested: Publication(lambda t: t.registration_hooks, _hook_key),
    BulkPublish: Publication(lambda t: t.bulk_publish, _bulk_key),
    BulkPublished: Publication(lambda t: t.bulk_publish, _bulk_key),
}


def destination(topics: Topics, event: Event, hardware_id: str | None = None) -> tuple[str, str]:
    """(topic, key) of ``event`` as :data:`PUBLICATIONS` declares them. ``hardware_id``: the
    hardware ID of the device an event keyed by it is about (a signal), and only then;
    ValueError when it is missing there or given elsewhere."""
    publication = PUBLICATIONS[type(event)]
    topic = publication.topic(topics)
    if publication.key is not None:
        if hardware_id is not None:
            raise ValueError(f"{event.TYPE} carries its own key: no hardware ID is given for it")
        return topic, publication.key(event)
    if hardware_id is None:
        raise ValueError(f"{event.TYPE} is keyed by its device's hardware ID: give it")
    return topic, hardware_id_stem(hardware_id)


def connection_options(settings: KafkaSettings) -> dict[str, Any]:
    """What every Kafka client of this deployment is given to reach the brokers: their
    addresses, the security protocol, the TLS context (which verifies the broker's
    certificate and host name) and the SASL credentials."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.uses_tls:
        options["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile or None,  # None: the system's trust store
            certfile=settings.ssl_certfile or None,
            keyfile=settings.ssl_keyfile or None,
        )
    if settings.uses_sasl:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.reveal()
    return options


async def ensure_topics(settings: KafkaSettings, names: Sequence[str]) -> None:
    """Create the topics that do not exist yet (safe to call from every instance)."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        new = [NewTopic(n, num_partitions=settings.partitions, replication_factor=1) for n in missing]
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
    finally:
        await admin.close()


def make_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        **connection_options(settings),
        "enable_idempotence": True,
        "acks": "all",
        # A few milliseconds of lingering turns a burst of device requests into
        # a handful of produce requests instead of one per device.
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(
    settings: KafkaSettings, topics: Sequence[str], group_id: str | None, **overrides: Any
) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        **connection_options(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 500,
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


# Errors after which an idempotent aiokafka producer is dead: its sender task ends and
# every later send fails with the same error until the process restarts
# (aio-libs/aiokafka#1017). The Java client recovers by bumping its epoch (KAFKA-12152);
# aiokafka has no such path, so the whole producer is replaced.
FATAL_PRODUCER_ERRORS: tuple[type[Exception], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    ProducerFenced,
)


class Producer:
    """An idempotent producer (:func:`make_producer`) that replaces itself after a fatal
    producer error and sends once more with the new one.

    The new producer has a new producer ID, so the broker cannot tell a record the old
    one may have written from its repetition: a replaced send may be written twice.
    Every consumer of fleetreg's topics is idempotent (request IDs, event IDs), so a
    duplicate costs a skipped record, while a dead producer would stop the service.
    Several coroutines hitting the error at once replace the producer once.
    """

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        self._settings = settings
        self._overrides = overrides
        self._inner = make_producer(settings, **overrides)
        self._replacing = asyncio.Lock()

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def partitions_for(self, topic: str) -> set[int]:
        """The partition numbers of ``topic`` (from the cluster's metadata)."""
        found: set[int] = await self._inner.partitions_for(topic)
        return found

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send one record; return when the broker acknowledged it on all replicas."""
        inner = self._inner
        try:
            await inner.send_and_wait(topic, value, key=key, headers=headers)
        except FATAL_PRODUCER_ERRORS as exc:
            await self._replace(inner, exc)
            await self._inner.send_and_wait(topic, value, key=key, headers=headers)

    async def send_many(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Send (topic, key, value) records concurrently; return when all are acknowledged."""
        inner = self._inner
        try:
            await _send_all(inner, records)
        except FATAL_PRODUCER_ERRORS as exc:
            await self._replace(inner, exc)
            await _send_all(self._inner, records)

    async def _replace(self, broken: AIOKafkaProducer, error: Exception) -> None:
        async with self._replacing:
            if self._inner is not broken:
                return  # another coroutine replaced it already
            log.warning("Kafka producer broken; replacing it", extra={"error": type(error).__name__})
            with contextlib.suppress(Exception):  # it is dead: stopping it only frees its sockets
                await broken.stop()
            fresh = make_producer(self._settings, **self._overrides)
            try:
                await fresh.start()
            except BaseException:
                await fresh.stop()
                raise  # the broker is unreachable: the caller fails, the next send tries again
            self._inner = fresh
            PRODUCER_REPLACED.inc()


async def _send_all(producer: AIOKafkaProducer, records: Sequence[tuple[str, bytes, bytes]]) -> None:
    futures = [await producer.send(topic, value, key=key) for topic, key, value in records]
    if futures:
        await asyncio.gather(*futures)


async def publish(
    producer: Producer, topics: Topics, event: Event, *, hardware_id: str | None = None
) -> None:
    """Send one event to its declared topic under its declared key (:func:`destination`;
    ``hardware_id`` for a signal) and wait until the broker acknowledged it on all replicas."""
    topic, key = destination(topics, event, hardware_id)
    await producer.send_and_wait(topic, encode(event), key=key.encode())


async def publish_many(producer: Producer, topics: Topics, events: Sequence[Event]) -> None:
    """Send several events, each to its declared topic under its declared key, concurrently;
    return when all are acknowledged."""
    await send_records(producer, [(*destination(topics, e), e) for e in events])


async def send_records(producer: Producer, items: Sequence[tuple[str, str, Event]]) -> None:
    """Send (topic, key, event) records as given, concurrently; return when all are
    acknowledged. The plumbing under :func:`publish_many`, for tests of the broker's own
    behaviour: a service publishes through the declarations (:data:`PUBLICATIONS`)."""
    await producer.send_many([(t, k.encode(), encode(e)) for t, k, e in items])


BatchHandler = Callable[[list[Event]], Awaitable[None]]

# Failures that say "the broker or the registry is not there right now": the batch is
# retried whole after a pause, never split, and no record of it is dead-lettered.
# A consumer adds the registry's (shared.db.pool.BATCH_RETRY_ERRORS) through ``transient``.
BROKER_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (KafkaError, TimeoutError, ConnectionError)

DEAD_LETTER_HEADERS = (
    "fleetreg.error",
    "fleetreg.error_type",
    "fleetreg.stage",
    "fleetreg.consumer",
    "fleetreg.source",
    "fleetreg.topic",
    "fleetreg.partition",
    "fleetreg.offset",
)


@dataclass(frozen=True)
class DeadLetter:
    """Why a record was dead-lettered, in words that are safe to log and to store: a
    SchemaError's message (it names the field and the rule, never the value) or, for a
    record its handler failed on, the exception's type and place only (a driver's
    message may quote the record's values)."""

    stage: str  # "decode" (no event schema took it) | "handle" (its handler failed on it alone)
    error_type: str  # the exception's module and class, e.g. "asyncpg.exceptions.DataError"
    reason: str


class _Interrupted(Exception):
    """A transient failure in the middle of a record-by-record pass: ``resume`` holds, per
    partition of the batch, the offset of the first record not handled yet."""

    def __init__(self, error: BaseException, resume: dict[TopicPartition, int]) -> None:
        super().__init__(type(error).__name__)
        self.error = error
        self.resume = resume


class BatchConsumer:
    """Consume a group's topics in batches: decode, handle, then commit.

    * A record that does not decode (:func:`shared.events.decode`: wrong JSON, unknown
      type or version, a field of the wrong type or breaking its rule) is dead-lettered.
    * A batch whose handler fails with a ``transient`` error (the registry or broker
      unreachable) is handed back whole and retried after a growing pause (0.4 s to 5 s);
      :attr:`healthy` is False meanwhile, so readiness answers 503.
    * A batch whose handler fails with any other error is handled again record by
      record, in order on each partition: a record that fails alone is dead-lettered with
      its reason and position, and every other record is handled. A transient error in
      that pass stops it: what was handled is committed, the rest retried as above.
    * Offsets are committed after all that, so a record is handled at least once and its
      handler's idempotency (request IDs, event IDs: docs/architecture.md "Delivery:
      nothing lost, nothing twice") makes a replay alone after a failed batch a no-op.

    ``run()`` returns when ``stop()`` is called: the batch in hand is finished
    and committed first, so a SIGTERM never loses or repeats work needlessly.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: BatchHandler,
        *,
        dead_letter: tuple[Producer, str] | None = None,
        max_records: int = 500,
        poll_timeout_ms: int = 200,
        name: str = "consumer",
        transient: tuple[type[BaseException], ...] = BROKER_TRANSIENT_ERRORS,
    ) -> None:
        self._name = name
        self._consumer = consumer
        self._handler = handler
        self._dead_letter = dead_letter
        self._max_records = max_records
        self._poll_timeout_ms = poll_timeout_ms
        self._transient = (*transient, *BROKER_TRANSIENT_ERRORS)
        self._stopping = asyncio.Event()
        self._failures = 0
        self.batches_handled = 0
        self.dead_lettered = 0

    @property
    def healthy(self) -> bool:
        """False while the handler keeps failing for a transient reason (say, the database is down)."""
        return self._failures == 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            batch = await self._consumer.getmany(
                timeout_ms=self._poll_timeout_ms, max_records=self._max_records
            )
            if not batch:
                continue
            await self._handle(batch)

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        try:
            decoded = await self._decode(batch)
            events = [event for pairs in decoded.values() for _, event in pairs]
            if events:
                try:
                    await self._handler(events)
                except self._transient:
                    raise
                except Exception as exc:
                    await self._one_by_one(decoded, exc)
        except _Interrupted as stop:
            # Partitions not in ``resume`` were handled to their end before the failure.
            done = {tp: stop.resume.get(tp, records[-1].offset + 1) for tp, records in batch.items()}
            await self._commit(
                {tp: at for tp, at in done.items() if at > batch[tp][0].offset}, redelivered=False
            )
            await self._retry_later(stop.resume, stop.error)
            return
        except self._transient as exc:
            await self._retry_later({tp: records[0].offset for tp, records in batch.items()}, exc)
            return
        self._failures = 0
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
        self._record_lag(offsets)
        await self._commit(offsets)
        self.batches_handled += 1

    async def _decode(
        self, batch: dict[TopicPartition, list[Any]]
    ) -> dict[TopicPartition, list[tuple[Any, Event]]]:
        """The batch's events with their records, in order per partition; a record that
        does not decode is dead-lettered."""
        decoded: dict[TopicPartition, list[tuple[Any, Event]]] = {}
        for tp, records in batch.items():
            pairs = decoded[tp] = []
            for record in records:
                try:
                    pairs.append((record, decode(record.value)))
                except SchemaError as exc:
                    await self._send_to_dead_letter(record, DeadLetter("decode", _type_name(exc), str(exc)))
        return decoded

    async def _one_by_one(
        self, decoded: dict[TopicPartition, list[tuple[Any, Event]]], error: Exception
    ) -> None:
        """The batch failed for a reason that is not transient (a record its handler cannot
        take): hand each record alone to the handler; dead-letter each that fails alone."""
        ERRORS.labels(self._name, "batch_split").inc()
        log.warning(
            "batch failed; handling its records one by one",
            extra={
                "consumer": self._name,
                "error": exception_summary(error),
                "records": sum(map(len, decoded.values())),
            },
        )
        for index, (tp, pairs) in enumerate(decoded.items()):
            for record, event in pairs:
                try:
                    await self._handler([event])
                except self._transient as exc:
                    resume = {tp: record.offset}
                    for later, rest in list(decoded.items())[index + 1 :]:
                        if rest:
                            resume[later] = rest[0][0].offset
                    raise _Interrupted(exc, resume) from exc
                except Exception as exc:
                    why = DeadLetter("handle", _type_name(exc), exception_summary(exc))
                    await self._send_to_dead_letter(record, why)

    async def _commit(self, offsets: dict[TopicPartition, int], *, redelivered: bool = True) -> None:
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # The group rebalanced while we worked: the new owner of these
            # partitions gets the batch again and the idempotent handler skips it.
            log.warning(
                "offset commit failed; batch will be redelivered" if redelivered else "offset commit failed",
                extra={"consumer": self._name, "error": type(exc).__name__},
            )

    def _record_lag(self, positions: dict[TopicPartition, int]) -> None:
        """Records between where this consumer is and the partition's end, as last fetched."""
        for tp, position in positions.items():
            end = self._consumer.highwater(tp)
            if end is not None:
                CONSUMER_LAG.labels(self._name, tp.topic, str(tp.partition)).set(max(0, end - position))

    async def _retry_later(self, positions: dict[TopicPartition, int], error: BaseException) -> None:
        """The handler failed for a transient reason (database restarting, broker
        unreachable): seek back to ``positions`` (per partition, the first record not
        handled), wait, and let the loop fetch from there again."""
        self._failures += 1
        ERRORS.labels(self._name, "batch_failed").inc()
        delay = min(0.2 * 2 ** min(self._failures, 5), 5.0)
        # The exception's type and place only: a driver's message quotes bound values.
        log.warning(
            "batch failed; retrying",
            extra={"consumer": self._name, "error": exception_summary(error), "retry_in_s": delay},
        )
        for tp, offset in positions.items():
            self._consumer.seek(tp, offset)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _send_to_dead_letter(self, record: Any, why: DeadLetter) -> None:
        """Copy ``record`` (key and value unchanged) to the dead-letter topic with why and
        where in headers (docs/asyncapi.json ``DeadLetterHeaders``). A send that fails is a
        transient failure of the batch: it is retried, never skipped unrecorded."""
        self.dead_lettered += 1
        DEAD_LETTERED.labels(self._name, why.stage).inc()
        log.error(
            "record moved to the dead-letter topic",
            extra={
                "consumer": self._name,
                "stage": why.stage,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error_type": why.error_type,
                "error": why.reason,
            },
        )
        if self._dead_letter is None:
            return
        producer, topic = self._dead_letter
        values = (
            why.reason,
            why.error_type,
            why.stage,
            self._name,
            f"{record.topic}/{record.partition}/{record.offset}",
            record.topic,
            str(record.partition),
            str(record.offset),
        )
        headers = [(name, value.encode()) for name, value in zip(DEAD_LETTER_HEADERS, values, strict=True)]
        await producer.send_and_wait(topic, record.value, key=record.key, headers=headers)


def _type_name(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"
