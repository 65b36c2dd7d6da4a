"""The native device API (/v1): each route reads its resources, parses the call, hands
it to the handlers and shapes the answer with the views."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from services.intake import est, handlers, views
from services.intake.certificates import CertificateRefused, NotThisRegistration
from services.intake.handlers import MalformedProof
from services.intake.resources import RESOURCES, Resources
from shared.client_certs import client_certificate
from shared.domain.certificates import CsrRefused
from shared.errors import InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from shared.http import parse_json_body
from shared.metrics import CLIENT_CERTIFICATE_REFUSALS
from shared.throttle import mark_refused, request_source

# RFC 7030 section 4.2.1: an enrollment's body is a CSR, base64 DER, of this type.
PKCS10 = "application/pkcs10"

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


# Refusals of something guessed or malformed on purpose: a refused CSR, a malformed proof
# of a device key, an unknown EST label or account, an EST label not the device's own, an
# EST body of another type than application/pkcs10.
COUNTED = (CsrRefused, MalformedProof, NotFound, NotThisRegistration, UnsupportedMediaType)


async def refusals_counted(request: web.Request, call: Callable[[], Awaitable[web.Response]]) -> web.Response:
    """``call``'s answer; a refused client certificate, a refusal of :data:`COUNTED` or a
    body past the size limit is answered as always but counted against the caller's source
    (429 once it is past its limit: shared/throttle.py), like every refusal of something
    guessed."""
    try:
        return await call()
    except CertificateRefused as exc:
        CLIENT_CERTIFICATE_REFUSALS.labels(exc.reason).inc()
        mark_refused(request)
        return views.error_view(exc)
    except COUNTED as exc:
        mark_refused(request)
        return views.error_view(exc)
    except web.HTTPRequestEntityTooLarge:
        mark_refused(request)
        limit = request.app[RESOURCES].settings.max_body_bytes
        too_large = PayloadTooLarge(
            f"the body is larger than the limit of {limit} bytes", rule=f"max_body_bytes={limit}"
        )
        return views.error_view(too_large)


async def post_registration(request: web.Request) -> web.Response:
    return await refusals_counted(request, lambda: _post_registration(request))


async def _post_registration(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    include_files = handlers.parse_include(request.query.getall("include", []))
    registration = handlers.parse_registration(await request.read(), request.headers.get("Idempotency-Key"))
    presented = client_certificate(request)
    if presented is not None:
        registration = replace(registration, client_certificate=presented)
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
    return views.manifest_view(found, handlers.manifest(found), handlers.data_file(found), base_url(request))


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


async def post_certificate(request: web.Request) -> web.Response:
    """A certificate of the CSR's key for the device the bearer secret proves (a renewal too)."""
    return await refusals_counted(request, lambda: _post_certificate(request))


async def _post_certificate(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    found = await authenticated(request)
    body = await parse_json_body(request)
    unknown = sorted(set(body) - {"csr"})
    if unknown:  # named, as the registration's unknown fields are
        raise InvalidInput(f"unknown field {unknown[0]!r}", field=unknown[0], rule="known_fields")
    if "csr" not in body:
        raise InvalidInput('the body is {"csr": "<PEM or base64 DER>"}', field="csr", rule="required")
    csr = handlers.parse_csr_field(body["csr"])
    if csr is None:
        raise InvalidInput("csr is required", field="csr", rule="required")
    return views.certificate_view(await handlers.device_certificate(r, found, csr))


async def get_certificate(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    found = await authenticated(request)
    return views.certificate_view(await handlers.current_certificate(r, found))


async def get_crl(request: web.Request) -> web.Response:
    """The account's CRL (DER, unauthenticated: a relying party fetches it)."""
    r = request.app[RESOURCES]
    account_id = request.match_info["account_id"].lower()
    return await refusals_counted(request, lambda: _crl(r, account_id))


async def _crl(r: Resources, account_id: str) -> web.Response:
    return views.crl_view(await r.issuer.crl(r.pool, account_id))


async def est_cacerts(request: web.Request) -> web.Response:
    r = request.app[RESOURCES]
    label = request.match_info["label"].lower()

    async def answer() -> web.Response:
        return views.certs_only_view(*(await est.cacerts(r, label)).ders)

    return await refusals_counted(request, answer)


async def est_simpleenroll(request: web.Request) -> web.Response:
    return await refusals_counted(request, lambda: _est_enroll(request, renewal=False))


async def est_simplereenroll(request: web.Request) -> web.Response:
    return await refusals_counted(request, lambda: _est_enroll(request, renewal=True))


async def _est_enroll(request: web.Request, *, renewal: bool) -> web.Response:
    r = request.app[RESOURCES]
    if request.content_type != PKCS10:
        raise UnsupportedMediaType(
            f"send the CSR as {PKCS10} (base64 DER)", field="Content-Type", rule=PKCS10
        )
    text = (await request.read()).decode("ascii", errors="replace")
    authorization = request.headers.get("Authorization")
    # The client certificate is read only when it is the proof: with Basic credentials, a
    # trusted proxy's header is not even parsed.
    client = client_certificate(request) if not (authorization or "").strip() else None
    issued = await est.enroll(
        r,
        request.match_info["label"].lower(),
        authorization,
        text,
        renewal=renewal,
        presented=client.leaf if client is not None else None,
    )
    return views.certs_only_view(issued.certificate.der)


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
    web.post("/v1/devices/{device_id}/certificate", post_certificate),
    web.get("/v1/devices/{device_id}/certificate", get_certificate),
    web.get("/v1/accounts/{account_id}/crl", get_crl),
    web.get("/.well-known/est/{label}/cacerts", est_cacerts),
    web.post("/.well-known/est/{label}/simpleenroll", est_simpleenroll),
    web.post("/.well-known/est/{label}/simplereenroll", est_simplereenroll),
]
