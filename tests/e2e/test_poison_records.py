"""Schema-valid poison on every consumed topic of the running system (tests/chaos/poison.py:
a non-UUID ID, a time of 1e308, a NUL in a hardware ID, an integer past 2^63, control
characters, and an outcome whose key is not UTF-8), each on every partition; then a
device boots. It must be provisioned within seconds; each poison record must be in the
dead-letter topic, once per consumer group reading its topic, with its reason and
position; every group must have committed past it; and every service, the intake (whose
outcome listener meets the bad key) included, must be ready."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp

from shared.kafka import Topics
from tests.chaos import poison
from tests.support.api import Operator, provision, register
from tests.support.system import System

CONSUMERS = ("dedup", "provisioning", "ingestion", "notifier")


async def test_schema_valid_poison_on_every_topic_is_dead_lettered_and_the_next_device_is_provisioned(
    system: System, session: aiohttp.ClientSession, operator: Operator, infra: dict[str, str]
) -> None:
    bootstrap = infra["KAFKA_BOOTSTRAP_SERVERS"]
    topics = Topics(system.env["FLEETREG_TOPIC_PREFIX"])
    code = (await operator.product())["bulk_identification_code"]

    started = time.monotonic()
    sent = await poison.send(bootstrap, topics, poison.catalogue())
    assert {s.kind.topic for s in sent} == set(poison.READERS)

    answer = await register(session, system.device_url, code, uuid.uuid4().hex[:12])
    assert (answer.status, answer.body.get("status")) == (200, "ready"), answer.body
    await provision(session, system.device_url, answer.body)  # the confirmation follows the poison too
    deadline = time.monotonic() + 60
    while True:
        device = await operator.call("GET", f"/v1/devices/{answer.body['device_id']}", expect=200)
        if device["lifecycle"] == "provisioned" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert device["lifecycle"] == "provisioned"
    provisioned_after_s = time.monotonic() - started

    found, problems = await poison.dead_letters(bootstrap, topics, sent)
    assert problems == []
    assert len(found) == len(poison.expected(sent))
    assert {h["fleetreg.stage"] for h in found.values()} == {"decode"}  # all caught before any query
    groups = {name: system.services[name].env["FLEETREG_CONSUMER_GROUP"] for name in CONSUMERS}
    assert await poison.committed_past(bootstrap, groups, sent) == []
    for name in ("intake", *CONSUMERS):
        await system.services[name].wait_ready(within_s=10)
    # The intake waits a few seconds for an outcome: with the pipeline past the poison, a 200
    # "ready" at once (no 202 to poll) says its outcome listener read past the bad key.
    second = await register(session, system.device_url, code, uuid.uuid4().hex[:12], settle=False)
    assert (second.status, second.body.get("status")) == (200, "ready"), second.body
    print(
        f"\npoison: {len(sent)} records sent, {len(found)} dead letters, "
        f"next device provisioned {provisioned_after_s:.1f} s after the first poison record"
    )
