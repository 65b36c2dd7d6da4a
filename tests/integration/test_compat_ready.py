"""The reference protocol's confirmation (apv/v27 step 6) on the real Postgres: the signal
it publishes names the credential generation the device proved, so that deduplication
applies a "ready" only while the device is still at it (attack2 F3)."""

from __future__ import annotations

import pytest

from services.intake.compat import handlers
from shared.db.pool import Pool
from shared.domain.credentials import Keyring
from shared.events import DeviceSignal
from tests.integration.test_repository_compat import _setup
from tests.support import registry

pytestmark = pytest.mark.integration

KEYRING = Keyring(b"compat-ready-test-key-that-is-long-enough")


async def test_the_reference_ready_carries_the_generation_the_device_proved(pool: Pool, unique: str) -> None:
    setup = await _setup(pool)
    hardware_id = f"ready-{unique}"
    device_id = await registry.new_device(
        pool, setup.product, setup.registration_id, hardware_id, credential_generation=3
    )
    published: list[tuple[str, DeviceSignal]] = []

    async def publish(keyed_by: str, signal: DeviceSignal) -> None:
        published.append((keyed_by, signal))

    body = {
        "BulkIdentificationCode": setup.code,
        "HardwareId": hardware_id,
        "DeviceSecret": KEYRING.device_secret(device_id, 3),
    }
    await handlers.ready(pool, KEYRING, publish, body)
    assert [(h, s.device_id, s.kind, s.credential_generation) for h, s in published] == [
        (hardware_id, device_id, "ready", 3)
    ]
