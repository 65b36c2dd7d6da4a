"""What the intake's routes use (the registry, the broker, the outcome waiter, the
keyring, the device cache), opened and closed in one cleanup context."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from aiohttp import web

from services.intake.attestation import GroupKeyCache, NonceBook
from services.intake.certificates import Issuer
from services.intake.code_cache import CodeCache
from services.intake.device_cache import DeviceCache
from services.intake.outcomes import OutcomeWaiter
from services.intake.settings import IntakeSettings
from shared.db import attestation, attestation_cas, compat, products, webhooks
from shared.db import certificates as certificate_registry
from shared.db.pool import Pool, answers
from shared.db.products import CODES_CHANGED
from shared.db.webhooks import RefusalCount
from shared.domain.credentials import Keyring
from shared.domain.derived_keys import GroupKeyBox
from shared.events import DeviceSignal, RegistrationRequested
from shared.http import READINESS, READINESS_PROBE
from shared.kafka import Producer, Topics, make_consumer, publish
from shared.periodic import PeriodicJob
from shared.pipeline import open_registry_and_broker
from shared.throttle import THROTTLE, Throttle, open_throttle
from shared.tls import CLIENT_CERT_TRUST, ClientCertTrust

SERVICE = "intake"
SWEEP_EVERY_S = 300.0
REPORT_EVERY_S = 5.0
SUMMARY_EVERY_S = 60.0
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What the routes and handlers use (the handlers through their view of it,
    :class:`services.intake.handlers.Intake`). ``throttle`` is also ``app[THROTTLE]``, where
    the throttling middleware finds it."""

    settings: IntakeSettings
    pool: Pool
    producer: Producer
    topics: Topics
    waiter: OutcomeWaiter
    keyring: Keyring
    devices: DeviceCache
    codes: CodeCache
    throttle: Throttle
    group_keys: GroupKeyCache
    issuer: Issuer
    nonces: NonceBook

    async def publish_request(self, event: RegistrationRequested) -> None:
        """A registration request, to its declared topic and key (shared.kafka.PUBLICATIONS)."""
        await publish(self.producer, self.topics, event)

    async def publish_signal(self, hardware_id: str, signal: DeviceSignal) -> None:
        """A device's signal, to its declared topic, keyed by its device's ``hardware_id``
        as PUBLICATIONS declares (the stem, like its registration requests)."""
        await publish(self.producer, self.topics, signal, hardware_id=hardware_id)


RESOURCES: web.AppKey[Resources] = web.AppKey("resources", Resources)


async def forget_old_information(pool: Pool, retention_s: float) -> None:
    """One round of the step-1 sweep: delete the reference protocol's step-1 records older
    than the retention (anyone with the code can write them, so the table is kept bounded)."""
    deleted = await compat.forget_information(pool, retention_s)
    if deleted:
        log.info("forgot old step-1 records", extra={"count": deleted})


async def forget_proof_nonces(pool: Pool) -> None:
    """One round of the nonce sweep: delete the nonces of expired proofs (a replay of one is
    refused as expired, so its nonce need not be kept: docs/device-identity.md)."""
    deleted = await attestation.forget_expired_nonces(pool)
    if deleted:
        log.info("forgot the nonces of expired proofs", extra={"count": deleted})


async def report_throttled_codes(pool: Pool, throttle: Throttle) -> None:
    """One round of the report: add the calls refused by a code's new-device limit to the
    account's registration.refused counts (webhooks; only accounts with such a webhook
    keep them). Counted in memory first, so a flood of refusals costs no write each; a
    failed round loses those counts (a summary short of a few throttled calls)."""
    taken = throttle.take_refused_codes()
    if not taken:
        return
    owners = await products.resolve_codes(pool, [code for code, _ in taken])
    await webhooks.add_refusals(
        pool,
        [
            RefusalCount(owners[code].account_id, datetime.fromtimestamp(minute, UTC), "throttled", count)
            for (code, minute), count in taken.items()
            if code in owners
        ],
    )


async def summarize_unknown_codes(codes: CodeCache) -> None:
    """One round of the summary: one log line with the number of calls refused for an
    unknown code since the last (each is counted in fleetreg_unknown_code_refusals_total;
    none is written anywhere)."""
    refused = codes.take_refused()
    if refused:
        log.info("calls refused for an unknown code", extra={"count": refused, "period_s": SUMMARY_EVERY_S})


