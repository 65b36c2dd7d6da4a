"""Helpers for the registration hook's tests (auto and bulk registrations alike): its
sealed secret as stored, and what the services logged meanwhile."""

from __future__ import annotations

from pathlib import Path

from shared.db.pool import Pool
from tests.support.system import LOGS


async def sealed_secret(pool: Pool, registration_id: str) -> bytes | None:
    """The registration's hook secret as stored (None: no hook)."""
    sealed: bytes | None = await pool.fetchval(
        "SELECT hook_secret_sealed FROM registrations WHERE id = $1", registration_id
    )
    return sealed


def log_offsets() -> dict[Path, int]:
    """Where each service log ends now: :func:`log_text_since` reads what comes after."""
    return {path: path.stat().st_size for path in LOGS.glob("*.log")}


def log_text_since(offsets: dict[Path, int]) -> str:
    """Every service log's text written since ``offsets`` (a log begun since: all of it)."""
    texts = []
    for path in LOGS.glob("*.log"):
        with path.open("rb") as log:
            log.seek(offsets.get(path, 0))
            texts.append(log.read().decode(errors="replace"))
    return "\n".join(texts)
