"""The short form of ``make chaos`` (docs/chaos.md), on the test system's processes and the
shared test infrastructure (no broker or database restart here: test_faults_and_scale_out.py
covers those, and the dedup/provisioning kills).

What this adds: the intake itself killed with SIGKILL while devices boot and retry (a
device talks to the intake only), an undecodable record on a consumed topic landing
in the dead-letter topic with its reason while its partition moves on, and the
schema-valid poison of every kind on every consumed topic before a storm.
"""

from __future__ import annotations

import aiohttp

from shared.db.pool import Pool
from shared.kafka import Topics
from tests.chaos.scenario import Fault, Target, storm_wave
from tests.support.system import System


def _target(system: System, pool: Pool, infra: dict[str, str]) -> Target:
    async def kill(name: str) -> None:
        system.services[name].kill()

    async def start(name: str) -> None:
        system.services[name].start()
        await system.services[name].wait_ready()

    prefix = system.env["FLEETREG_TOPIC_PREFIX"]
    return Target(
        device_url=system.device_url,
        operator_url=system.operator_url,
        bulk_url=system.bulk_url,
        bootstrap=infra["KAFKA_BOOTSTRAP_SERVERS"],
        topics=Topics(prefix),
        pool=pool,
        group=lambda service: system.services[service].env["FLEETREG_CONSUMER_GROUP"],
        kill=kill,
        start=start,
    )


async def test_killing_the_intake_mid_storm_devices_retry_and_all_boot_once(
    system: System, session: aiohttp.ClientSession, pool: Pool, infra: dict[str, str]
) -> None:
    row = await storm_wave(
        _target(system, pool, infra), session, 300, Fault("kill-intake", "storm"), seed=12, fault_after_s=0.3
    )
    assert row["failed_calls"] > 0, "the kill came after the storm: it proved nothing"
    assert row["recovery_s"] is not None, row
    assert row["lost"] == 0, row
    assert row["hardware_ids_unique"], row
    assert row["provisioned_in_registry"] == row["devices_in_registry"], row


async def test_killing_the_intake_mid_storm_duplicates_no_device(
    system: System, session: aiohttp.ClientSession, pool: Pool, infra: dict[str, str]
) -> None:
    row = await storm_wave(
        _target(system, pool, infra), session, 300, Fault("kill-intake", "storm"), seed=14, fault_after_s=0.3
    )
    assert row["duplicated"] == 0, row
    assert row["devices_in_registry"] == 300, row


async def test_a_poison_record_is_dead_lettered_with_its_reason_and_its_partition_moves_on(
    system: System, session: aiohttp.ClientSession, pool: Pool, infra: dict[str, str]
) -> None:
    row = await storm_wave(
        _target(system, pool, infra), session, 150, Fault("poison-registration.requested", "storm"), seed=13
    )
    assert row["dead_lettered"], row
    assert "not JSON" in row["dead_letter_reason"], row
    assert row["partition_progress"], row  # records after the poison were processed and committed
    assert (row["lost"], row["duplicated"]) == (0, 0), row


async def test_schema_valid_poison_on_every_topic_then_a_storm_every_device_is_provisioned(
    system: System, session: aiohttp.ClientSession, pool: Pool, infra: dict[str, str]
) -> None:
    """``make chaos``'s poison-schema fault, small: tests/chaos/poison.py's records on every
    partition of every consumed topic, then a storm of 100 devices."""
    row = await storm_wave(
        _target(system, pool, infra), session, 100, Fault("poison-schema", "storm"), seed=15
    )
    assert row["dead_lettered"], row
    assert row["partition_progress"], row
    assert row["dead_letters"] > row["poison_records"] > 0, row  # topics read by two groups: two each
    assert (row["lost"], row["duplicated"]) == (0, 0), row
    assert row["provisioned_in_registry"] == row["devices_in_registry"] == 100, row
