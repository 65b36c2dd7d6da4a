"""Bad input to the device API: a 4xx naming the field and the rule, nothing published,
nothing stored, never a 5xx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support.api import Operator
from tests.support.system import System

VALID_CODE = "2513F28C-13AD-BEBE-7329-D70C2F5F34A6"


@pytest.fixture
async def requested_offsets(system: System, infra: dict[str, str]) -> AsyncIterator[Any]:
    """A function returning the end offsets of the registration-requested topic."""
    topic = f"{system.env['FLEETREG_TOPIC_PREFIX']}.registration.requested"
    consumer = AIOKafkaConsumer(bootstrap_servers=infra["KAFKA_BOOTSTRAP_SERVERS"], enable_auto_commit=False)
    await consumer.start()

    async def offsets() -> dict[int, int]:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not partitions:
            await consumer.topics()
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}

    try:
        yield offsets
    finally:
        await consumer.stop()


CASES: list[tuple[str, bytes, int, str, str]] = [
    ("not json", b"{not json", 400, "body", "json"),
    ("not an object", b"[1, 2]", 400, "body", "type=object"),
    ("missing code", b'{"hardware_id": "abc"}', 400, "bulk_identification_code", "required"),
    (
        "malformed code",
        b'{"bulk_identification_code": "123", "hardware_id": "abc"}',
        400,
        "bulk_identification_code",
        "format=uuid",
    ),
    (
        "missing hardware id",
        f'{{"bulk_identification_code": "{VALID_CODE}"}}'.encode(),
        400,
        "hardware_id",
        "required",
    ),
    (
        "over-long hardware id",
        f'{{"bulk_identification_code": "{VALID_CODE}", "hardware_id": "{"a" * 65}"}}'.encode(),
        400,
        "hardware_id",
        "max_length=64",
    ),
    (
        "non-ascii hardware id",
        f'{{"bulk_identification_code": "{VALID_CODE}", "hardware_id": "b827eb\u00e9"}}'.encode(),
        400,
        "hardware_id",
        "charset=[A-Za-z0-9._-]",
    ),
    (
        "forbidden character",
        f'{{"bulk_identification_code": "{VALID_CODE}", "hardware_id": "b8:27"}}'.encode(),
        400,
        "hardware_id",
        "charset=[A-Za-z0-9._-]",
    ),
    (
        "hardware id of the wrong type",
        f'{{"bulk_identification_code": "{VALID_CODE}", "hardware_id": 5}}'.encode(),
        400,
        "hardware_id",
        "type=string",
    ),
    (
        "unknown field",
        f'{{"bulk_identification_code": "{VALID_CODE}", "hardware_id": "a", "x": 1}}'.encode(),
        400,
        "x",
        "known_fields",
    ),
    (
        "over-long secret",
        f'{{"bulk_identification_code": "{VALID_CODE}", "hardware_id": "a", '
        f'"device_secret": "{"s" * 129}"}}'.encode(),
        400,
        "device_secret",
        "max_length=128",
    ),
    ("oversized body", b'{"pad": "' + b"x" * 20_000 + b'"}', 413, "", "max_body_bytes=16384"),
    (
        "a name given twice",
        f'{{"bulk_identification_code": "{VALID_CODE}", "hardware_id": "a", "hardware_id": "b"}}'.encode(),
        400,
        "hardware_id",
        "unique_fields",
    ),
]


@pytest.mark.parametrize(("case", "body", "status", "field", "rule"), CASES, ids=[c[0] for c in CASES])
async def test_bad_registration_input_is_refused_clearly_and_publishes_nothing(
    system: System,
    session: aiohttp.ClientSession,
    operator: Operator,
    requested_offsets: Any,
    case: str,
    body: bytes,
    status: int,
    field: str,
    rule: str,
) -> None:
    before = await requested_offsets()
    async with session.post(
        f"{system.device_url}/v1/registrations", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        answer = await response.json()
        assert response.status == status, answer
    assert answer["rule"] == rule
    if field:
        assert answer["field"] == field
    assert answer["message"]
    assert await requested_offsets() == before
    assert await operator.devices() == []


async def test_device_endpoints_refuse_a_wrong_secret_or_unknown_device_alike(
    system: System, session: aiohttp.ClientSession
) -> None:
    for device_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        async with session.get(
            f"{system.device_url}/v1/devices/{device_id}/manifest", headers={"Authorization": "Bearer nope"}
        ) as response:
            assert response.status == 401
            assert (await response.json())["message"] == "unknown device or wrong device secret"
    async with session.get(f"{system.device_url}/v1/devices/x/manifest") as response:
        assert response.status == 401
        assert (await response.json())["field"] == "Authorization"


async def test_polling_an_unknown_or_malformed_request_id(
    system: System, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{system.device_url}/v1/registrations/nonsense") as response:
        assert response.status == 400
        assert (await response.json())["field"] == "request_id"
    # A version-7 ID issued long ago and never seen: unknown, not forever pending.
    ancient = "00000001-0000-7000-8000-000000000000"
    async with session.get(f"{system.device_url}/v1/registrations/{ancient}") as response:
        assert response.status == 404
        assert (await response.json())["status"] == "unknown"


async def test_the_metrics_show_registrations_by_outcome_latency_and_lag(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    from tests.support.api import register

    code = (await operator.product())["bulk_identification_code"]
    await register(session, system.device_url, code, "feedbeef0001", cpu_id="a", mac="a")
    await register(session, system.device_url, code, "feedbeef0001", cpu_id="b", mac="b")
    async with session.get(system.services["dedup"].ops_url + "/metrics") as response:
        dedup = await response.text()
    async with session.get(system.services["provisioning"].ops_url + "/metrics") as response:
        provisioning = await response.text()

    def value(text: str, prefix: str) -> float:
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        assert lines, prefix
        return float(lines[0].rsplit(" ", 1)[1])

    assert value(dedup, 'fleetreg_registrations_total{decision="new"}') >= 1
    assert value(dedup, 'fleetreg_registrations_total{decision="clone"}') >= 1
    assert value(dedup, 'fleetreg_pipeline_seconds_count{stage="decided"}') >= 2
    assert value(provisioning, 'fleetreg_pipeline_seconds_count{stage="provisioned"}') >= 2
    assert "fleetreg_consumer_lag_records{" in dedup
    assert value(dedup, 'fleetreg_batches_total{service="dedup"}') >= 1
