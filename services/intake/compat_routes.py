"""The wiring of the reference-compatible device API (apv/v27) under its prefix.

Every answer is 200 with a client-readable body (the client ignores HTTP status codes)
except the provisioning download, which is 200 only with a valid file.

Throttling (shared/throttle.py) speaks the protocol too: an address over its limit of
refused calls is told ``pending`` with a reason at the register step (the client
retries it every 30 s) and a refusal with a reason at the other steps (the client
tries again at its next boot); the download answers 429. Refusals that count against
the address are marked by the business logic (``Reply.counted``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from services.intake import compat
from services.intake.compat import Reply
from services.intake.compat_answers import answer, refused
from shared.domain.identifiers import hardware_id_stem
from shared.events import DeviceSignal, RegistrationRequested
from shared.kafka import publish
from shared.metrics import THROTTLED
from shared.throttle import THROTTLE, mark_refused, request_source

if TYPE_CHECKING:
    from services.intake.app import Resources


OPENAPI = Path(__file__).with_name("openapi-compat.yaml")


def _reply(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json")


def _answer(request: web.Request, reply: Reply) -> web.Response:
    if reply.counted:
        mark_refused(request)
    return _reply(reply.text)


def _throttled(request: web.Request) -> int | None:
    """Seconds the caller's address must still wait, or None."""
    throttle = request.app.get(THROTTLE)
    wait = throttle.retry_after(request_source(request)) if throttle is not None else None
    if wait is not None:
        THROTTLED.labels("intake", "refusals_per_source").inc()
    return wait


def _slow_down(wait: int) -> str:
    return f"too many refused calls from this address: try again in {wait} s"


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def add_compat_routes(app: web.Application, key: web.AppKey[Resources], prefix: str) -> None:
    def resources(request: web.Request) -> Resources:
        return request.app[key]

    def publisher(r: Resources) -> Any:
        async def publish_request(event: RegistrationRequested) -> None:
            await publish(
                r.producer, r.topics.registration_requested, hardware_id_stem(event.hardware_id), event
            )

        return publish_request

    async def information(request: web.Request) -> web.Response:
        if (wait := _throttled(request)) is not None:
            return _reply(refused(_slow_down(wait)))
        body = await _body(request)
        if body is None:
            return _reply(refused("the body is not a JSON object"))
        r = resources(request)
        return _answer(request, await compat.information(r.pool, r.keyring, body, request_source(request)))

    async def friendly_configuration(request: web.Request) -> web.Response:
        if (wait := _throttled(request)) is not None:
            return _reply(refused(_slow_down(wait)))
        r = resources(request)
        return _answer(
            request,
            await compat.friendly_configuration(
                r.pool,
                r.keyring,
                publisher(r),
                r.waiter,
                r.settings.compat.wait_seconds,
                request.match_info["code"],
                request.match_info["hardware_id"],
                request.app[THROTTLE],
                request_source(request),
            ),
        )

    async def download(request: web.Request) -> web.Response:
        if (wait := _throttled(request)) is not None:
            return web.Response(status=429, text=_slow_down(wait) + "\n", headers={"Retry-After": str(wait)})
        content = await compat.provisioning_file(
            resources(request).pool, request.match_info["provisioning_id"]
        )
        if content is None:
            mark_refused(request)
            return web.Response(status=404, text="unknown provisioning ID\n")
        return web.Response(body=content, content_type="text/plain")

    async def configuration(request: web.Request) -> web.Response:
        if (wait := _throttled(request)) is not None:
            return _reply(refused(_slow_down(wait)))
        return _answer(
            request,
            await compat.service_configuration(
                resources(request).pool, request.match_info["provisioning_id"]
            ),
        )

    async def register(request: web.Request) -> web.Response:
        if (wait := _throttled(request)) is not None:
            return _reply(answer("pending", ("reason", _slow_down(wait))))
        body = await _body(request)
        if body is None:
            return _reply(refused("the body is not a JSON object"))
        r = resources(request)
        return _answer(
            request,
            await compat.register_service(
                r.pool,
                r.keyring,
                publisher(r),
                r.waiter,
                r.settings.compat.wait_seconds,
                body,
                request_source(request),
            ),
        )

    async def ready(request: web.Request) -> web.Response:
        if (wait := _throttled(request)) is not None:
            return _reply(refused(_slow_down(wait)))
        body = await _body(request)
        if body is None:
            return _reply(refused("the body is not a JSON object"))
        r = resources(request)

        async def publish_signal(signal: DeviceSignal) -> None:
            await publish(
                r.producer, r.topics.device_signals, hardware_id_stem(str(body.get("HardwareId", ""))), signal
            )

        return _answer(request, await compat.ready(r.pool, r.keyring, publish_signal, body))

    async def openapi(request: web.Request) -> web.Response:
        document = OPENAPI.read_text(encoding="utf-8").replace("'{prefix}'", repr(prefix or "/"))
        return web.Response(text=document, content_type="application/yaml")

    router = app.router
    router.add_get(f"{prefix}/openapi.yaml", openapi)
    router.add_post(f"{prefix}/bulk/registration/device/information/", information)
    router.add_get(
        f"{prefix}/bulk/registration/device/friendly/configuration/{{code}}/{{hardware_id}}/",
        friendly_configuration,
    )
    router.add_get(f"{prefix}/project/provisioning/download/{{provisioning_id}}", download)
    router.add_get(
        f"{prefix}/bulk/registration/configuration/{{provisioning_id}}/{{hardware_id}}/", configuration
    )
    router.add_post(f"{prefix}/bulk/registration/register", register)
    router.add_post(f"{prefix}/bulk/registration/device/ready/", ready)
