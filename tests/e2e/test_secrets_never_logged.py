"""Every secret through every error path of every HTTP service, then every log read.

Real secrets are made (an operator API key, a device secret, a Bulk Identification
Code, a bulk registration key) and each is sent, over raw sockets so that nothing
refuses to send it, through the error paths of the intake's device API, its
reference-compatible API (https), the operator API and the bulk API: over-long
headers and URLs (aiohttp logs their first 100 bytes), NUL bytes and bad UTF-8 in
headers, URLs and bodies, malformed JSON, wrong JSON types, path IDs. Then no log
written since the test started (the services', and Postgres's) may hold any secret
or its first 16 characters, and no answer may be a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from shared.db.pool import Pool
from tests.support.api import Operator, register
from tests.support.bulk import bulk_product, csv_text, upload
from tests.support.system import LOGS, ROOT, System, free_port

pytestmark = pytest.mark.e2e

POSTGRES_LOG = ROOT / "var" / "log" / "postgres.log"
LONG = b"A" * 10_000  # past aiohttp's limit of 8190 bytes for a header or the request line


@dataclass(frozen=True)
class Call:
    """One raw request and what a correct answer is."""

    label: str
    base: str  # scheme://host:port
    request: bytes
    compat: bool = False  # the apv/v27 API: 200 with a refusal body counts as a refusal
    accepted: bool = False  # a call that is meant to succeed (200, 201 or 202)
    may_succeed: bool = False  # a refusal or a success: the secret is a valid value there


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def http(method: str, target: bytes, headers: list[bytes], body: bytes | None = None) -> bytes:
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += headers
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


async def exchange(base: str, request: bytes, tls: ssl.SSLContext) -> Answer:
    """Send bytes an HTTP client would refuse to send; read the whole answer."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(
        parts.hostname, parts.port, ssl=tls if parts.scheme == "https" else None
    )
    try:
        writer.write(request)
        await writer.drain()
        # A guard against a hung connection, not a timing assertion.
        raw = await asyncio.wait_for(reader.read(), timeout=60)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    return Answer(status, body)


def bearer(value: bytes) -> bytes:
    return b"Authorization: Bearer " + value


JSON = b"Content-Type: application/json"


def malformed_bodies(s: bytes, field: bytes) -> list[tuple[str, bytes]]:
    """Bodies around the secret that no JSON parser accepts, or of the wrong shape."""
    return [
        ("malformed JSON", b'{"' + field + b'": "' + s + b'", '),
        ("bad UTF-8", b'{"' + field + b'": "\xff' + s + b'\xfe\xc3"}'),
        ("wrong types", b'{"' + field + b'": ["' + s + b'"], "hardware_id": {"' + s + b'": 1}}'),
        ("escaped NUL", b'{"' + field + b'": "' + s + b'\\u0000", "hardware_id": "h\\u0000"}'),
        ("raw NUL", b'{"' + field + b'": "' + s + b'\x00"}'),
        ("not an object", b'["' + s + b'"]'),
    ]


def transport_calls(service: str, base: str, path: str, s: bytes, *, compat: bool = False) -> list[Call]:
    """What the HTTP parser refuses or passes on: over-long, NUL, bad UTF-8, a wrong key."""
    p = path.encode()
    cases = [
        ("oversized Authorization", http("GET", p, [bearer(s + LONG)])),
        ("secret in another oversized header", http("GET", p, [b"X-Note: " + s + LONG])),
        ("oversized URL, secret in the path", http("GET", p + b"/" + s + LONG, [])),
        ("oversized URL, secret in the query", http("GET", p + b"?q=" + s + LONG, [])),
        ("NUL in Authorization", http("GET", p, [bearer(s + b"\x00")])),
        ("NUL in the URL", http("GET", p + b"/" + s + b"\x00", [])),
        ("bad UTF-8 in Authorization", http("GET", p, [bearer(b"\xff" + s + b"\xfe")])),
        ("bad UTF-8 in the URL", http("GET", p + b"/" + s + b"%ff%fe", [])),
        ("a wrong key holding the secret", http("GET", p, [bearer(s + b"x")])),
    ]
    return [Call(f"{service}: {label}", base, request, compat=compat) for label, request in cases]


