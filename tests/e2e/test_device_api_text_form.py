"""The device API's plain-text answers and refusal codes (issue 26, docs/device-api.md,
"Plain-text answers" and "Refusal codes") on the running services, the real broker and the
real database: every answer shape a device meets, asked with ``Accept: text/plain``, read
as an agent reads it (a line a field, ``KEY:base64`` decoded), each refusal with its
``reason_code`` (also when a poll answers a stored refusal later), JSON unchanged without
the header, and hostile ``Accept`` headers never a 5xx."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography import x509

from shared.domain import derived_keys, x509_attestation
from shared.domain.admission import REASON_PAUSED, REASON_REVOKED_CODE, REASON_UNKNOWN_CODE
from shared.domain.dedup import (
    REASON_BULK_ALREADY_CLAIMED,
    REASON_BULK_NOT_LISTED,
    REASON_DISABLED,
    reason_clone_limit,
    reason_max_devices,
)
from shared.plain_text import flatten
from tests.e2e.test_creation_bounds import pipeline
from tests.e2e.test_derived_keys import derive, derived_product, proof
from tests.e2e.test_device_certificates import csr_of, p256
from tests.e2e.test_x509_attestation import x509_registration
from tests.support.api import Operator
from tests.support.bulk import bulk_product, csv_rows, csv_text, publish_and_wait, upload
from tests.support.sources import fresh_address, from_address
from tests.support.system import System

pytestmark = pytest.mark.e2e

TEXT = {"Accept": "text/plain"}
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json; charset=utf-8"
AS_IS = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
CLONE_LIMIT = 1  # the own pipeline's FLEETREG_CLONE_LIMIT: the second clone is refused
REFUSALS_PER_SOURCE = 3  # its FLEETREG_LIMIT_REFUSALS_PER_SOURCE a minute


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: str
    fields: dict[str, str]


def read(body: str) -> dict[str, str]:
    """An answer's fields as a device's agent reads them: a ``KEY VALUE`` line each, VALUE
    as is or, after ``KEY:base64``, decoded; no other line, every key once."""
    assert body.endswith("\n"), body
    fields: dict[str, str] = {}
    for line in body[:-1].split("\n"):
        key, space, value = line.partition(" ")
        assert space and re.fullmatch(r"[a-z0-9_.]+(:base64)?", key), line
        if key.endswith(":base64"):
            key, value = key.removesuffix(":base64"), base64.b64decode(value, validate=True).decode()
            assert not AS_IS.fullmatch(value), line  # base64 only for what cannot go as is
        else:
            assert AS_IS.fullmatch(value), line
        assert key not in fields, line
        fields[key] = value
    return fields


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    data: str | None = None,
) -> Answer:
    """One call asking for the plain-text form: never a 5xx, always the text form."""
    sent = {**TEXT, **(headers or {})}
    async with session.request(method, url, json=body, data=data, headers=sent) as response:
        text = await response.text()
        assert response.status < 500, (response.status, text)
        assert response.headers["Content-Type"] == TEXT_TYPE, (response.status, text)
        return Answer(response.status, response.headers, text, read(text))


async def as_json(
    session: aiohttp.ClientSession, method: str, url: str, headers: Mapping[str, str] | None = None
) -> tuple[int, str, dict[str, Any]]:
    """The same call without ``Accept``: (status, Content-Type, body)."""
    async with session.request(method, url, headers=headers) as response:
        return response.status, response.headers["Content-Type"], orjson.loads(await response.read())


async def register(
    session: aiohttp.ClientSession,
    url: str,
    code: str,
    hardware_id: str,
    *,
    include: bool = False,
    fingerprint: str = "f",
    **fields: Any,
) -> Answer:
    """A device's registration in the text form, pending polled (in the text form too) to
    the final answer."""
    body = {
        "bulk_identification_code": code,
        "hardware_id": hardware_id,
        "fingerprint": {"cpu_id": f"cpu-{fingerprint}", "mac": f"mac-{fingerprint}"},
        **fields,
    }
    query = "?include=files" if include else ""
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    deadline = time.monotonic() + 60
    answer = await call(session, "POST", f"{url}/v1/registrations{query}", body, headers)
    while answer.status == 503 and time.monotonic() < deadline:  # a part away for a moment
        await asyncio.sleep(0.5)
        answer = await call(session, "POST", f"{url}/v1/registrations{query}", body, headers)
    while answer.fields.get("status") == "pending" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        answer = await call(session, "GET", f"{url}/v1/registrations/{answer.fields['request_id']}{query}")
    return answer


def auth(answer: Answer) -> dict[str, str]:
    return {"Authorization": f"Bearer {answer.fields['device_secret']}"}


def device_url(url: str, answer: Answer, tail: str) -> str:
    return f"{url}/v1/devices/{answer.fields['device_id']}/{tail}"


def refused(answer: Answer, reason: str, code: str) -> None:
    """A 403 refusal in the text form: its fields, in their order, the code last."""
    assert answer.status == 403, answer.body
    assert answer.fields == {
        "status": "refused",
        "request_id": answer.fields["request_id"],
        "reason": reason,
        "reason_code": code,
    }
    assert answer.body.startswith("status refused\nrequest_id ")
    assert answer.body.endswith(f"reason_code {code}\n")


async def polled_later(session: aiohttp.ClientSession, url: str, answer: Answer, code: str) -> None:
    """The stored refusal, polled: the same code, in the text form and in JSON."""
    poll = f"{url}/v1/registrations/{answer.fields['request_id']}"
    again = await call(session, "GET", poll)
    assert (again.status, again.fields["reason_code"]) == (403, code), again.body
    status, content_type, body = await as_json(session, "GET", poll)
    assert (status, content_type, body["reason_code"]) == (403, JSON_TYPE, code)
    assert again.body == flatten(body)


# ------------------------------------------------------------------------------ answers


async def test_a_two_call_boot_in_the_text_form_with_files_and_a_certificate(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    url = system.device_url
    code = (await operator.product([{"type": "ssh", "port": 22}, {"type": "web", "port": 80}]))[
        "bulk_identification_code"
    ]
    hardware_id = f"b827eb{uuid.uuid4().hex[:6]}"
    answer = await register(session, url, code, hardware_id, include=True, csr=csr_of(p256()))
    assert answer.status == 200, answer.body
    f = answer.fields
    assert (f["status"], f["hardware_id"], f["claimed_hardware_id"], f["clone"], f["decision"]) == (
        "ready",
        hardware_id,
        hardware_id,
        "false",
        "new",
    )
    assert f["manifest_url"] == f"/v1/devices/{f['device_id']}/manifest"
    assert (f["manifest.device_id"], f["manifest.generation"]) == (f["device_id"], "1")
    count = int(f["manifest.files.count"])
    assert count >= 2  # ssh's file and web's
    lines = answer.body.split("\n")
    assert lines[:2] == ["status ready", f"request_id {f['request_id']}"]
    for index in range(count):
        item = f"manifest.files.{index}"
        content = f[f"{item}.content"].encode("ascii")
        assert len(content) == int(f[f"{item}.size"])
        assert hashlib.sha256(content).hexdigest() == f[f"{item}.sha256"]
        assert any(line.startswith(f"{item}.content:base64 ") for line in lines)  # files have newlines
        async with session.get(f[f"{item}.url"], headers={**auth(answer), **TEXT}) as r:
            assert r.status == 200 and await r.read() == content  # the download is unchanged
            assert r.headers["Content-Type"] == "text/plain; charset=ascii"
        assert f[f"{item}.provisioning_id"] and f[f"{item}.type_code"].isdigit()
    issued = x509.load_pem_x509_certificate(f["certificate.pem"].encode())
    assert format(issued.serial_number, "x") == f["certificate.serial"]
    x509.load_pem_x509_certificate(f["certificate.ca_pem"].encode())
    assert "certificate.pem:base64 " in answer.body and "\ncertificate.not_after " in answer.body

    # The same poll and manifest without the header: JSON, byte for byte what it always was,
    # and the text form is that JSON flattened.
    poll = f"{url}/v1/registrations/{f['request_id']}?include=files"
    status, content_type, polled = await as_json(session, "GET", poll)
    assert (status, content_type, polled["device_secret"]) == (200, JSON_TYPE, f["device_secret"])
    assert (await call(session, "GET", poll)).body == flatten(polled)
    manifest = await call(session, "GET", device_url(url, answer, "manifest"), headers=auth(answer))
    status, content_type, as_object = await as_json(
        session, "GET", device_url(url, answer, "manifest"), auth(answer)
    )
    assert (manifest.status, status, content_type) == (200, 200, JSON_TYPE)
    assert manifest.body == flatten(as_object)
    assert "files.0.content" not in manifest.fields and manifest.fields["files.count"] == str(count)

    certificate = await call(session, "GET", device_url(url, answer, "certificate"), headers=auth(answer))
    assert (certificate.status, certificate.fields["serial"]) == (200, f["certificate.serial"])
    ready = await call(session, "POST", device_url(url, answer, "ready"), headers=auth(answer))
    assert (ready.status, ready.body) == (202, "status accepted\n")
    beat = await call(session, "POST", device_url(url, answer, "heartbeat"), headers=auth(answer))
    assert beat.status == 202 and beat.fields["status"] == "accepted"
    assert float(beat.fields["online_ttl_seconds"]) > 0


async def test_a_pending_answer_in_the_text_form(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    async with system.instance("intake", {"FLEETREG_OUTCOME_WAIT_SECONDS": "0"}) as impatient:
        body = {"bulk_identification_code": code, "hardware_id": uuid.uuid4().hex[:12]}
        pending = await call(session, "POST", f"{impatient.url}/v1/registrations", body)
        assert pending.status == 202, pending.body
        request_id = pending.fields["request_id"]
        assert (
            pending.body
            == f"status pending\nrequest_id {request_id}\nretry_after {pending.fields['retry_after']}\n"
        )
        assert pending.headers["Retry-After"] == pending.fields["retry_after"]
        assert pending.headers["Location"] == f"/v1/registrations/{request_id}"


# ----------------------------------------------------------------------- refusals (403)


async def test_refused_codes_in_the_text_form(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    url = system.device_url
    registration = await operator.product()
    code = registration["bulk_identification_code"]

    unknown = await register(session, url, str(uuid.uuid4()).upper(), uuid.uuid4().hex[:12])
    refused(unknown, REASON_UNKNOWN_CODE, "unknown_code")
    # Without the header: the JSON it always was, the code its one new field.
    body = {"bulk_identification_code": str(uuid.uuid4()).upper(), "hardware_id": "h"}
    async with session.post(f"{url}/v1/registrations", json=body) as r:
        assert (r.status, r.headers["Content-Type"]) == (403, JSON_TYPE)
        as_object = orjson.loads(await r.read())
    assert list(as_object) == ["status", "request_id", "reason", "reason_code"]
    assert (as_object["reason"], as_object["reason_code"]) == (REASON_UNKNOWN_CODE, "unknown_code")

    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/pause", expect=200)
    paused = await register(session, url, code, uuid.uuid4().hex[:12])
    refused(paused, REASON_PAUSED, "paused")
    await polled_later(session, url, paused, "paused")

    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/resume", expect=200)
    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/rotate-code", expect=200)
    revoked = await register(session, url, code, uuid.uuid4().hex[:12])
    refused(revoked, REASON_REVOKED_CODE, "revoked_code")


async def test_quota_and_disabled_in_the_text_form(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    url = system.device_url
    product = await operator.call(
        "POST", "/v1/products", {"name": f"q-{uuid.uuid4().hex[:8]}", "services": []}, expect=201
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    code = (
        await operator.call(
            "POST", "/v1/auto-registrations", {"product_id": product["id"], "max_devices": 1}, expect=201
        )
    )["bulk_identification_code"]
    first = await register(session, url, code, uuid.uuid4().hex[:12])
    assert first.status == 200, first.body
    over = await register(session, url, code, uuid.uuid4().hex[:12])
    refused(over, reason_max_devices(1), "quota")
    await polled_later(session, url, over, "quota")

    await operator.call("POST", f"/v1/devices/{first.fields['device_id']}/disable", expect=200)
    for method, tail in (("GET", "manifest"), ("POST", "heartbeat"), ("POST", "ready")):
        answer = await call(session, method, device_url(url, first, tail), headers=auth(first))
        assert (answer.status, answer.fields) == (
            403,
            {"error": "forbidden", "message": REASON_DISABLED, "reason_code": "disabled"},
        ), tail
    again = await register(
        session, url, code, first.fields["hardware_id"], device_secret=first.fields["device_secret"]
    )
    refused(again, REASON_DISABLED, "disabled")
    await polled_later(session, url, again, "disabled")


async def test_bulk_refusals_in_the_text_form(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    url = system.device_url
    product_id = await bulk_product(operator)
    rows = csv_rows(1)
    status, created = await upload(session, system.bulk_url, operator, product_id, csv_text(rows).encode())
    assert status == 201, created
    await publish_and_wait(session, system.bulk_url, operator, created["id"])
    code = (await operator.call("GET", f"/v1/products/{product_id}", expect=200))["bulk_identification_code"]
    key, hardware_id, _ = rows[0]

    wrong_key = await register(session, url, code, hardware_id, registration_key="not-the-key")
    refused(wrong_key, REASON_BULK_NOT_LISTED, "not_listed")
    await polled_later(session, url, wrong_key, "not_listed")
    claimed = await register(session, url, code, hardware_id, registration_key=key)
    assert claimed.status == 200, claimed.body
    copied = await register(session, url, code, hardware_id, registration_key=key, fingerprint="copy")
    refused(copied, REASON_BULK_ALREADY_CLAIMED, "already_registered")
    await polled_later(session, url, copied, "already_registered")


async def test_attestation_refusals_in_the_text_form(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    url = system.device_url
    created = await derived_product(operator)
    code, primary = created["bulk_identification_code"], created["primary_key"]
    hardware_id = f"dk-{uuid.uuid4().hex[:8]}"
    no_proof = await register(session, url, code, hardware_id)
    refused(no_proof, derived_keys.REASON_NO_PROOF, "proof_invalid")
    key = derive(primary, hardware_id)
    wrong = await register(
        session, url, code, hardware_id, proof={**proof(key, hardware_id), "mac": "0" * 64}
    )
    refused(wrong, derived_keys.REASON_WRONG_PROOF, "proof_invalid")
    late = await register(session, url, code, hardware_id, proof=proof(key, hardware_id, expires=300))
    assert late.status == 403, late.body
    assert (late.fields["reason"], late.fields["reason_code"]) == (
        derived_keys.REASON_PROOF_TIME,
        "proof_time",
    )
    assert abs(int(late.fields["server_time"]) - time.time()) < 300  # the server's clock, to prove again
    proven = await register(session, url, code, hardware_id, proof=proof(key, hardware_id))
    assert proven.status == 200, proven.body

    x509_code = (await x509_registration(operator))["bulk_identification_code"]
    no_certificate = await register(session, url, x509_code, f"x5-{uuid.uuid4().hex[:8]}")
    refused(no_certificate, x509_attestation.REASON_NO_CERTIFICATE, "certificate_refused")


# ------------------------------------------------------------------------ credentials (401)


async def test_credential_refusals_in_the_text_form(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    url = system.device_url
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    device = await register(session, url, code, uuid.uuid4().hex[:12])
    assert device.status == 200, device.body
    manifest = device_url(url, device, "manifest")

    # EST's refusals carry the code too (its challenge is Basic, RFC 7030 section 3.2.3).
    est = await call(
        session,
        "POST",
        f"{url}/.well-known/est/{registration['id']}/simpleenroll",
        headers={"Content-Type": "application/pkcs10"},
    )
    assert (est.status, est.fields["reason_code"]) == (401, "unauthorized"), est.body
    assert est.headers["WWW-Authenticate"].startswith("Basic ")

    wrong = await call(session, "GET", manifest, headers={"Authorization": "Bearer " + "0" * 64})
    assert (wrong.status, wrong.fields["error"], wrong.fields["reason_code"]) == (
        401,
        "unauthorized",
        "unauthorized",
    )
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer ")
    none = await call(session, "POST", device_url(url, device, "heartbeat"))
    assert (none.status, none.fields["reason_code"], none.fields["rule"]) == (401, "unauthorized", "bearer")

    await operator.call("POST", f"/v1/devices/{device.fields['device_id']}/reset", expect=200)
    replaced = await call(session, "GET", manifest, headers=auth(device))
    assert (replaced.status, replaced.fields["error"], replaced.fields["reason_code"]) == (
        401,
        "credentials_replaced",
        "credentials_replaced",
    )
    status, content_type, as_object = await as_json(session, "GET", manifest, auth(device))
    assert (status, content_type, as_object["reason_code"]) == (401, JSON_TYPE, "credentials_replaced")
    assert replaced.body == flatten(as_object)

    other = await register(session, url, code, uuid.uuid4().hex[:12])
    assert other.status == 200, other.body
    await operator.call("DELETE", f"/v1/devices/{other.fields['device_id']}", expect=200)
    deleted = await call(session, "POST", device_url(url, other, "heartbeat"), headers=auth(other))
    assert (deleted.status, deleted.fields["reason_code"]) == (401, "device_deleted"), deleted.body


async def test_est_under_another_registrations_label_is_other_registration(
    system: System, session: aiohttp.ClientSession, operator: Operator
) -> None:
    url = system.device_url
    own, other = await operator.product(), await operator.product()
    device = await register(session, url, own["bulk_identification_code"], uuid.uuid4().hex[:12])
    assert device.status == 200, device.body
    basic = base64.b64encode(f"{device.fields['device_id']}:{device.fields['device_secret']}".encode())
    answer = await call(
        session,
        "POST",
        f"{url}/.well-known/est/{other['id']}/simpleenroll",
        headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {basic.decode()}"},
        data=csr_of(p256(), der=True),
    )
    assert (answer.status, answer.fields["reason_code"]) == (403, "other_registration"), answer.body


# ------------------------------------------------------- limits (429, clone limit): own pipeline


@pytest.fixture(scope="module")
async def limited(system: System) -> AsyncIterator[str]:
    """The device URL of a pipeline of its own with a clone limit of one and a low limit of
    refusals per source."""
    env = {
        "FLEETREG_CLONE_LIMIT": str(CLONE_LIMIT),
        "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": f"{REFUSALS_PER_SOURCE}/minute",
    }
    async with pipeline(system, env) as process:
        yield process.url


async def test_throttled_and_clone_limit_in_the_text_form(limited: str, operator: Operator) -> None:
    async with from_address(fresh_address()) as guesser:
        for _ in range(REFUSALS_PER_SOURCE):
            guess = await register(guesser, limited, str(uuid.uuid4()).upper(), "h")
            assert guess.fields["reason_code"] == "unknown_code"
        throttled = await register(guesser, limited, str(uuid.uuid4()).upper(), "h")
    assert throttled.status == 429, throttled.body
    f = throttled.fields
    assert (f["error"], f["rule"], f["reason_code"]) == (
        "too_many_requests",
        "refusals_per_source",
        "throttled",
    )
    assert f["retry_after"] == throttled.headers["Retry-After"] and int(f["retry_after"]) >= 1
    assert throttled.body.endswith(f"retry_after {f['retry_after']}\nreason_code throttled\n")

    code = (await operator.product())["bulk_identification_code"]
    hardware_id = uuid.uuid4().hex[:12]
    async with from_address(fresh_address()) as factory:
        answers = [
            await register(factory, limited, code, hardware_id, fingerprint=f"board-{i}")
            for i in range(CLONE_LIMIT + 2)
        ]
    assert [a.status for a in answers] == [200] * (CLONE_LIMIT + 1) + [403], [a.body for a in answers]
    assert answers[1].fields["clone"] == "true"
    assert answers[-1].fields["reason_code"] == "clone_limit"
    assert answers[-1].fields["reason"] == reason_clone_limit(CLONE_LIMIT, 3600)


# ----------------------------------------------------------------------- hostile headers


@pytest.mark.parametrize(
    ("accept", "text"),
    [
        ("text/plain;q=0", False),
        ("text/plain;q=0, application/json", False),
        ("application/json;q=0.9, text/plain;q=0.8", False),
        ("*/*", False),
        ("a/b;q=0.1, " * 700 + "text/plain", True),  # near the 8 KB header limit
        ("text/plain;q=abc, text/plain;q=", False),
        (",;=,;=\t, text/plain;;;q=1;;", True),
        ("\u00ff\u00fe garbage/\u00e9;q=0.5, text/plain\u00e9", False),
        ("text/plain;q=0.001", True),
    ],
)
async def test_hostile_accept_headers_are_answered_in_one_form_or_the_other(
    system: System, session: aiohttp.ClientSession, accept: str, text: bool
) -> None:
    body = {"bulk_identification_code": str(uuid.uuid4()).upper(), "hardware_id": "h"}
    for method, path, sent in (
        ("POST", "/v1/registrations", body),
        ("GET", f"/v1/devices/{uuid.uuid4()}/manifest", None),
        ("GET", "/v1/registrations/not-a-request", None),
    ):
        async with session.request(
            method, system.device_url + path, json=sent, headers={"Accept": accept}
        ) as r:
            raw = await r.read()
            assert r.status in (400, 401, 403), (r.status, raw)
            if text:
                assert r.headers["Content-Type"] == TEXT_TYPE
                fields = read(raw.decode())
                assert "reason_code" in fields or fields["error"] == "invalid_input"
            else:
                assert r.headers["Content-Type"] == JSON_TYPE
                assert isinstance(orjson.loads(raw), dict)


@pytest.mark.parametrize(
    "accept", [b"\x01\x7f garbage/\x02;q=0.5, text/plain", b"text/plain\xff\xfe;q=\x00", b"\xc3\x28"]
)
async def test_control_and_non_utf8_bytes_in_accept_are_never_a_5xx(system: System, accept: bytes) -> None:
    host, port = system.device_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            f"GET /v1/devices/{uuid.uuid4()}/manifest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
            + b"Accept: "
            + accept
            + b"\r\n\r\n"
        )
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
    status = int(status_line.split()[1])
    assert 400 <= status < 500, status_line


async def test_an_accept_header_past_the_header_limit_is_refused_not_failed(system: System) -> None:
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        async with session.get(
            f"{system.device_url}/v1/devices/{uuid.uuid4()}/manifest",
            headers={"Accept": "text/plain, " * 2000},
        ) as r:
            assert 400 <= r.status < 500
