"""The native device API's answers (/v1), shaped from the handlers' results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import hdrs, web

from services.intake.certificates import Issued
from services.intake.handlers import CLONE_RATE_RULE, Answer, AuthenticatedDevice, Boot, retry_later
from shared.db.files import ServiceFile
from shared.domain.certificates import certs_only
from shared.domain.provisioning import REGISTRATION_DATA_TYPE, DataFile
from shared.domain.refusals import ReasonCode, reason_code_of, reason_code_of_status
from shared.errors import DomainError, TooManyRequests
from shared.http import Handler, json_response
from shared.plain_text import PLAIN_TEXT, flatten, prefers_plain_text

# Every path of the native device API, EST and the CRL included: their JSON answers have a
# plain-text form, and their 401, 403 and 429 answers carry a reason_code (docs/device-api.md).
# The reference protocol's prefix is configurable, so its paths are told apart by the app
# (the middlewares' ``reference_prefix``).
NATIVE_PATHS = ("/v1/", "/.well-known/est/")


def is_native(path: str, reference_prefix: str) -> bool:
    """Whether ``path`` is the native device API's (not the reference protocol's, which
    answers in its own words, nor the OpenAPI document)."""
    return path.startswith(NATIVE_PATHS) and not path.startswith(reference_prefix)


def native_view(answer: Answer, retry_after: int, base_url: str) -> web.Response:
    """A registration call's or poll's answer: 200 ready, 202 pending, 403 refused, 404 unknown,
    429 refused for now (the clone rate per source, with Retry-After); a ready answer of a
    two-call boot (``include=files``) adds the manifest, files inline."""
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
        if answer.boot is not None:
            body["manifest"] = boot_manifest(answer.boot, base_url)
        if answer.certificate is not None:
            body["certificate"] = certificate_body(answer.certificate)
        return json_response(body, status=200)
    if answer.status == "pending":
        retry_after = answer.retry_after or retry_after  # a hook's pending says its own wait
        body["retry_after"] = retry_after
        return json_response(
            body,
            status=202,
            headers={
                "Retry-After": str(retry_after),
                "Location": f"/v1/registrations/{answer.request_id}",
            },
        )
    if retry_later(answer):
        # The clone rate per source: the device waits Retry-After, then sends its
        # registration again (a poll of the request gets the same answer: the stored
        # decision keeps the reason, not the wait, so it is told the pending interval).
        wait = TooManyRequests(
            answer.reason,
            retry_after=answer.retry_after or retry_after,
            rule=CLONE_RATE_RULE,
            reason_code=ReasonCode.THROTTLED,
        )
        return json_response(
            {**wait.to_dict(), "request_id": answer.request_id}, status=429, headers=wait.headers()
        )
    body["reason"] = answer.reason
    if answer.status == "refused":
        # Derived from the reason, which is all a stored decision keeps: a poll answered
        # later carries the same code as the first answer.
        body["reason_code"] = reason_code_of(answer.reason)
    if answer.server_time:
        # A proof refused only for its time: the device takes the server's clock (this field,
        # or the Date header every answer has) and proves again (docs/device-identity.md).
        body["server_time"] = answer.server_time
    return json_response(body, status=403 if answer.status == "refused" else 404)


def manifest_view(
    device: AuthenticatedDevice, files: tuple[ServiceFile, ...], data: DataFile | None, base_url: str
) -> web.Response:
    """Every provisioning file of the device with its size, SHA-256 and download URL, and
    last its enrichment data file when it has one."""
    return json_response(manifest_body(device, files, data, base_url))


def manifest_body(
    device: AuthenticatedDevice, files: tuple[ServiceFile, ...], data: DataFile | None, base_url: str
) -> dict[str, Any]:
    entries = [
        {
            "name": f.recorded.file_name,
            "provisioning_id": f.service.provisioning_id,
            "service": f.service.name,
            "type": f.service.service_type,
            "type_code": f.service.type_code,
            "port": f.service.port,
            "size": f.recorded.size,
            "sha256": f.recorded.sha256,
            "url": f"{base_url}/v1/devices/{device.id}/files/{f.recorded.file_name}",
        }
        for f in files
        if f.recorded is not None
    ]
    if data is not None:
        # No service: no application type and no port (docs/device-api.md).
        entries.append(
            {
                "name": data.name,
                "provisioning_id": data.provisioning_id,
                "service": data.service,
                "type": REGISTRATION_DATA_TYPE,
                "type_code": 0,
                "port": 0,
                "size": data.size,
                "sha256": data.sha256,
                "url": f"{base_url}/v1/devices/{device.id}/files/{data.name}",
            }
        )
    return {
        "device_id": device.id,
        "hardware_id": device.hardware_id,
        "generation": device.credential_generation,
        "files": entries,
    }


def boot_manifest(boot: Boot, base_url: str) -> dict[str, Any]:
    """The manifest GET /v1/devices/{id}/manifest answers, each file with its ``content``:
    the exact bytes the file's URL serves, as a string (the files are ASCII)."""
    body = manifest_body(boot.device, tuple(f.file for f in boot.files), boot.data, base_url)
    contents = [f.content for f in boot.files] + ([boot.data.content] if boot.data is not None else [])
    for item, content in zip(body["files"], contents, strict=True):
        item["content"] = content.decode("ascii")
    return body


