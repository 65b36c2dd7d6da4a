"""What the operator API's handlers may use, opened and closed in one place."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from aiohttp import web

from services.operator.exports import ExportSlots
from services.operator.handlers import trail
from services.operator.settings import OperatorSettings, RetentionSettings
from shared.db.pool import Pool, answers, open_pool
from shared.domain.credentials import Keyring
from shared.hook_caller import HookCaller
from shared.http import READINESS, READINESS_PROBE
from shared.oidc import OidcClient
from shared.periodic import PeriodicJob
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
    # The console's client of the bulk API (uploads streamed through, publish, cancel): a
    # session of its own, so a slow upload never holds up the health probes.
    bulk_http: aiohttp.ClientSession | None = None
    # Registration hooks' test calls (handlers/hooks.py): the notifier's caller, with its
    # address checks under FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS as the operator reads it.
    # Opened by resources_context; an unopened one refuses to call.
    hook_caller: HookCaller = field(default_factory=lambda: HookCaller(allow_private=False))
    # The console's single sign-on (console/sso.py): one client of the accounts' identity
    # providers, under the same address rules as the hooks. Opened by resources_context.
    oidc: OidcClient = field(default_factory=lambda: OidcClient(allow_private=False))

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
            # No total timeout: an upload of a large file takes as long as it takes; a bulk
            # API that does not accept or answer is given up on.
            bulk_http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=300)
            )
            stack.push_async_callback(bulk_http.close)
            hook_caller = HookCaller(allow_private=settings.webhooks_allow_private_urls)
            await hook_caller.open()
            stack.push_async_callback(hook_caller.close)
            oidc = OidcClient(allow_private=settings.webhooks_allow_private_urls)
            await oidc.open()
            stack.push_async_callback(oidc.close)
            app[RESOURCES] = Resources(
                settings,
                pool,
                ExportSlots(settings.exports_max),
                bulk_http=bulk_http,
                hook_caller=hook_caller,
                oidc=oidc,
            )
            # Every instance prunes: the batches skip each other's rows (shared.db.retention).
            await stack.enter_async_context(
                PeriodicJob(
                    SERVICE,
                    "retention",
                    settings.retention.interval_seconds,
                    partial(
                        retention_round, pool, settings.retention, settings.throttle.stale_credential_seconds
                    ),
                )
            )
            app[READINESS]["pool"] = True
            app[READINESS_PROBE] = lambda: answers(pool)
            try:
                yield
            finally:
                app[READINESS]["pool"] = False

    return resources


async def retention_round(pool: Pool, retention: RetentionSettings, stale_credential_seconds: float) -> None:
    """One round of retention, every ``retention.interval_seconds`` after the first wait:
    prune expired records (registration decisions, operator audit events, deleted devices
    past the stale-credential window, console sessions past their expiry)."""
    deleted = await trail.prune_expired(pool, retention, stale_credential_seconds=stale_credential_seconds)
    if any(deleted.values()):
        log.info("retention: pruned expired records", extra={"deleted": deleted})
