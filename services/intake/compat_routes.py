"""The wiring of the reference-compatible device API (apv/v27) under its prefix.

Every answer is 200 with a client-readable body (the client ignores HTTP status codes)
except the provisioning download, which is 200 only with a valid file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from services.intake import compat
from services.intake.compat_answers import refused
from shared.domain.identifiers import hardware_id_stem
from shared.events import DeviceSignal, RegistrationRequested
from shared.kafka import publish

if TYPE_CHECKING:
    from services.intake.app import Resources


def _reply(text: str) -> web.Response:
    return web.Response(text=text, content_type="application/json")


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
        body = await _body(request)
        if body is None:
            return _reply(refused("the body is not a JSON object"))
        r = resources(request)
        return _reply(await compat.information(r.pool, r.keyring, body))

    async def friendly_configuration(request: web.Request) -> web.Response:
        r = resources(request)
        return _reply(
            await compat.friendly_configuration(
                r.pool,
                r.keyring,
                publisher(r),
                r.waiter,
                r.settings.compat.wait_seconds,
                request.match_info["code"],
                request.match_info["hardware_id"],
            )
        )

    async def download(request: web.Request) -> web.Response:
        content = await compat.provisioning_file(
            resources(request).pool, request.match_info["provisioning_id"]
        )
        if content is None:
            return web.Response(status=404, text="unknown provisioning ID\n")
        return web.Response(body=content, content_type="text/plain")

    async def configuration(request: web.Request) -> web.Response:
        return _reply(
            await compat.service_configuration(resources(request).pool, request.match_info["provisioning_id"])
        )

    async def register(request: web.Request) -> web.Response:
        body = await _body(request)
        if body is None:
            return _reply(refused("the body is not a JSON object"))
        r = resources(request)
        return _reply(
            await compat.register_service(
                r.pool, r.keyring, publisher(r), r.waiter, r.settings.compat.wait_seconds, body
            )
        )

    async def ready(request: web.Request) -> web.Response:
        body = await _body(request)
        if body is None:
            return _reply(refused("the body is not a JSON object"))
        r = resources(request)

        async def publish_signal(signal: DeviceSignal) -> None:
            await publish(
                r.producer, r.topics.device_signals, hardware_id_stem(str(body.get("HardwareId", ""))), signal
            )

        return _reply(await compat.ready(r.pool, r.keyring, publish_signal, body))

    router = app.router
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
