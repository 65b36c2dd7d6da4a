"""Bounds on the uploads one ingestion instance holds at once, and on how slowly a body
may arrive (settings.UploadBounds; docs/bulk-registration.md, "Bounds on uploads").

* :class:`UploadGate` admits an upload before a byte of its body is read: at most
  ``per_key`` at once per API key (429: that key's own uploads are the reason), at most
  ``per_instance`` at once and at most ``spool_bytes`` of spool reserved (503: the instance
  is busy; another instance, or this one a little later, takes it). An upload reserves its
  Content-Length, or the size limit when it sends none (chunked): the most it may spool.
* :func:`paced` passes the body's chunks on while they keep up ``min_bytes_per_second``
  on average after ``grace_seconds``, with no pause longer than ``idle_seconds``; a body
  slower than that is cut off (408) and its upload discarded by the caller.

No aiohttp here: the counts are this process's own, independent of any bound the listener
applies in front (shared/http.py), so they hold whatever that is configured to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

from services.ingestion.settings import UploadBounds
from shared.errors import DomainError, TooManyRequests

# Seconds a refused upload is told to wait: an upload in progress lasts seconds at least.
RETRY_AFTER_S = 5


class UploadsBusy(DomainError):
    """The instance holds as many uploads, or as much spool, as it may (503, Retry-After)."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message, rule=rule)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_S)}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "retry_after": str(RETRY_AFTER_S)}


class BodyTooSlow(DomainError):
    """The body arrived slower than the bounds allow (408); nothing of it is kept."""

    status = 408
    code = "request_timeout"


class UploadGate:
    """The uploads in progress on this instance: how many per key, in all, and the spool
    bytes they reserved. One per process (the counts are in memory: an instance that dies
    holds nothing)."""

    def __init__(self, bounds: UploadBounds) -> None:
        self._bounds = bounds
        self._per_key: Counter[str] = Counter()
        self._uploads = 0
        self._reserved = 0

    @property
    def in_progress(self) -> int:
        return self._uploads

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    @contextlib.contextmanager
    def admit(self, key: str, reserve_bytes: int) -> Iterator[None]:
        """Hold a place for one upload of ``key`` (an API key's ID) reserving ``reserve_bytes``
        of spool, until the block ends. TooManyRequests (429) past ``per_key``; UploadsBusy
        (503) past ``per_instance`` or ``spool_bytes``. Checked and taken with no await in
        between, so concurrent requests cannot both take the last place."""
        bounds = self._bounds
        if self._per_key[key] >= bounds.per_key:
            raise TooManyRequests(
                f"this API key has {bounds.per_key} uploads in progress already; wait for one "
                "to finish (FLEETREG_INGESTION_UPLOADS_PER_KEY)",
                retry_after=RETRY_AFTER_S,
                rule=f"uploads_per_key={bounds.per_key}",
            )
        if self._uploads >= bounds.per_instance:
            raise UploadsBusy(
                f"this instance has {bounds.per_instance} uploads in progress; try again shortly "
                "(FLEETREG_INGESTION_UPLOADS_PER_INSTANCE)",
                rule=f"uploads_per_instance={bounds.per_instance}",
            )
        if self._reserved + reserve_bytes > bounds.spool_bytes:
            raise UploadsBusy(
                f"this instance's uploads in progress hold its {bounds.spool_bytes} bytes of spool; "
                "try again shortly (FLEETREG_INGESTION_SPOOL_BYTES_IN_FLIGHT; an upload without a "
                "Content-Length reserves the size limit)",
                rule=f"spool_bytes_in_flight={bounds.spool_bytes}",
            )
        self._per_key[key] += 1
        self._uploads += 1
        self._reserved += reserve_bytes
        try:
            yield
        finally:
            self._per_key[key] -= 1
            if not self._per_key[key]:
                del self._per_key[key]
            self._uploads -= 1
            self._reserved -= reserve_bytes


async def paced(
    chunks: AsyncIterator[bytes], bounds: UploadBounds, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[bytes]:
    """``chunks`` as they come, while the body keeps pace: by ``t`` seconds after the start
    at least ``(t - grace_seconds) * min_bytes_per_second`` bytes have come, and no chunk
    took longer than ``idle_seconds``. BodyTooSlow (408) otherwise, raised when the pace is
    missed (the wait for a chunk is cut at that moment, not after it)."""
    started = clock()
    received = 0
    while True:
        # When the bytes received so far stop being enough: grace, plus their worth at the rate.
        due = started + bounds.grace_seconds + received / bounds.min_bytes_per_second
        wait = min(bounds.idle_seconds, due - clock())
        try:
            async with asyncio.timeout(max(0.0, wait)):
                chunk = await anext(chunks, b"")
        except TimeoutError:
            raise BodyTooSlow(
                f"the body came slower than {bounds.min_bytes_per_second} bytes/s after the first "
                f"{bounds.grace_seconds:g} s, or paused for {bounds.idle_seconds:g} s "
                f"({received} bytes in {clock() - started:.1f} s): the upload was cut off and "
                "nothing was stored (FLEETREG_INGESTION_BODY_MIN_BYTES_PER_SECOND, "
                "FLEETREG_INGESTION_BODY_IDLE_SECONDS)",
                field="body",
                rule=f"min_bytes_per_second={bounds.min_bytes_per_second}",
            ) from None
        if not chunk:
            return
        received += len(chunk)
        yield chunk
