"""What the notifier's handlers use, opened and closed in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from services.notifier import rulings
from services.notifier.settings import DeliverySettings, NotifierSettings
from shared.db.pool import Pool
from shared.domain.hooks import HOOK_SECRETS, TIMEOUT_MAX_MS
from shared.domain.webhooks import SecretBox
from shared.events import Event, HookRequested
from shared.hook_caller import HookCaller
from shared.kafka import Producer, Topics, publish_many
from shared.pipeline import open_registry_and_broker
from shared.webhook_sender import Sender

log = logging.getLogger(__name__)


class CallTasks:
    """The registration hooks' calls in flight on this instance, each in a task of its own
    (the consumer hands records over and goes on: a slow hook never holds a partition)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, within_s: float) -> None:
        """Let the calls in flight finish (their hook's timeout at most), then cancel the
        rest: a call cut short is made again at its device's next retry."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=within_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


@dataclass(frozen=True)
class Resources:
    pool: Pool
    producer: Producer  # the consume loop's dead letters, and what a hook's ruling answers
    topics: Topics
    secrets: SecretBox  # opens the webhooks' sealed signing secrets
    sender: Sender
    delivery: DeliverySettings
    hook_caller: HookCaller
    hook_secrets: SecretBox  # opens the registration hooks' sealed signing secrets
    hook_calls: CallTasks
    hook_desk: rulings.Desk  # the calls' takes and allows, coalesced

    async def publish(self, events: Sequence[Event]) -> None:
        await publish_many(self.producer, self.topics, events)

    def start_call(self, requested: HookRequested) -> None:
        """Make a registration hook's call in a task of its own (rulings.make_call)."""
        work = rulings.make_call_logged(
            self.hook_desk, self.hook_caller, self.hook_secrets, self.publish, requested
        )
        self.hook_calls.spawn(work, name=f"hook-{requested.call_id}")


RESOURCES = web.AppKey("resources", Resources)


def resources_context(settings: NotifierSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            pipeline, delivery = settings.pipeline, settings.delivery
            topics, pool, producer = await open_registry_and_broker(stack, pipeline.database, pipeline.kafka)
            sender = Sender(
                allow_private=delivery.allow_private_urls,
                timeout_s=delivery.timeout_s,
                concurrency=delivery.concurrency,
            )
            await sender.open()
            stack.push_async_callback(sender.close)
            caller = HookCaller(
                allow_private=delivery.allow_private_urls, concurrency=delivery.hook_concurrency
            )
            await caller.open()
            stack.push_async_callback(caller.close)
            key = pipeline.secret_key.reveal().encode()
            calls = CallTasks()
            # Closed in reverse: the calls in flight finish (or are cut short) before the
            # caller's session and the producer they publish with are closed.
            stack.push_async_callback(calls.drain, TIMEOUT_MAX_MS / 1000 + 1)
            app[RESOURCES] = Resources(
                pool,
                producer,
                topics,
                SecretBox(key),
                sender,
                delivery,
                caller,
                SecretBox(key, HOOK_SECRETS),
                calls,
                rulings.Desk(pool),
            )
            yield

    return context
