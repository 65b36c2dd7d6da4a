"""What the operator API's handlers may use, opened and closed in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from services.operator import handlers
from services.operator.exports import ExportSlots
from services.operator.settings import OperatorSettings, RetentionSettings
from shared.cache import SharedResult
from shared.db.pool import Pool, answers, open_pool
from shared.domain.credentials import Keyring
from shared.http import READINESS, READINESS_PROBE
from shared.throttle import THROTTLE, open_throttle

SERVICE = "operator"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    settings: OperatorSettings
    pool: Pool
    # Device exports running on this instance: each holds a pooled connection for its whole
    # length, so they are capped below the pool's size (settings.exports_max), one per account.
    export_slots: ExportSlots = field(default_factory=lambda: ExportSlots(1))
    # The console's live view asks the pipeline's /readyz with it (a short timeout per call).
    pipeline_http: aiohttp.ClientSession | None = None
    # The pipeline's probes, shared by every live view of this instance: computed at most
    # once per handlers.PIPELINE_HEALTH_SECONDS, one computation at a time.
    pipeline_probes: SharedResult[tuple[handlers.Probe, ...]] | None = None
    # The console's client of the bulk API (uploads streamed through, publish, cancel): a
    # session of its own, so a slow upload never holds up the health probes.
    bulk_http: aiohttp.ClientSession | None = None

    @property
    def keyring(self) -> Keyring:
        """What the deployment's secret key derives: a rename renders the device's files
        again (their service passwords), as provisioning does."""
        return Keyring(self.settings.secret_key.reveal().encode())


RESOURCES: web.AppKey[Resources] = web.AppKey("resources", Resources)


def resources_context(settings: OperatorSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's cleanup context: opens the pool and the throttle, sets ``app[RESOURCES]``
    and readiness, and closes everything on shutdown."""

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            pool = await open_pool(settings.database)
            stack.push_async_callback(pool.close)
            app[THROTTLE] = await open_throttle(
                stack, settings.throttle, SERVICE, pool, settings.database.url.reveal()
            )
            pipeline_http = aiohttp.ClientSession()
            stack.push_async_callback(pipeline_http.close)
            # No total timeout: an upload of a large file takes as long as it takes; a bulk
            # API that does not accept or answer is given up on.
            bulk_http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300)
            )
            stack.push_async_callback(bulk_http.close)
            urls = settings.console.pipeline_health_urls
            app[RESOURCES] = Resources(
                settings,
                pool,
                ExportSlots(settings.exports_max),
                pipeline_http=pipeline_http,
                pipeline_probes=SharedResult(
                    lambda: handlers.probe_pipeline(pipeline_http, urls), handlers.PIPELINE_HEALTH_SECONDS
                ),
                bulk_http=bulk_http,
            )
            pruning = asyncio.create_task(_prune_forever(pool, settings.retention), name="retention")
            stack.push_async_callback(_cancel, pruning)
            app[READINESS]["pool"] = True
            app[READINESS_PROBE] = lambda: answers(pool)
            try:
                yield
            finally:
                app[READINESS]["pool"] = False

    return resources


async def _prune_forever(pool: Pool, retention: RetentionSettings) -> None:
    """Prune expired records (registration decisions, operator audit events) every
    ``interval_seconds``. Every instance runs it: the batches skip each other's rows
    (shared.db.retention). A failed round (the database restarting) is logged and tried
    again at the next one; the service keeps serving."""
    while True:
        await asyncio.sleep(retention.interval_seconds)
        try:
            deleted = await handlers.prune_expired(pool, retention)
        except Exception as exc:
            log.warning("retention: expired records not pruned", extra={"error": type(exc).__name__})
            continue
        if any(deleted.values()):
            log.info("retention: pruned expired records", extra={"deleted": deleted})


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
