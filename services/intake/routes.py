"""The native device API (/v1): each route reads its resources, parses the call, hands
it to the handlers and shapes the answer with the views."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.intake import handlers, views
from services.intake.resources import RESOURCES
from shared.throttle import mark_refused, request_source

OPENAPI = Path(__file__).with_name("openapi.yaml")


def base_url(request: web.Request) -> str:
    """Where the device reached this API: the manifests' file URLs start with it."""
    return f"{request.scheme}://{request.host}"


async def authenticated(request: web.Request) -> handlers.AuthenticatedDevice:
    """The device of the path's ID, proven by the bearer secret."""
    r = request.app[RESOURCES]
    return await handlers.authenticate(
        r.pool,
        r.keyring,
        request.match_info["device_id"],
        request.headers.get("Authorization"),
        r.devices,
        r.settings.throttle.stale_credential_seconds,
    )


async def post_registration(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    include_files = handlers.parse_include(request.query.getall("include", []))
    registration = handlers.parse_registration(await request.read(), request.headers.get("Idempotency-Key"))
    answer = await handlers.register_native(
        r, registration, request_source(request), include_files=include_files
    )
    # Counted (and, from a source past its limit, answered 429 instead) only when the call
    # proved nothing: a current code whose claim is answered is never refused for its address.
    counted = await handlers.counted_refusal(
        r.pool, registration, answer, r.settings.throttle.stale_credential_seconds
    )
    if counted is not None:
        mark_refused(request, counted.target, per_source=counted.per_source)
    return views.native_view(answer, r.settings.retry_after_seconds, base_url(request))


async def get_registration(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    include_files = handlers.parse_include(request.query.getall("include", []))
    answer = await handlers.poll(
        r.pool,
        r.keyring,
        request.match_info["request_id"],
        r.settings.pending_forget_seconds,
        include_files=include_files,
        cache=r.devices,
    )
    if handlers.poll_counted(r.keyring, request.match_info["request_id"], answer):
        mark_refused(request)  # a request ID never issued here: a guess
    return views.native_view(answer, r.settings.retry_after_seconds, base_url(request))


async def get_manifest(request: web.Request) -> web.Response:
    found = await authenticated(request)
    return views.manifest_view(found, handlers.manifest(found), base_url(request))


async def get_file(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    found = await authenticated(request)
    return views.file_view(handlers.file_content(r.keyring, found, request.match_info["file_name"]))


async def post_ready(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    found = await authenticated(request)
    await handlers.signal(r.publish_signal, found, "ready")
    return views.accepted_view()


async def post_heartbeat(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    found = await authenticated(request)
    await handlers.signal(r.publish_signal, found, "heartbeat")
    return views.accepted_view(online_ttl_seconds=r.settings.online_ttl_s)


async def get_openapi(request: web.Request) -> web.Response:
    return views.yaml_view(OPENAPI.read_text(encoding="utf-8"))


ROUTES: list[web.RouteDef] = [
    web.get("/openapi.yaml", get_openapi),
    web.post("/v1/registrations", post_registration),
    web.get("/v1/registrations/{request_id}", get_registration),
    web.get("/v1/devices/{device_id}/manifest", get_manifest),
    web.get("/v1/devices/{device_id}/files/{file_name}", get_file),
    web.post("/v1/devices/{device_id}/ready", post_ready),
    web.post("/v1/devices/{device_id}/heartbeat", post_heartbeat),
]
