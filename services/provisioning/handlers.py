"""Provisioning's business logic: for each decided registration, make sure the device
has one provisioning file per enabled service at its current credential generation
(allocating service UIDs on first need), record each file's size and SHA-256 for the
manifest, mark the request ready, all in one transaction per batch. Each outcome carries
its decision's credential generation, and says when that generation is no longer the
device's (``superseded``: the intake then hands out no secret).

Idempotent: files already rendered for the device's generation are left alone, so a
redelivered batch or a device registering again changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from shared.db import decisions, files
from shared.db.pool import Pool
from shared.domain.credentials import Keyring
from shared.events import RegistrationDecided, RegistrationOutcome
from shared.metrics import PIPELINE_LATENCY


async def provision_batch(
    pool: Pool, keyring: Keyring, decided: Sequence[RegistrationDecided]
) -> list[RegistrationOutcome]:
    async with pool.acquire() as conn, conn.transaction():
        found = await files.device_files(conn, [d.device_id for d in decided], lock=True)
        stale = [(device, service) for device in found.values() for service in device.stale()]
        fresh_uids = await files.next_service_uids(conn, sum(1 for _, s in stale if s.service_uid is None))
        await files.record_files(conn, files.render_stale(keyring, stale, fresh_uids))
        await decisions.mark_ready(conn, [d.request_id for d in decided])
    now = time.time()
    for d in decided:
        if d.received_at:
            PIPELINE_LATENCY.labels("provisioned").observe(max(0.0, now - d.received_at))
    return [
        RegistrationOutcome(
            request_id=d.request_id,
            status="ready",
            device_id=d.device_id,
            hardware_id=d.hardware_id,
            decision=d.decision,
            # The device's account, so that the intake signs a CSR's certificate with its
            # CA without reading the device first (services/intake/handlers.py,
            # with_certificate; the record is conditional on the device's row).
            account_id=d.account_id,
            # The decision's own generation, never the device's current one: claims handled
            # together (one batch, or a claim provisioned after a later reclaim) must not all
            # get the last claim's secret (a look-alike's claim in the board's batch would
            # keep working credentials after the board's "ready").
            credential_generation=d.credential_generation,
            superseded=d.device_id in found
            and found[d.device_id].credential_generation != d.credential_generation,
        )
        for d in decided
    ]
