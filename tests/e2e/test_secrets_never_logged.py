"""Every secret through every error path of every HTTP service, then every log read:
no service log and no Postgres log line may hold the secret (nor its first 16
characters), and no answer may be a 5xx."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.support.api import Operator, register
from tests.support.system import LOGS, ROOT, System

pytestmark = pytest.mark.e2e

POSTGRES_LOG = ROOT / "var" / "log" / "postgres.log"


async def raw(url: str, request: bytes, tls: ssl.SSLContext | None = None) -> int:
    """Send bytes the HTTP client would refuse to; the answer's status (0: closed)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=tls)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
    return int(line.split()[1]) if line.startswith(b"HTTP/") else 0


def requests_carrying(secret: str, path: str) -> list[bytes]:
    s = secret.encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
    bodies = [
        b'{"hardware_id": "' + s + b'", ',  # malformed JSON
        b'{"bulk_identification_code": "' + s + b'\xff\xfe", "hardware_id": "h"}',  # bad UTF-8
        b'{"bulk_identification_code": ["' + s + b'"], "hardware_id": {"x": 1}}',  # wrong types
        b'{"bulk_identification_code": "' + s + b'\\u0000", "hardware_id": "h\\u0000"}',  # NUL
    ]
    out = [head + b"Content-Length: " + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
    big = b"A" * 10_000
    out.append(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s + big + b"\r\n\r\n"
    )
    out.append(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Note: " + s + big + b"\r\n\r\n")
    out.append(b"GET " + path.encode() + b"?q=" + s + big + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    out.append(
        b"GET /v1/devices/" + s + b"/manifest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + s + b"\r\n\r\n"
    )
    return out


async def test_no_secret_reaches_any_log(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    pg_offset = POSTGRES_LOG.stat().st_size if POSTGRES_LOG.exists() else 0
    log_offsets = {p: p.stat().st_size for p in LOGS.glob("*.log")}
    code = (await operator.product())["bulk_identification_code"]
    device = await register(session, system.device_url, code, uuid.uuid4().hex[:12], cpu_id="c", mac="m")
    device_secret = device.body["device_secret"]
    key = (await operator.call("POST", "/v1/api-keys", {"label": "leak-test"}, expect=201))["api_key"]
    secrets = {
        "api key": key,
        "device secret": device_secret,
        "code": code,
        "key-like": "REGKEY" + uuid.uuid4().hex,
    }
    tls = ssl.create_default_context(cafile=str(system.tls_ca))
    compat = system.compat_url
    statuses: list[tuple[str, int]] = []
    for secret in secrets.values():
        targets = [
            (system.device_url, "/v1/registrations", None),
            (system.operator_url, "/v1/products", None),
            (system.bulk_url, "/v1/bulk-registrations", None),
            (compat, urlsplit(compat).path + "/bulk/registration/register", tls),
        ]
        for base, path, context in targets:
            for request in requests_carrying(secret, path):
                statuses.append((path, await raw(base, request, context)))
        for suffix in (
            f"/project/provisioning/download/{secret}",
            f"/bulk/registration/configuration/{secret}/h/",
            f"/bulk/registration/device/friendly/configuration/{secret}/h/",
        ):
            async with session.get(compat + suffix, ssl=tls) as r:
                statuses.append((suffix, r.status))
    assert not [s for s in statuses if s[1] >= 500], statuses
    await asyncio.sleep(1)  # let the services flush their log lines
    texts = {p.name: read_from(p, log_offsets.get(p, 0)) for p in LOGS.glob("*.log")}
    texts["postgres.log"] = read_from(POSTGRES_LOG, pg_offset)
    for what, secret in secrets.items():
        for name, text in texts.items():
            assert secret not in text and secret[:16] not in text, f"the {what} is in {name}"
    assert any("Error handling request" in t for t in texts.values())  # the paths were logged


def read_from(path: Path, offset: int) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")