def file_view(content: bytes) -> web.Response:
    """A provisioning file: plain ASCII text."""
    return web.Response(body=content, content_type="text/plain", charset="ascii")


def accepted_view(**extra: Any) -> web.Response:
    """A device's signal (ready, heartbeat), accepted for processing."""
    return json_response({"status": "accepted", **extra}, status=202)


def yaml_view(document: str) -> web.Response:
    """An OpenAPI document."""
    return web.Response(text=document, content_type="application/yaml")


def certificate_body(issued: Issued) -> dict[str, Any]:
    """A device certificate as the native API gives it: its serial (hex), validity (ISO 8601
    UTC), the certificate and its issuing CA's (then the chain above an uploaded one), PEM."""
    return {
        "serial": issued.certificate.serial,
        "not_before": issued.certificate.not_before.isoformat(),
        "not_after": issued.certificate.not_after.isoformat(),
        "pem": issued.certificate.pem,
        "ca_pem": issued.ca.pem,
    }


def certificate_view(issued: Issued) -> web.Response:
    return json_response(certificate_body(issued))


def certs_only_view(*certificates_der: bytes) -> web.Response:
    """RFC 7030's answer of certificates: a PKCS#7 certs-only body, base64 (section 4.1.3)."""
    return web.Response(
        body=certs_only(*certificates_der),
        headers={
            "Content-Type": "application/pkcs7-mime; smime-type=certs-only",
            "Content-Transfer-Encoding": "base64",
        },
    )


def crl_view(der: bytes) -> web.Response:
    """A CRL, DER (RFC 5280 section 4.2.1.13's application/pkix-crl)."""
    return web.Response(body=der, content_type="application/pkix-crl")


def error_view(error: DomainError) -> web.Response:
    """A refusal answered by the route itself (so that it is counted: routes.refusals_counted)."""
    return json_response(error.to_dict(), status=error.status, headers=error.headers() or None)


def plain_text_answers(reference_prefix: str) -> Callable[..., object]:
    """A middleware giving the plain-text form (shared/plain_text.py) of every JSON-object
    answer of the native device API to a call whose ``Accept`` prefers it: same status and
    headers, the body flattened, ``Content-Type: text/plain; charset=utf-8``; either form
    marked :func:`negotiated`. Any other
    answer (JSON not asked for, a file, an answer that is not a JSON object, the reference
    protocol's under ``reference_prefix``) is left as it is. Runs outside the error mapping
    (shared.http.base_app), so errors are converted too; never raises."""

    @web.middleware
    async def plain_text(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not is_native(request.path, reference_prefix):
            return response
        negotiated(response)
        if not prefers_plain_text(request.headers.get("Accept")):
            return response
        return as_plain_text(response)

    return plain_text


def negotiated(response: web.StreamResponse) -> None:
    """A JSON answer of the native device API marked as one a cache must neither keep nor
    serve for another ``Accept``: its form depends on that header (``Vary: Accept``), and
    it is one device's (a ready answer, a poll's included, carries the device secret:
    ``Cache-Control: no-store``, RFC 9111 section 5.2.2.5)."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return
    vary = response.headers.get(hdrs.VARY, "")
    if "accept" not in {v.strip().lower() for v in vary.split(",")}:
        response.headers[hdrs.VARY] = f"{vary}, Accept" if vary else "Accept"
    response.headers.setdefault(hdrs.CACHE_CONTROL, "no-store")


def as_plain_text(response: web.StreamResponse) -> web.StreamResponse:
    """``response`` in the plain-text form when it is a JSON object, else ``response``."""
    if not isinstance(response, web.Response) or response.content_type != "application/json":
        return response
    body = response.body
    if not isinstance(body, bytes):
        return response
    try:
        document = orjson.loads(body)
        if not isinstance(document, dict):
            return response
        text = flatten(document)
    except (orjson.JSONDecodeError, TypeError):
        return response
    response.body = text.encode()
    response.content_type = PLAIN_TEXT
    response.charset = "utf-8"
    return response


def refusal_codes(reference_prefix: str) -> Callable[..., object]:
    """A middleware (inside the error mapping, outside the throttle) that gives a refusal of
    the native device API raised without a ``reason_code`` the one its status implies
    (:func:`reason_code_of_status`: the throttle's 429s, shared with the other services,
    are ``throttled``). The reference protocol's paths (under ``reference_prefix``) answer
    in their own words and are left alone."""

    @web.middleware
    async def with_reason_code(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except DomainError as exc:
            if exc.reason_code is None and is_native(request.path, reference_prefix):
                exc.reason_code = reason_code_of_status(exc.status)
            raise

    return with_reason_code
