"""The routes of the reference-compatible device API (apv/v27) under its prefix.

Every answer is 200 with a client-readable body (the client ignores HTTP status codes)
except the provisioning download, which is 200 only with a valid file.

Throttling (shared/throttle.py) speaks the protocol too. Every call is evaluated first:
one that proves something (a current code, a listed device with its key, its device
secret) is answered whatever its address did. A call refused for a reason that counts
(``Reply.counted``, marked by the business logic) is counted against its address and
what it guessed; while that address (or pair) is over its limit it is told ``pending``
with a reason at the register step (the client retries it every 30 s) and a refusal
with a reason at the other steps (the client tries again at its next boot) instead;
the download answers 429.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from services.intake.compat import handlers
from services.intake.compat.answers import answer, refused
from services.intake.compat.handlers import Reply
from services.intake.resources import RESOURCES
from shared.throttle import blocked_refusal, mark_refused, request_source

OPENAPI = Path(__file__).with_name("openapi.yaml")


def _reply(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json")


def _answer(request: web.Request, reply: Reply, *, register_step: bool = False) -> web.Response:
    """The reply, or, for a counted refusal from an address (or address and target) past
    its limit, the protocol's "slow down" in its place (not counted again)."""
    if reply.counted:
        mark_refused(request, reply.target)
        if (blocked := blocked_refusal(request)) is not None:
            if register_step:
                return _reply(answer("pending", ("reason", _slow_down(blocked.retry_after))))
            return _reply(refused(_slow_down(blocked.retry_after)))
    return _reply(reply.text)


_slow_down = handlers.slow_down


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def information(request: web.Request) -> web.Response:
    body = await _body(request)
    if body is None:
        return _reply(refused("the body is not a JSON object"))
    return _answer(request, await handlers.information(request.app[RESOURCES], body, request_source(request)))


async def friendly_configuration(request: web.Request) -> web.Response:
    return _answer(
        request,
        await handlers.friendly_configuration(
            request.app[RESOURCES],
            request.match_info["code"],
            request.match_info["hardware_id"],
            request_source(request),
        ),
    )


async def download(request: web.Request) -> web.Response:
    content = await handlers.provisioning_file(
        request.app[RESOURCES].pool, request.match_info["provisioning_id"]
    )
    if content is None:
        mark_refused(request)
        if (blocked := blocked_refusal(request)) is not None:
            wait = blocked.retry_after
            return web.Response(status=429, text=_slow_down(wait) + "\n", headers={"Retry-After": str(wait)})
        return web.Response(status=404, text="unknown provisioning ID\n")
    return web.Response(body=content, content_type="text/plain")


async def configuration(request: web.Request) -> web.Response:
    return _answer(
        request,
        await handlers.service_configuration(
            request.app[RESOURCES].pool, request.match_info["provisioning_id"]
        ),
    )


async def register(request: web.Request) -> web.Response:
    body = await _body(request)
    if body is None:
        return _reply(refused("the body is not a JSON object"))
    return _answer(
        request,
        await handlers.register_service(request.app[RESOURCES], body, request_source(request)),
        register_step=True,
    )


async def ready(request: web.Request) -> web.Response:
    body = await _body(request)
    if body is None:
        return _reply(refused("the body is not a JSON object"))
    r = request.app[RESOURCES]
    return _answer(
        request,
        await handlers.ready(
            r.pool, r.keyring, r.publish_signal, body, r.settings.throttle.stale_credential_seconds
        ),
    )


async def openapi(request: web.Request) -> web.Response:
    """The protocol's document, with the servers' prefix this instance serves under."""
    prefix = request.app[RESOURCES].settings.compat.prefix
    document = OPENAPI.read_text(encoding="utf-8").replace("'{prefix}'", repr(prefix or "/"))
    return web.Response(text=document, content_type="application/yaml")


def routes(prefix: str) -> list[web.RouteDef]:
    """The protocol's calls under ``prefix`` (``FLEETREG_COMPAT_PREFIX``)."""
    return [
        web.get(f"{prefix}/openapi.yaml", openapi),
        web.post(f"{prefix}/bulk/registration/device/information/", information),
        web.get(
            f"{prefix}/bulk/registration/device/friendly/configuration/{{code}}/{{hardware_id}}/",
            friendly_configuration,
        ),
        web.get(f"{prefix}/project/provisioning/download/{{provisioning_id}}", download),
        web.get(
            f"{prefix}/bulk/registration/configuration/{{provisioning_id}}/{{hardware_id}}/", configuration
        ),
        web.post(f"{prefix}/bulk/registration/register", register),
        web.post(f"{prefix}/bulk/registration/device/ready/", ready),
    ]
