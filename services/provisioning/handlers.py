"""Provisioning's business logic: for each decided registration, make sure the device
has one provisioning file per enabled service at its current credential generation
(allocating service UIDs on first need), record each file's size and SHA-256 for the
manifest, mark the request ready, all in one transaction per batch.

Idempotent: files already rendered for the device's generation are left alone, so a
redelivered batch or a device registering again changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from shared.db import devices
from shared.db.devices import FileRow
from shared.db.pool import Pool
from shared.domain.credentials import Keyring
from shared.domain.provisioning import FileSpec, render, service_uid, sha256_hex
from shared.events import RegistrationDecided, RegistrationOutcome
from shared.metrics import PIPELINE_LATENCY


async def provision_batch(
    pool: Pool, keyring: Keyring, decided: Sequence[RegistrationDecided]
) -> list[RegistrationOutcome]:
    async with pool.acquire() as conn, conn.transaction():
        rows = await devices.provisioning_input(conn, [d.device_id for d in decided])
        stale = [
            r
            for r in rows
            if r["file_generation"] is None or r["file_generation"] < r["credential_generation"]
        ]
        fresh_uids = iter(
            await devices.next_service_uids(conn, sum(1 for r in stale if r["service_uid"] is None))
        )
        files = []
        for row in stale:
            uid = row["service_uid"] or service_uid(next(fresh_uids))
            spec = FileSpec(
                provisioning_id=row["provisioning_id"].upper(),
                position=row["position"],
                service_name=row["service_name"],
                type_code=row["type_code"],
                port=row["port"],
                service_uid=uid,
                hardware_id=row["hardware_id"],
                device_name=row["name"],
            )
            content = render(spec, keyring.service_password(uid, row["credential_generation"]))
            files.append(
                FileRow(
                    device_id=row["device_id"],
                    provisioning_id=row["provisioning_id"],
                    generation=row["credential_generation"],
                    service_uid=uid,
                    file_name=spec.file_name,
                    size=len(content),
                    sha256=sha256_hex(content),
                )
            )
        await devices.store_files(conn, files)
        await devices.mark_ready(conn, [d.request_id for d in decided])
    generations = {r["device_id"]: r["credential_generation"] for r in rows}
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
            credential_generation=generations.get(d.device_id, d.credential_generation),
        )
        for d in decided
    ]
