"""The notifier's background loops, started and stopped in one cleanup context.

* The delivery loop claims due deliveries (as many as this instance has free attempt
  slots, at most ``per_webhook`` in flight per webhook) and sends each in a task of its
  own, so a slow endpoint holds only its own slots; it looks again as soon as an attempt
  ends, or after ``poll_s`` when there was nothing to send.
* The sweep runs :func:`handlers.sweep`, the registration hooks' expiry
  (:func:`rulings.expire`) and the release of confirmed rulings whose event was lost
  before it was published (:func:`rulings.release_lost`) at start-up, then every ``sweep_s``
  (``shared.periodic.PeriodicJob``: a failed round is logged, counted, and tried again).

Nothing here depends on being the only instance: claims are leases in Postgres, the
sweep's takes are conditional. On shutdown no new delivery is claimed, the attempts in
flight get up to their timeout to finish, and a delivery cut short is sent again by
another instance once its lease lapses (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from functools import partial

from aiohttp import web

from services.notifier import handlers, rulings
from services.notifier.resources import RESOURCES, Resources
from shared.db.webhooks import DueDelivery
from shared.domain.hooks import REDIAL_EVERY_S
from shared.logging import exception_summary
from shared.metrics import ERRORS
from shared.periodic import PeriodicJob

log = logging.getLogger(__name__)
# How long a sweep round in progress at shutdown is given to finish (a few short transactions).
SWEEP_STOP_GRACE_S = 5.0


class DeliveryLoop:
    def __init__(self, service: str, resources: Resources) -> None:
        self._service = service
        self._r = resources
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        settings = self._r.delivery
        failures = 0
        while not self._stopping.is_set():
            self._wake.clear()
            free = settings.concurrency - len(self._in_flight)
            try:
                claimed = await handlers.claim(
                    self._r.pool, per_webhook=settings.per_webhook, limit=free, lease_s=settings.lease_s
                )
                failures = 0
            except Exception as exc:  # the database restarting: try again, a little later each time
                failures += 1
                ERRORS.labels(self._service, "webhook_claim_failed").inc()
                log.warning("claiming webhook deliveries failed", extra={"error": exception_summary(exc)})
                await self._pause(min(0.5 * 2**failures, 10.0))
                continue
            for due in claimed:
                task = asyncio.create_task(self._send(due), name=f"webhook-{due.id}")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if not claimed:
                await self._pause(settings.poll_s)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _send(self, due: DueDelivery) -> None:
        try:
            await handlers.attempt(
                self._r.pool,
                due,
                self._r.sender.post,
                self._r.secrets.open,
                self._r.delivery.retry_schedule,
                self._r.delivery.disable_after_s,
            )
        except Exception as exc:  # recording failed: the lease lapses and it is tried again
            ERRORS.labels(self._service, "webhook_record_failed").inc()
            log.warning(
                "recording a webhook attempt failed; it will be tried again",
                extra={"delivery_id": due.id, "error": exception_summary(exc)},
            )
        finally:
            self._wake.set()  # a slot is free, and the device's next event may be due

    async def drain(self, within_s: float) -> None:
        """Wait for the attempts in flight, then cancel what is left."""
        if not self._in_flight:
            return
        _, pending = await asyncio.wait(set(self._in_flight), timeout=within_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def sweep(resources: Resources) -> None:
    """One round of the sweep (:func:`handlers.sweep`), run every ``sweep_s``."""
    settings = resources.delivery
    await handlers.sweep(resources.pool, online_ttl_s=settings.online_ttl_s, retention_s=settings.retention_s)
    # Reservations no registration hook allowed within their hold (docs/registration-hook.md).
    await rulings.expire(resources.pool, resources.publish)
    # Confirmed rulings whose registration.decided was lost before it was published.
    await rulings.release_lost(resources.pool, resources.publish)


async def redial(resources: Resources) -> None:
    """One round of the registration hooks' redial (:func:`rulings.redial`)."""
    await rulings.redial(resources.pool, resources.hook_caller, resources.start_call)


def worker_context(service: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context of the delivery loop and the sweep, on the resources under RESOURCES."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        resources = app[RESOURCES]
        loop = DeliveryLoop(service, resources)
        # The sweep's first round at once (minutes closed while no notifier ran); on
        # shutdown a round in progress gets SWEEP_STOP_GRACE_S to finish (cut short, its
        # transactions roll back and the next round, on any instance, does the work).
        sweeper = PeriodicJob(
            service,
            "webhook_sweep",
            resources.delivery.sweep_s,
            partial(sweep, resources),
            run_at_start=True,
            stop_grace_s=SWEEP_STOP_GRACE_S,
        )
        # Fail-closed hook calls that failed are made again every pause a device is told.
        redialer = PeriodicJob(service, "hook_redial", REDIAL_EVERY_S, partial(redial, resources))
        deliveries = asyncio.create_task(loop.run(), name=f"{service}-deliveries")
        sweeper.start()
        redialer.start()
        try:
            yield
        finally:
            loop.stop()
            await asyncio.gather(deliveries, sweeper.stop(), redialer.stop(), return_exceptions=True)
            await loop.drain(resources.delivery.timeout_s + 1)

    return context
