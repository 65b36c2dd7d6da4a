"""The machine's ceilings, measured in the same run as fleetreg with the same client and
message sizes, so that fleetreg's figures can be read as ratios (issue 12):

* HTTP: a bare aiohttp endpoint (uvloop, as the services run) that only answers a
  registration-sized JSON body, driven by the same aiohttp client at the same
  concurrency; divided by the calls one boot makes, it is the HTTP ceiling per device;
* Kafka: aiokafka producing (with the services' producer settings: idempotent,
  ``acks=all``, 5 ms linger) and consuming (a consumer group, read-committed) the same
  encoded events a boot sends;
* Postgres: batched writes (``INSERT ... SELECT FROM unnest``, 500 rows a statement,
  as deduplication writes) of device-shaped rows into a table shaped like ``devices``.

Each returns ``{"per_second": ..., "count": ..., "seconds": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg

from shared.events import RegistrationRequested, encode
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.settings import KafkaSettings

# A registration call's body as devices send it (about the same bytes).
CODE = "00000000-0000-4000-8000-000000000000"
BODY = {
    "bulk_identification_code": CODE,
    "hardware_id": "b827eb8905e5",
    "fingerprint": {"cpu_id": "cpu-0123456789", "mac": "b8:27:eb:00:00:0a"},
}
ANSWER = (
    b'{"status":"ready","request_id":"0192f7a0-0000-7000-8000-000000000000",'
    b'"device_id":"00000000-0000-4000-8000-000000000000","hardware_id":"b827eb8905e5",'
    b'"claimed_hardware_id":"b827eb8905e5","clone":false,"decision":"new",'
    b'"manifest_url":"/v1/devices/00000000-0000-4000-8000-000000000000/manifest",'
    b'"device_secret":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}'
)
SERVER = textwrap.dedent(
    """
    import sys, uvloop
    from aiohttp import web
    ANSWER = sys.argv[2].encode()
    async def answer(request):
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")
    app = web.Application()
    app.router.add_post("/answer", answer)
    app.router.add_get("/answer", answer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
                loop=uvloop.new_event_loop())
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _bare_server() -> AsyncIterator[str]:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVER, str(port), ANSWER.decode())
    url = f"http://127.0.0.1:{port}/answer"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield url
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)


async def http_ceiling(requests: int, concurrency: int) -> dict[str, Any]:
    """POSTs of a registration-sized body to an endpoint that only answers."""
    async with _bare_server() as url:
        gate = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one() -> None:
                async with gate, session.post(url, json=BODY) as response:
                    await response.read()

            started = time.perf_counter()
            await asyncio.gather(*[one() for _ in range(requests)])
            elapsed = time.perf_counter() - started
    return _rate(requests, elapsed)


async def kafka_ceiling(settings: KafkaSettings, events: int) -> dict[str, Any]:
    """Produce ``events`` registration requests and consume them all (a consumer group,
    read-committed, as the pipeline services do): from the first send to the last read."""
    topic = f"{settings.topic_prefix}bench-ceiling-{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, [topic])
    event = RegistrationRequested(
        request_id="0192f7a0-0000-7000-8000-000000000000",
        received_at=time.time(),
        bulk_identification_code=CODE,
        hardware_id="b827eb8905e5",
        fingerprint="f" * 64,
        secret_digest="d" * 64,
    )
    payload = encode(event)
    consumer = make_consumer(settings, [topic], group_id=f"bench-{uuid.uuid4().hex[:8]}")
    producer = make_producer(settings)
    await consumer.start()
    await producer.start()
    try:
        # Join the group before timing, so the figure is steady-state throughput.
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        started = time.perf_counter()

        async def produce() -> None:
            batch = [producer.send(topic, payload, key=f"{i % 1024:x}".encode()) for i in range(events)]
            await asyncio.gather(*[await b for b in batch])

        async def consume() -> None:
            seen = 0
            while seen < events:
                records = await consumer.getmany(timeout_ms=500, max_records=2000)
                seen += sum(len(r) for r in records.values())
                await consumer.commit()

        await asyncio.gather(produce(), consume())
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
        await consumer.stop()
    return _rate(events, elapsed)


CREATE_TABLE = "CREATE TEMPORARY TABLE bench_devices (LIKE devices INCLUDING DEFAULTS)"
INSERT_ROWS = """
    INSERT INTO bench_devices (id, account_id, product_id, registration_id, hardware_id,
                               claimed_hardware_id, name, lifecycle, fingerprint, registered_at)
    SELECT u.id, $1, $2, $3, u.hardware_id, u.hardware_id, u.hardware_id, 'registered', u.fingerprint, now()
    FROM unnest($4::uuid[], $5::text[], $6::text[]) AS u(id, hardware_id, fingerprint)"""


async def postgres_ceiling(database_url: str, rows: int, batch: int = 500) -> dict[str, Any]:
    """Batched inserts of device rows, each batch its own transaction (as deduplication
    commits one batch at a time), into a temporary table shaped like ``devices``."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(CREATE_TABLE)
        account, product, registration = (str(uuid.uuid4()) for _ in range(3))
        started = time.perf_counter()
        for first in range(0, rows, batch):
            n = min(batch, rows - first)
            ids = [uuid.uuid4() for _ in range(n)]
            async with conn.transaction():
                await conn.execute(
                    INSERT_ROWS,
                    account,
                    product,
                    registration,
                    ids,
                    [f"bench{first + i:012x}" for i in range(n)],
                    ["f" * 64] * n,
                )
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return _rate(rows, elapsed)


def _rate(count: int, elapsed: float) -> dict[str, Any]:
    return {"count": count, "seconds": round(elapsed, 3), "per_second": round(count / elapsed, 1)}
