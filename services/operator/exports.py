"""Device exports: how many run at once, and the streaming of one.

An export holds a pooled connection and a REPEATABLE READ snapshot for its whole length, so
exports are bounded on three sides: at most ``exports_max`` at once on an instance, at most
one per account at once on an instance (one account's stalled downloads cannot take every
slot from the others), and a download that stops reading for ``stall_seconds`` is ended (its
snapshot released). Shared by the JSON API's ``GET /v1/devices/export`` and the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from aiohttp import web

from services.operator import handlers, views
from shared.db.pool import Pool
from shared.domain.accounts import Account
from shared.errors import TooManyRequests
from shared.logging import exception_summary

EXPORT_RETRY_AFTER_S = 5
EXPORT_CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8"}
log = logging.getLogger(__name__)


class ExportSlots:
    """The exports running on this instance: at most ``limit``, one per account."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: set[str] = set()

    @contextlib.contextmanager
    def take(self, account_id: str) -> Iterator[None]:
        """A slot for the account's export, held while the block runs; TooManyRequests (429,
        Retry-After) when the account already exports or every slot is taken."""
        if account_id in self._running:
            raise TooManyRequests(
                "an export of this account is already running; wait for it to finish",
                retry_after=EXPORT_RETRY_AFTER_S,
                rule="exports_per_account=1",
            )
        if len(self._running) >= self.limit:
            raise TooManyRequests(
                f"{self.limit} device exports are running on this instance; try again shortly",
                retry_after=EXPORT_RETRY_AFTER_S,
                rule=f"exports_max={self.limit}",
            )
        self._running.add(account_id)
        try:
            yield
        finally:
            self._running.discard(account_id)


async def stream(
    request: web.Request,
    pool: Pool,
    account: Account,
    query: dict[str, str],
    chosen: str,
    *,
    online_ttl: float,
    stall_seconds: float,
) -> web.StreamResponse:
    """Every matching device, streamed (chunked) as CSV or JSON lines while it is read. The
    query was checked before (a 400 is still possible here, before the answer starts); a
    failure after it started, or a client that reads nothing for ``stall_seconds``, cannot
    change the status: the connection is closed before the end of the chunked body and the
    client sees a truncated, failed download."""
    response = web.StreamResponse(
        headers={
            "Content-Type": EXPORT_CONTENT_TYPES[chosen],
            "Content-Disposition": f'attachment; filename="devices.{chosen}"',
            # A fleet's list: never kept by a cache, never sniffed into something to render.
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    response.enable_chunked_encoding()
    async with handlers.export_devices(pool, account, query, online_ttl=online_ttl) as batches:
        await response.prepare(request)
        try:
            # A write waits while the client's socket buffer is full: a stalled reader is cut off.
            async with asyncio.timeout(stall_seconds):
                await response.write(views.export_header(chosen))
            async for batch in batches:
                async with asyncio.timeout(stall_seconds):
                    await response.write(views.export_lines(batch, chosen))
        except Exception as exc:
            reason = "stalled" if isinstance(exc, TimeoutError) else exception_summary(exc)
            log.warning("device export ended early", extra={"error": reason})
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response
