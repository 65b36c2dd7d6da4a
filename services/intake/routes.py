"""The intake's wiring: HTTP routes of the native device API (/v1) onto the handlers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from services.intake import handlers
from services.intake.handlers import Answer
from shared.domain.identifiers import hardware_id_stem
from shared.events import DeviceSignal, RegistrationRequested
from shared.http import json_response
from shared.kafka import publish
from shared.throttle import THROTTLE, mark_refused

if TYPE_CHECKING:
    from services.intake.app import Resources


OPENAPI = Path(__file__).with_name("openapi.yaml")


def native_view(answer: Answer, retry_after: int) -> web.Response:
    body: dict[str, Any] = {"status": answer.status, "request_id": answer.request_id}
    if answer.status == "ready":
        body.update(
            device_id=answer.device_id,
            hardware_id=answer.hardware_id,
            claimed_hardware_id=answer.claimed_hardware_id,
            clone=answer.clone,
            decision=answer.decision,
            manifest_url=f"/v1/devices/{answer.device_id}/manifest",
        )
        if answer.device_secret:
            body["device_secret"] = answer.device_secret
        return json_response(body, status=200)
    if answer.status == "pending":
        body["retry_after"] = retry_after
        return json_response(
            body,
            status=202,
            headers={
                "Retry-After": str(retry_after),
                "Location": f"/v1/registrations/{answer.request_id}",
            },
        )
    body["reason"] = answer.reason
    return json_response(body, status=403 if answer.status == "refused" else 404)


def add_routes(app: web.Application, key: web.AppKey[Resources]) -> None:
    def resources(request: web.Request) -> Resources:
        return request.app[key]

    async def publish_request(r: Resources, event: RegistrationRequested) -> None:
        await publish(r.producer, r.topics.registration_requested, hardware_id_stem(event.hardware_id), event)

    async def post_registration(request: web.Request) -> web.Response:
        r = resources(request)
        registration = handlers.parse_registration(
            await request.read(), request.headers.get("Idempotency-Key")
        )
        throttle = request.app[THROTTLE]
        await throttle.check_code(registration.bulk_identification_code)
        event = handlers.to_event(registration, r.keyring, protocol="native")
        answer = await handlers.register(
            event, lambda e: publish_request(r, e), r.waiter, r.keyring, r.settings.outcome_wait_seconds
        )
        if answer.status == "refused" and answer.reason in handlers.COUNTED_REFUSALS:
            mark_refused(request)
        if answer.decision in ("new", "clone"):
            await throttle.count_new_device(registration.bulk_identification_code)
        return native_view(answer, r.settings.retry_after_seconds)

    async def get_registration(request: web.Request) -> web.Response:
        r = resources(request)
        answer = await handlers.poll(
            r.pool, r.keyring, request.match_info["request_id"], r.settings.pending_forget_seconds
        )
        if answer.status == "unknown" or (
            answer.status == "refused" and answer.reason in handlers.COUNTED_REFUSALS
        ):
            mark_refused(request)
        return native_view(answer, r.settings.retry_after_seconds)

    async def device(request: web.Request) -> handlers.Device:
        r = resources(request)
        secret = handlers.bearer_token(request.headers.get("Authorization"))
        return await handlers.authenticate(
            r.pool, r.keyring, request.match_info["device_id"], secret, r.devices
        )

    async def get_manifest(request: web.Request) -> web.Response:
        found = await device(request)
        base = f"{request.scheme}://{request.host}"
        return json_response(handlers.manifest(found, base))

    async def get_file(request: web.Request) -> web.Response:
        r = resources(request)
        found = await device(request)
        content = handlers.file_content(r.keyring, found, request.match_info["file_name"])
        return web.Response(body=content, content_type="text/plain", charset="ascii")

    async def publish_signal(r: Resources, found: handlers.Device, signal: DeviceSignal) -> None:
        await publish(r.producer, r.topics.device_signals, hardware_id_stem(found.hardware_id), signal)

    async def post_ready(request: web.Request) -> web.Response:
        r = resources(request)
        found = await device(request)
        await handlers.signal(lambda s: publish_signal(r, found, s), found, "ready")
        return json_response({"status": "accepted"}, status=202)

    async def post_heartbeat(request: web.Request) -> web.Response:
        r = resources(request)
        found = await device(request)
        await handlers.signal(lambda s: publish_signal(r, found, s), found, "heartbeat")
        return json_response(
            {"status": "accepted", "online_ttl_seconds": r.settings.online_ttl_seconds}, status=202
        )

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(text=OPENAPI.read_text(encoding="utf-8"), content_type="application/yaml")

    app.router.add_get("/openapi.yaml", openapi)
    app.router.add_post("/v1/registrations", post_registration)
    app.router.add_get("/v1/registrations/{request_id}", get_registration)
    app.router.add_get("/v1/devices/{device_id}/manifest", get_manifest)
    app.router.add_get("/v1/devices/{device_id}/files/{file_name}", get_file)
    app.router.add_post("/v1/devices/{device_id}/ready", post_ready)
    app.router.add_post("/v1/devices/{device_id}/heartbeat", post_heartbeat)