def resources_context(settings: IntakeSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context: opens everything, sets ``app[RESOURCES]``, the throttle and
    readiness, and closes everything on exit."""

    async def resources(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            topics, pool, producer = await open_registry_and_broker(stack, settings.database, settings.kafka)
            readiness = app[READINESS]

            def outcome_waiter_health(healthy: bool) -> None:
                readiness["outcome_waiter"] = healthy

            waiter = OutcomeWaiter(
                make_consumer(settings.kafka, [], group_id=None),
                topics.registration_outcomes,
                on_health=outcome_waiter_health,
            )
            stack.push_async_callback(waiter.stop)
            await waiter.start(await producer.partitions_for(topics.registration_outcomes))
            device_cache = DeviceCache(settings.device_cache_seconds)
            code_cache = CodeCache(settings.code_cache_seconds)
            group_keys = GroupKeyCache(
                GroupKeyBox(settings.secret_key.reveal().encode()), settings.code_cache_seconds
            )
            issuer = Issuer(
                settings.secret_key.reveal().encode(),
                settings.device_cert_days,
                settings.max_certificates_per_device,
            )

            def invalidate(payload: str) -> None:
                if payload == CODES_CHANGED:
                    code_cache.clear()
                    group_keys.clear()
                else:
                    device_cache.apply(payload)
                    issuer.apply(payload)  # crl:<account>: a certificate of it was revoked

            def listening(up: bool) -> None:
                device_cache.listening(up)
                code_cache.listening(up)
                group_keys.listening(up)
                issuer.listening(up)

            throttle = app[THROTTLE] = await open_throttle(
                stack,
                settings.throttle,
                SERVICE,
                pool,
                settings.database.url.reveal(),
                on_payload=invalidate,
                on_connected=listening,
            )
            app[RESOURCES] = Resources(
                settings,
                pool,
                producer,
                topics,
                waiter,
                Keyring(settings.secret_key.reveal().encode()),
                device_cache,
                code_cache,
                throttle,
                group_keys,
                issuer,
                NonceBook(pool),
            )
            tls = settings.compat.tls
            if tls is not None:
                # The https listener's client-certificate anchors: every account's issuing CA
                # (EST by the current certificate). Loaded before the listener starts
                # (shared/http.py), then re-read every interval (shared/tls.py).
                trust = app[CLIENT_CERT_TRUST] = ClientCertTrust(
                    tls.cert_file,
                    tls.key_file,
                    [
                        partial(certificate_registry.issuing_ca_certificates, pool),
                        partial(attestation_cas.verified_ca_ders, pool),
                    ],
                )
                await trust.refresh()
                await stack.enter_async_context(
                    PeriodicJob(
                        SERVICE,
                        "refresh_client_cert_anchors",
                        settings.compat.client_ca_refresh_seconds,
                        trust.refresh,
                    )
                )
            # Periodic work, each waiting one interval first (nothing to do at start-up).
            await stack.enter_async_context(
                PeriodicJob(
                    SERVICE,
                    "summarize_unknown_codes",
                    SUMMARY_EVERY_S,
                    partial(summarize_unknown_codes, code_cache),
                )
            )
            await stack.enter_async_context(
                PeriodicJob(
                    SERVICE,
                    "forget_step1_records",
                    SWEEP_EVERY_S,
                    partial(forget_old_information, pool, settings.compat.information_retention_seconds),
                )
            )
            await stack.enter_async_context(
                PeriodicJob(
                    SERVICE, "forget_proof_nonces", SUMMARY_EVERY_S, partial(forget_proof_nonces, pool)
                )
            )
            await stack.enter_async_context(
                PeriodicJob(
                    SERVICE,
                    "report_throttled_codes",
                    REPORT_EVERY_S,
                    partial(report_throttled_codes, pool, throttle),
                    final_round=True,  # the last counts, on the way out
                )
            )
            # The outcome listener sets its own part (outcome_waiter_health): False while
            # its reads fail, so a load balancer sends devices to an instance that hears.
            app[READINESS_PROBE] = lambda: answers(pool)
            try:
                yield
            finally:
                app[READINESS]["outcome_waiter"] = False

    return resources
