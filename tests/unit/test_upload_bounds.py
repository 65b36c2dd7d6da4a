"""The ingestion's upload bounds as units: the gate's three limits and their release, the
body's pace, and the settings that could never admit a full-size file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.ingestion.settings import IngestionSettings, UploadBounds
from services.ingestion.uploads import BodyTooSlow, UploadGate, UploadsBusy, paced
from shared.errors import TooManyRequests
from shared.settings import Env, SettingsError

BOUNDS = UploadBounds(per_key=2, per_instance=3, spool_bytes=1000)


def test_a_key_past_its_uploads_is_429_and_others_go_on() -> None:
    gate = UploadGate(BOUNDS)
    with gate.admit("a", 10), gate.admit("a", 10):
        with pytest.raises(TooManyRequests) as refused, gate.admit("a", 10):
            pass
        assert refused.value.rule == "uploads_per_key=2"
        assert refused.value.headers()["Retry-After"] == "5"
        with gate.admit("b", 10):
            assert gate.in_progress == 3
    assert (gate.in_progress, gate.reserved_bytes) == (0, 0)


def test_the_instance_past_its_uploads_or_spool_is_503() -> None:
    gate = UploadGate(BOUNDS)
    with gate.admit("a", 10), gate.admit("b", 10), gate.admit("c", 10):
        with pytest.raises(UploadsBusy) as busy, gate.admit("d", 10):
            pass
        assert (busy.value.status, busy.value.rule) == (503, "uploads_per_instance=3")
    with gate.admit("a", 600):
        with pytest.raises(UploadsBusy) as busy, gate.admit("b", 401):
            pass
        assert busy.value.rule == "spool_bytes_in_flight=1000"
        assert "Retry-After" in busy.value.headers()
        with gate.admit("b", 400):  # exactly what is left
            pass


def test_a_place_is_given_back_when_the_upload_fails() -> None:
    gate = UploadGate(BOUNDS)
    with pytest.raises(RuntimeError), gate.admit("a", 500):
        raise RuntimeError("the upload failed")
    assert (gate.in_progress, gate.reserved_bytes) == (0, 0)


async def _body(pieces: list[bytes], pause_s: float) -> AsyncIterator[bytes]:
    for piece in pieces:
        await asyncio.sleep(pause_s)
        yield piece


async def test_a_body_that_keeps_pace_passes_whole() -> None:
    bounds = UploadBounds(min_bytes_per_second=1000, grace_seconds=0.2, idle_seconds=1.0)
    got = [chunk async for chunk in paced(_body([b"x" * 500] * 4, 0.01), bounds)]
    assert b"".join(got) == b"x" * 2000


async def test_a_trickle_is_cut_off_after_the_grace() -> None:
    bounds = UploadBounds(min_bytes_per_second=1000, grace_seconds=0.2, idle_seconds=10.0)
    got = 0
    with pytest.raises(BodyTooSlow) as slow:
        async for chunk in paced(_body([b"x"] * 100, 0.05), bounds):
            got += len(chunk)
    assert slow.value.status == 408
    assert got < 100


async def test_a_pause_longer_than_the_idle_limit_is_cut_off() -> None:
    bounds = UploadBounds(min_bytes_per_second=1, grace_seconds=100.0, idle_seconds=0.1)
    with pytest.raises(BodyTooSlow):
        async for _ in paced(_body([b"x" * 10, b"y"], 0.5), bounds):
            pass


def test_a_spool_budget_below_the_size_limit_is_a_settings_error() -> None:
    env = Env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
            "DATABASE_URL": "postgresql://u:p@h/db",
            "FLEETREG_SECRET_KEY": "k" * 40,
            "FLEETREG_BULK_MAX_BYTES": "4096",
            "FLEETREG_INGESTION_SPOOL_BYTES_IN_FLIGHT": "2048",
        }
    )
    with pytest.raises(SettingsError, match="FLEETREG_INGESTION_SPOOL_BYTES_IN_FLIGHT"):
        IngestionSettings.from_env(env)
