"""Device exports: how many run at once, and the streaming of one.

An export holds a pooled connection and a REPEATABLE READ snapshot for its whole length, so
exports are bounded on three sides: at most ``exports_max`` at once on an instance, at most
one per account at once on an instance (one account's stalled downloads cannot take every
slot from the others), and a download whose client takes no byte for ``stall_seconds`` is
ended (its snapshot released). Shared by the JSON API's ``GET /v1/devices/export`` and the
console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

from aiohttp import HttpVersion11, hdrs, web

from services.operator.handlers import devices as handlers
from services.operator.handlers.devices import Fleet
from services.operator.views import devices as views
from shared.connections import sending_progress, took_some
from shared.errors import TooManyRequests
from shared.logging import exception_summary

EXPORT_RETRY_AFTER_S = 5
EXPORT_CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8"}
# How often a waiting write looks whether the client took some of the answer (at most).
STALL_CHECK_SECONDS = 1.0
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
    request: web.Request, fleet: Fleet, query: dict[str, str], chosen: str, *, stall_seconds: float
) -> web.StreamResponse:
    """Every matching device of ``fleet`` as CSV or JSON lines (``chosen``: csv or jsonl),
    written while it is read. The query was
    checked before (a 400 is still possible here, before the answer starts).

    Over HTTP/1.1 the body is chunked and starts at once. HTTP/1.0 has no chunks (a proxy
    such as nginx speaks it to its upstream by default), so there the snapshot is read
    twice: once to count the body's bytes (``Content-Length``), once to send it. Either way
    the framing tells a complete export from a cut one: a failure after the answer started,
    or a client that takes no byte for ``stall_seconds`` (however slowly it reads
    otherwise), cannot change the status, so the connection is closed before the end of
    the chunked body, or before ``Content-Length`` bytes, and the client (the CLI too) sees
    a truncated, failed download, never a short file passing for a whole one."""
    response = web.StreamResponse(
        headers={
            "Content-Type": EXPORT_CONTENT_TYPES[chosen],
            "Content-Disposition": f'attachment; filename="devices.{chosen}"',
            # A fleet's list: never kept by a cache, never sniffed into something to render.
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    if request.method == hdrs.METH_HEAD:
        # aiohttp would send what is written even to a HEAD: its headers alone, nothing read.
        await response.prepare(request)
        await response.write_eof()
        return response
    async with handlers.export_devices(fleet, query) as read:
        if request.version < HttpVersion11:
            response.content_length = len(views.export_header(chosen)) + sum(
                [len(views.export_lines(batch, chosen)) async for batch in read()]
            )
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        transport = request.transport
        counted, sent = response.content_length, 0

        async def send(piece: bytes) -> None:
            nonlocal sent
            sent += len(piece)
            if counted is not None and sent > counted:
                # aiohttp would cut the body at the length: a short export that looks whole.
                raise RuntimeError(f"the export grew past its Content-Length of {counted} bytes")
            await _unstalled(response.write(piece), transport, stall_seconds)

        try:
            await send(views.export_header(chosen))
            async for batch in read():
                await send(views.export_lines(batch, chosen))
            if counted is not None and sent != counted:
                raise RuntimeError(f"the export is {sent} bytes, not its Content-Length of {counted}")
            await _unstalled(response.write_eof(), transport, stall_seconds)
        except Exception as exc:
            reason = "stalled" if isinstance(exc, TimeoutError) else exception_summary(exc)
            log.warning("device export ended early", extra={"error": reason})
            if transport is not None:
                transport.close()
    return response


async def _unstalled(
    writing: Coroutine[Any, Any, None], transport: asyncio.Transport | None, stall_seconds: float
) -> None:
    """Await a write of the answer, which waits while the client's buffers are full (aiohttp
    drains past 64 KiB). TimeoutError once the client has taken no byte for
    ``stall_seconds`` (shared.connections.sending_progress): progress, not the time one
    write takes, so a slow but steady reader gets any size of export."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(writing)
    tick = min(STALL_CHECK_SECONDS, stall_seconds / 4)
    progress_at = loop.time()
    buffered = sending_progress(transport) if transport is not None else (0, 0)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=tick)
            if done:
                task.result()
                return
            now = loop.time()
            left = sending_progress(transport) if transport is not None else buffered
            if took_some(buffered, left):
                progress_at = now
            buffered = left
            if now - progress_at >= stall_seconds:
                raise TimeoutError(f"no byte of the export taken for {stall_seconds:g} s")
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
