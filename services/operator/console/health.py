"""The pipeline's readiness as the live view shows it: each pipeline service's /readyz
(``FLEETREG_CONSOLE_PIPELINE_HEALTH_URLS``) asked over HTTP, at most once a second per
instance whatever the number of tabs, and shared by them all. The HTTP calls are here,
with the console, so that handlers stay free of HTTP: what the answers mean for an
account (``handlers.live.pipeline_health``) is a pure function of them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from services.operator.handlers.live import Probe
from shared.cache import SharedResult
from shared.metrics import PIPELINE_HEALTH_CHECKS

# How long the pipeline's probes are reused: the live view refreshes every second, and any
# number of tabs, sessions and accounts then costs each pipeline service at most one
# /readyz a second from each operator instance (1,145 refreshes in 20 s from one session
# were 3,435 probes).
PIPELINE_HEALTH_SECONDS = 1.0
# Longer than a service's own bound on its database check (shared.http.READINESS_TIMEOUT_SECONDS,
# 2 s): a silent registry then shows as "database: false" from the service's answer, not as
# a probe that timed out with no reason.
PIPELINE_PROBE_TIMEOUT_SECONDS = 2.5

PipelineProbes = SharedResult[tuple[Probe, ...]]
# The console app's shared probes (set by :func:`health_context`).
PIPELINE_PROBES: web.AppKey[PipelineProbes] = web.AppKey("pipeline_probes")


async def probe_readiness(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Probe:
    """GET ``url`` (a /readyz); never raises: a timeout or refused connection is a failed probe."""
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout_s), allow_redirects=False
        ) as response:
            if response.status == 200:
                return Probe(url, True)
            return Probe(url, False, f"answered {response.status}")
    except TimeoutError:
        return Probe(url, False, f"no answer within {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return Probe(url, False, f"unreachable ({type(exc).__name__})")


async def probe_pipeline(
    session: aiohttp.ClientSession | None,
    urls: tuple[str, ...],
    timeout_s: float = PIPELINE_PROBE_TIMEOUT_SECONDS,
) -> tuple[Probe, ...]:
    """Each readiness URL probed at once (``timeout_s`` each); never raises. Counted in
    ``fleetreg_pipeline_health_checks_total``: the console shares one result a second
    (:data:`PIPELINE_PROBES`)."""
    PIPELINE_HEALTH_CHECKS.inc()
    if session is None or not urls:
        return ()
    return tuple(await asyncio.gather(*(probe_readiness(session, url, timeout_s) for url in urls)))


def health_context(urls: tuple[str, ...]) -> Callable[[web.Application], AsyncIterator[None]]:
    """The console app's cleanup context: an HTTP client for the probes (a short timeout per
    call) and ``app[PIPELINE_PROBES]``, the probes of ``urls`` shared for
    PIPELINE_HEALTH_SECONDS; the client is closed on shutdown."""

    async def health(app: web.Application) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            http = aiohttp.ClientSession()
            stack.push_async_callback(http.close)
            app[PIPELINE_PROBES] = SharedResult(lambda: probe_pipeline(http, urls), PIPELINE_HEALTH_SECONDS)
            yield

    return health