def body_calls(
    service: str, base: str, method: str, path: str, s: bytes, field: bytes, auth: list[bytes], **kw: bool
) -> list[Call]:
    return [
        Call(
            f"{service} {method} {path}: {label}",
            base,
            http(method, path.encode(), [JSON, *auth], body),
            **kw,
        )
        for label, body in malformed_bodies(s, field)
    ]


async def test_no_secret_reaches_any_log(
    system: System, operator: Operator, session: aiohttp.ClientSession, pool: Pool
) -> None:
    postgres_offset = POSTGRES_LOG.stat().st_size
    log_offsets = {path: path.stat().st_size for path in LOGS.glob("*.log")}

    # The secrets: a code, a device secret, an API key, a bulk registration key.
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    device = await register(session, system.device_url, code, uuid.uuid4().hex[:12], cpu_id="c", mac="m")
    assert device.status == 200, device.body
    device_id, device_secret = device.body["device_id"], device.body["device_secret"]
    api_key = (await operator.call("POST", "/v1/api-keys", {"label": "leak-test"}, expect=201))["api_key"]
    # A registration key has no shape of its own (any printable ASCII): only context tells it.
    registration_key = "Rk." + "".join(secrets.choice("ghijkmnpqrstuvwxyz") for _ in range(24))
    bulk_product_id = await bulk_product(operator)
    status, uploaded = await upload(
        session,
        system.bulk_url,
        operator,
        bulk_product_id,
        csv_text([(registration_key, uuid.uuid4().hex[:12], "Leak test")]).encode(),
    )
    assert status == 201, uploaded
    # A webhook's signing secret, shown once; its deliveries go to a port nobody listens on.
    webhook_secret = (
        await operator.call(
            "POST",
            "/v1/webhooks",
            {"url": f"http://127.0.0.1:{free_port()}/leak", "events": ["device.registered"]},
            expect=201,
        )
    )["secret"]
    # A derived_key registration's group key (shown once) and a device key derived from it.
    keyed = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"leak-{uuid.uuid4().hex[:6]}", "services": [{"type": "ssh", "port": 22}]},
    )
    await operator.call("POST", f"/v1/products/{keyed['id']}/lock", expect=200)
    derived = await operator.call(
        "POST",
        "/v1/auto-registrations",
        {"product_id": keyed["id"], "attestation": "derived_key"},
        expect=201,
    )
    group_key = derived["primary_key"]
    device_key = (
        await operator.call(
            "POST",
            f"/v1/auto-registrations/{derived['id']}/derive-key",
            {"hardware_id": "leak-1"},
            expect=200,
        )
    )["device_key"]
    secrets_by_name = {
        "group key": group_key,
        "device key": device_key,
        "webhook signing secret": webhook_secret,
        "API key": api_key,
        "operator's own API key": operator.api_key,
        "device secret": device_secret,
        "Bulk Identification Code": code,
        "registration key": registration_key,
    }

    compat = system.compat_url
    compat_base, prefix = compat.removesuffix(urlsplit(compat).path), urlsplit(compat).path
    tls = ssl.create_default_context(cafile=str(system.tls_ca))
    intake, operator_api, bulk_api = system.device_url, system.operator_url, system.bulk_url
    op_auth = [bearer(operator.api_key.encode())]
    device_auth = [bearer(device_secret.encode())]

    calls: list[Call] = []
    for secret in (api_key, device_secret, code, registration_key, webhook_secret, group_key, device_key):
        s = secret.encode()
        calls += transport_calls("intake", intake, f"/v1/devices/{device_id}/manifest", s)
        calls += transport_calls(
            "compat", compat_base, f"{prefix}/bulk/registration/register", s, compat=True
        )
        calls += transport_calls("operator", operator_api, "/v1/products", s)
        calls += transport_calls("ingestion", bulk_api, "/v1/bulk-registrations", s)
        # Bodies.
        for field in (b"bulk_identification_code", b"device_secret", b"registration_key"):
            calls += body_calls("intake", intake, "POST", "/v1/registrations", s, field, [])
        # The heartbeat reads no body: it is accepted whatever the body holds.
        calls += body_calls(
            "intake",
            intake,
            "POST",
            f"/v1/devices/{device_id}/heartbeat",
            s,
            b"x",
            device_auth,
            may_succeed=True,
        )
        for step, field in (
            ("/bulk/registration/device/information/", b"DeviceSecret"),
            ("/bulk/registration/register", b"registration_key"),
            ("/bulk/registration/register", b"project_id"),
            ("/bulk/registration/device/ready/", b"DeviceSecret"),
        ):
            calls += body_calls("compat", compat_base, "POST", prefix + step, s, field, [], compat=True)
        calls += body_calls("operator", operator_api, "POST", "/v1/products", s, b"name", op_auth)
        calls += body_calls("operator", operator_api, "POST", "/v1/api-keys", s, b"label", op_auth)
        calls += body_calls("operator", operator_api, "POST", "/v1/webhooks", s, b"url", op_auth)
        # A code has a device ID's form: ["<code>"] is a well-formed batch whose ID is not found.
        calls += body_calls(
            "operator",
            operator_api,
            "POST",
            "/v1/devices/disable",
            s,
            b"device_ids",
            op_auth,
            may_succeed=True,
        )
        calls += body_calls(
            "operator",
            operator_api,
            "PATCH",
            f"/v1/auto-registrations/{registration['id']}",
            s,
            b"x",
            op_auth,
        )
        for label, csv in (
            ("a bad row", csv_text([(secret, "not a hardware id!", "x")]).encode()),
            ("bad UTF-8", csv_text([(secret, "h", "x")]).encode().replace(s, b"\xff" + s + b"\xfe")),
            ("a NUL byte", csv_text([(secret, "h", "x")]).encode().replace(s, s + b"\x00")),
            ("no header", s + b",h,x\r\n"),
        ):
            upload_target = f"/v1/bulk-registrations?product_id={bulk_product_id}&file_name=f.csv".encode()
            calls.append(
                Call(f"ingestion upload with {label}", bulk_api, http("POST", upload_target, [*op_auth], csv))
            )
        calls.append(
            Call(
                "ingestion upload, secret as the product ID",
                bulk_api,
                http("POST", b"/v1/bulk-registrations?product_id=" + s + b"&file_name=" + s, op_auth, b"x"),
            )
        )
        # Path IDs.
        for label, base, target, auth, is_compat in (
            ("intake request ID", intake, f"/v1/registrations/{secret}", [], False),
            ("intake device ID", intake, f"/v1/devices/{secret}/manifest", [bearer(s)], False),
            ("intake file name", intake, f"/v1/devices/{device_id}/files/{secret}", device_auth, False),
            ("intake ready", intake, f"/v1/devices/{device_id}/ready", [bearer(s + b"x")], False),
            ("compat download", compat_base, f"{prefix}/project/provisioning/download/{secret}", [], True),
            (
                "compat configuration",
                compat_base,
                f"{prefix}/bulk/registration/configuration/{secret}/h/",
                [],
                True,
            ),
            (
                "compat friendly configuration",
                compat_base,
                f"{prefix}/bulk/registration/device/friendly/configuration/{secret}/not%20a%20hardware%20id/",
                [],
                True,
            ),
            ("operator product ID", operator_api, f"/v1/products/{secret}", op_auth, False),
            ("operator device ID", operator_api, f"/v1/devices/{secret}", op_auth, False),
            ("operator key ID", operator_api, f"/v1/api-keys/{secret}", op_auth, False),
            ("operator registration ID", operator_api, f"/v1/auto-registrations/{secret}", op_auth, False),
            ("ingestion registration ID", bulk_api, f"/v1/bulk-registrations/{secret}", op_auth, False),
        ):
            method = "DELETE" if "key ID" in label else "POST" if label == "intake ready" else "GET"
            # The code is the bulk service's provisioning ID: there it is no error.
            calls.append(
                Call(
                    f"{label} as a path ID",
                    base,
                    http(method, target.encode(), auth),
                    compat=is_compat,
                    may_succeed=is_compat and secret == code,
                )
            )
    # Texts that look like an ID to a loose check but fail a cast: a 500, and the value
    # echoed in Postgres's log, before issue 9.
    for odd in ("f" * 36, "-" * 36, f"urn:uuid:{uuid.uuid4()}", uuid.uuid4().hex, f"{{{uuid.uuid4()}}}"):
        for label, base, target, auth, is_compat in (
            ("compat download", compat_base, f"{prefix}/project/provisioning/download/{odd}", [], True),
            (
                "compat configuration",
                compat_base,
                f"{prefix}/bulk/registration/configuration/{odd}/h/",
                [],
                True,
            ),
            ("operator product", operator_api, f"/v1/products/{odd}", op_auth, False),
            ("operator key", operator_api, f"/v1/api-keys/{odd}", op_auth, False),
            ("ingestion registration", bulk_api, f"/v1/bulk-registrations/{odd}", op_auth, False),
            ("intake request", intake, f"/v1/registrations/{odd}", [], False),
        ):
            method = "DELETE" if label == "operator key" else "GET"
            calls.append(
                Call(f"{label} {odd!r}", base, http(method, target.encode(), auth), compat=is_compat)
            )
        register_body = json.dumps({"project_id": odd, "hardware_id": "h"}).encode()
        calls.append(
            Call(
                f"compat register {odd!r}",
                compat_base,
                http("POST", f"{prefix}/bulk/registration/register".encode(), [JSON], register_body),
                compat=True,
            )
        )
    # A NUL in the free text the reference client reports, with a valid code: stored, not a 500.
    information = json.dumps(
        {"BulkIdentificationCode": code, "HardwareId": "leak-h1", "OSLabel": "os\u0000x"}
    )
    calls.append(
        Call(
            "compat information with a NUL in the OS label",
            compat_base,
            http(
                "POST",
                f"{prefix}/bulk/registration/device/information/".encode(),
                [JSON],
                information.encode(),
            ),
            compat=True,
            accepted=True,
        )
    )

    wrong = []
    for call in calls:
        answer = await exchange(call.base, call.request, tls)
        if not _as_expected(call, answer):
            wrong.append((call.label, answer.status, answer.body[:200]))
    assert wrong == [], f"{len(wrong)} of {len(calls)} answers are not refusals: {wrong}"

    # A control: Postgres does echo a value an error is about, and the log is read from
    # the right place. The marker holds no secret.
    marker = f"leak-marker-{uuid.uuid4().hex[:12]}"
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await pool.fetchval(f"SELECT '{marker}'::int")

    texts = {path.name: read_from(path, log_offsets.get(path, 0)) for path in LOGS.glob("*.log")}
    texts["postgres.log"] = read_from(POSTGRES_LOG, postgres_offset)
    assert marker in texts["postgres.log"]
    leaks = [
        (what, name)
        for what, secret in secrets_by_name.items()
        for name, text in texts.items()
        if secret in text or secret[:16] in text
    ]
    assert leaks == []
    # The parser's refusals were logged, as one line without the request's text or a
    # traceback (a control that those paths ran; shared/logging.py MalformedRequests).
    service_logs = "".join(text for name, text in texts.items() if name != "postgres.log")
    assert "refused a malformed request (400)" in service_logs
    assert "Error handling request" not in service_logs


def _as_expected(call: Call, answer: Answer) -> bool:
    if call.may_succeed and answer.status in (200, 202):
        return True
    if call.accepted:
        return answer.status in (200, 201, 202) and (not call.compat or b'"status":"true"' in answer.body)
    if 400 <= answer.status < 500:
        return True
    # The reference protocol's own refusal: 200 with status false (its client ignores HTTP codes).
    return call.compat and answer.status == 200 and b'"status":"false"' in answer.body


def read_from(path: Path, offset: int) -> str:
    """What was written to a log since ``offset`` (a file may have been started since)."""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")
