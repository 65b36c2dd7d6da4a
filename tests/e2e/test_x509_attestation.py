"""X.509 attestation (issue 25, docs/device-identity.md) on the running services, the real
broker and the real database: the operator's CAs (upload, proof of possession, revocation,
CRL), devices registering with their certificate through a TLS-terminating proxy's
``X-Client-Cert`` header (the two-call boot, a retry, a wiped board), the reference
protocol's refusal, and the attacker's cases, including a flood from one address.
"""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from cryptography import x509

from shared.db.pool import Pool
from shared.domain.x509_attestation import (
    REASON_CERTIFICATE_PREFIX,
    REASON_NO_CERTIFICATE,
    REASON_REFERENCE_PROTOCOL,
)
from tests.e2e.test_cli import fleetreg, fleetreg_json
from tests.support import x509 as certs
from tests.support.api import Operator, new_operator, provision
from tests.support.sources import behind, fresh_address, from_address, public_address
from tests.support.system import ROOT, ServiceProcess, System, metric_sample

pytestmark = pytest.mark.e2e

DOC = ROOT / "docs" / "device-identity.md"

# The tests' calls from 127.0.0.1 come through the TLS-terminating proxy. The header's name
# is set too for the fuller shared/client_certs.py (branch tlsclient), which reads a proxy's
# header only when FLEETREG_CLIENT_CERT_HEADER names it; this branch's minimal one reads
# X-Client-Cert from a trusted proxy always.
PROXY = {"FLEETREG_TRUSTED_PROXIES": "127.0.0.1/32", "FLEETREG_CLIENT_CERT_HEADER": "X-Client-Cert"}
DEFAULTS = {  # the shipped refusal limits (the shared system's are high)
    **PROXY,
    "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "30/minute;300/hour;1000/day",
    "FLEETREG_LIMIT_REFUSALS_PER_TARGET": "10/minute",
}


@pytest.fixture(scope="module")
async def intake(system: System) -> AsyncIterator[ServiceProcess]:
    """An intake that trusts 127.0.0.1 as its TLS-terminating proxy."""
    async with system.instance("intake", PROXY) as process:
        yield process


def header(*chain: certs.Issued) -> dict[str, str]:
    """The proxy's header: the URL-encoded PEM of the leaf, then the chain (nginx's
    ``$ssl_client_escaped_cert``)."""
    return {"X-Client-Cert": quote("".join(c.pem for c in chain))}


async def x509_registration(operator: Operator, **settings: Any) -> dict[str, Any]:
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"x-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        expect=201,
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    created: dict[str, Any] = await operator.call(
        "POST",
        "/v1/auto-registrations",
        {"product_id": product["id"], "attestation": "x509", **settings},
        expect=201,
    )
    return created


async def verified_ca(operator: Operator, registration_id: str, ca: certs.Issued) -> dict[str, Any]:
    added = await operator.call(
        "POST", f"/v1/auto-registrations/{registration_id}/cas", {"certificate": ca.pem}, expect=201
    )
    proof = certs.verification(ca, added["verification_code"])
    verified: dict[str, Any] = await operator.call(
        "POST",
        f"/v1/attestation-cas/{added['id']}/verify",
        {"verification_certificate": proof.pem},
        expect=200,
    )
    return verified


async def claim(
    session: aiohttp.ClientSession,
    url: str,
    code: str,
    hardware_id: str,
    headers: dict[str, str],
    *,
    fingerprint: str = "a",
    secret: str = "",
    idempotency_key: str = "",
    include: bool = False,
) -> tuple[int, dict[str, Any]]:
    """One native registration call (polled to its outcome)."""
    body: dict[str, Any] = {
        "bulk_identification_code": code,
        "hardware_id": hardware_id,
        "fingerprint": {"cpu_id": f"cpu-{fingerprint}", "mac": f"mac-{fingerprint}"},
    }
    if secret:
        body["device_secret"] = secret
    sent = {**headers, **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    query = "?include=files" if include else ""
    async with session.post(f"{url}/v1/registrations{query}", json=body, headers=sent) as response:
        status, answer = response.status, await response.json()
    for _ in range(150):
        if answer.get("status") != "pending":
            break
        async with session.get(f"{url}/v1/registrations/{answer['request_id']}{query}") as response:
            status, answer = response.status, await response.json()
    return status, answer


async def test_an_x509_product_from_its_ca_to_a_wiped_board(
    system: System, intake: ServiceProcess, operator: Operator, session: aiohttp.ClientSession
) -> None:
    created = await x509_registration(operator, max_devices=2)
    registration_id, code = created["id"], created["bulk_identification_code"]
    assert created["attestation"] == "x509" and created["hardware_id_from"] == "cn"
    root = certs.ca(f"Maker Root {uuid.uuid4().hex[:6]}")
    line = certs.ca("Maker Line CA", issuer=root)
    hardware_id = f"x5-{uuid.uuid4().hex[:10]}"
    leaf = certs.device(root, hardware_id)

    # Uploaded, not verified: it trusts nothing yet.
    added = await operator.call(
        "POST", f"/v1/auto-registrations/{registration_id}/cas", {"certificate": root.pem}, expect=201
    )
    assert added["verified"] is False and len(added["verification_code"]) == 32
    status, early = await claim(session, intake.url, code, hardware_id, header(leaf))
    assert status == 403 and "not verified" in early["reason"], early
    # A forged verification certificate (the CA's name, another key) is refused.
    forger = certs.ca(root.certificate.subject.rfc4514_string().removeprefix("CN="))
    forged = await operator.call(
        "POST",
        f"/v1/attestation-cas/{added['id']}/verify",
        {"verification_certificate": certs.verification(forger, added["verification_code"]).pem},
        expect=400,
    )
    assert forged["field"] == "verification_certificate" and forged["rule"] == "signed_by_ca"
    shown = await operator.call(
        "POST",
        f"/v1/attestation-cas/{added['id']}/verify",
        {"verification_certificate": certs.verification(root, added["verification_code"]).pem},
        expect=200,
    )
    assert shown["verified"] is True
    await _settle()

    # The two-call boot: the hardware ID is the certificate's; a retry is the same device.
    key = str(uuid.uuid4())
    status, board = await claim(
        session, intake.url, code, hardware_id, header(leaf), idempotency_key=key, include=True
    )
    assert status == 200 and board["decision"] == "new" and board["hardware_id"] == hardware_id, board
    assert board["manifest"]["files"]
    status, retry = await claim(session, intake.url, code, hardware_id, header(leaf), idempotency_key=key)
    assert (
        status == 200
        and retry["device_id"] == board["device_id"]
        and retry["device_secret"] == board["device_secret"]
    )
    await provision(session, intake.url, board)

    # A wiped board (no secret, its storage new) proving the same key: itself, new credentials.
    status, wiped = await claim(session, intake.url, code, hardware_id, header(leaf), fingerprint="b")
    assert status == 200 and wiped["device_id"] == board["device_id"] and wiped["decision"] == "same", wiped
    assert wiped["hardware_id"] == hardware_id and wiped["device_secret"] != board["device_secret"]
    async with session.get(
        f"{intake.url}/v1/devices/{board['device_id']}/manifest",
        headers={"Authorization": f"Bearer {board['device_secret']}"},
    ) as response:
        assert response.status == 401  # the earlier secret was replaced
    await provision(session, intake.url, wiped)
    for _ in range(50):  # its "ready" is recorded through the pipeline
        devices = await operator.devices(hardware_id=hardware_id)
        if devices[0]["lifecycle"] == "provisioned":
            break
        await asyncio.sleep(0.2)
    assert [(d["hardware_id"], d["lifecycle"]) for d in devices] == [(hardware_id, "provisioned")], devices

    # Through an intermediate the device presents.
    other = f"x5b-{uuid.uuid4().hex[:8]}"
    status, below = await claim(session, intake.url, code, other, header(certs.device(line, other), line))
    assert status == 200 and below["decision"] == "new", below
    # The quota counts devices, not reclaims: the wiped board took none of it, a third ID is refused.
    third = f"x5c-{uuid.uuid4().hex[:8]}"
    status, over = await claim(session, intake.url, code, third, header(certs.device(root, third)))
    assert status == 403 and over["reason"].startswith("quota reached"), over

    # The reference protocol answers false with the reason.
    compat = f"{intake.url}/apv/v27/bulk/registration/device"
    async with session.post(
        f"{compat}/information/", json={"BulkIdentificationCode": code, "HardwareId": other, "CPUId": "c"}
    ) as response:
        text = await response.text()
    assert '"false"' in text and REASON_REFERENCE_PROTOCOL[:40] in text, text

    # Revoked by serial, then by CRL; both un-done and done again in the audit trail.
    revoked = certs.device(root, f"x5r-{uuid.uuid4().hex[:8]}")
    serial = format(revoked.certificate.serial_number, "x")
    await operator.call("POST", f"/v1/attestation-cas/{added['id']}/revoke", {"serial": serial}, expect=200)
    await _settle()
    name = revoked.certificate.subject.rfc4514_string().removeprefix("CN=")
    status, refused = await claim(session, intake.url, code, name, header(revoked))
    assert (
        status == 403
        and refused["reason"].startswith(REASON_CERTIFICATE_PREFIX)
        and "revoked" in refused["reason"]
    )
    await operator.call("POST", f"/v1/attestation-cas/{added['id']}/unrevoke", {"serial": serial}, expect=200)
    crl = base64.b64encode(certs.crl(root, [revoked.certificate.serial_number])).decode()
    with_crl = await operator.call("PUT", f"/v1/attestation-cas/{added['id']}/crl", {"crl": crl}, expect=200)
    assert with_crl["crl"]["uploaded_at"] and with_crl["revoked_serials"] == []
    await _settle()
    status, refused = await claim(session, intake.url, code, name, header(revoked))
    assert status == 403 and "revoked" in refused["reason"], refused

    listed = await operator.call("GET", f"/v1/auto-registrations/{registration_id}/cas", expect=200)
    assert [c["id"] for c in listed["cas"]] == [added["id"]]
    page = await operator.call("GET", "/v1/audit-events?limit=100", expect=200)
    actions = Counter(e["action"] for e in page["audit_events"])
    assert {a: actions[a] for a in actions if a.startswith("attestation_ca.")} == {
        "attestation_ca.added": 1,
        "attestation_ca.verified": 1,
        "attestation_ca.serial_revoked": 1,
        "attestation_ca.serial_unrevoked": 1,
        "attestation_ca.crl_uploaded": 1,
    }
    # Deleting the CA stops its devices registering (registered ones keep their secrets).
    await operator.call("DELETE", f"/v1/attestation-cas/{added['id']}", expect=200)
    await _settle()
    status, gone = await claim(session, intake.url, code, hardware_id, header(leaf), fingerprint="c")
    assert status == 403 and "does not chain" in gone["reason"], gone


async def test_the_attackers_certificates_are_refused(
    system: System, intake: ServiceProcess, operator: Operator, session: aiohttp.ClientSession, pool: Pool
) -> None:
    created = await x509_registration(operator)
    code = created["bulk_identification_code"]
    root = certs.ca("Attacked Maker CA")
    await verified_ca(operator, created["id"], root)
    # Another account's verified CA is never trusted here.
    stranger = await new_operator(session, pool, system.operator_url)
    theirs = await x509_registration(stranger)
    their_root = certs.ca("Stranger CA")
    their_ca = await verified_ca(stranger, theirs["id"], their_root)
    assert (await operator.call("GET", f"/v1/attestation-cas/{their_ca['id']}", expect=404))[
        "error"
    ] == "not_found"
    await _settle()

    now = certs.NOW
    cases = {
        "another CA": (certs.device(certs.ca("Attacked Maker CA"), "h1"), "does not chain"),
        "another account's CA": (certs.device(their_root, "h1"), "does not chain"),
        "self-signed": (certs.device(None, "h1"), "self-signed"),
        "CA flag": (certs.device(root, "h1", ca_flag=True), "CA certificate"),
        "key usage": (certs.device(root, "h1", digital_signature=False), "digitalSignature"),
        "extended key usage": (certs.device(root, "h1", client_auth=False), "clientAuth"),
        "expired": (
            certs.device(root, "h1", not_before=now - 9 * certs.DAY, not_after=now - certs.DAY),
            "expired",
        ),
        "not yet valid": (certs.device(root, "h1", not_before=now + certs.DAY), "not valid yet"),
        "another hardware ID": (certs.device(root, "h2"), "hardware_id is not"),
    }
    before = await metric_sample(session, intake.ops_url, "fleetreg_x509_refusals_total", rule="self_signed")
    for case, (leaf, words) in cases.items():
        status, answer = await claim(session, intake.url, code, "h1", header(leaf))
        assert status == 403 and answer["reason"].startswith(REASON_CERTIFICATE_PREFIX), (case, answer)
        assert words in answer["reason"], (case, answer["reason"])
    after = await metric_sample(session, intake.ops_url, "fleetreg_x509_refusals_total", rule="self_signed")
    assert after == before + 1
    status, answer = await claim(session, intake.url, code, "h1", {})
    assert status == 403 and answer["reason"] == REASON_NO_CERTIFICATE
    # A good certificate's header from an address that is no trusted proxy is ignored.
    good = certs.device(root, "h1")
    async with from_address(fresh_address()) as outsider:
        status, answer = await claim(outsider, intake.url, code, "h1", header(good))
    assert status == 403 and answer["reason"] == REASON_NO_CERTIFICATE, answer
    # Garbage and a megabyte from the proxy: a clear 400, never a 5xx.
    for value in ("garbage", quote("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")):
        status, answer = await claim(session, intake.url, code, "h1", {"X-Client-Cert": value})
        assert status == 400 and answer["field"] == "X-Client-Cert", answer
    async with session.post(
        f"{intake.url}/v1/registrations",
        json={"bulk_identification_code": code, "hardware_id": "h1"},
        headers={"X-Client-Cert": "A" * 1_048_576},
    ) as response:
        assert 400 <= response.status < 500
    # The real board still registers.
    status, answer = await claim(session, intake.url, code, "h1", header(good))
    assert status == 200 and answer["decision"] == "new", answer


async def test_a_flood_of_bad_certificates_from_one_address_gets_429(
    system: System, operator: Operator
) -> None:
    created = await x509_registration(operator)
    code = created["bulk_identification_code"]
    await verified_ca(operator, created["id"], certs.ca("Flooded CA"))
    bad = header(certs.device(None, "h1"))
    async with system.instance("intake", DEFAULTS) as limited, behind(public_address()) as flooder:
        statuses = []
        for _ in range(14):
            status, _answer = await claim(flooder, limited.url, code, "h1", bad)
            statuses.append(status)
    assert statuses[:10] == [403] * 10 and 429 in statuses[10:], statuses


async def _settle() -> None:
    """The ``codes`` invalidation's delivery to the intake (milliseconds; docs: allow 1 s)."""
    await asyncio.sleep(0.5)


def doc_functions() -> str:
    """The factory's openssl functions, as docs/device-identity.md gives them."""
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S):
        if block.startswith("# fleetreg x509: openssl"):
            return str(block)
    raise AssertionError(f"no x509 openssl block in {DOC}")


def factory(directory: Path, script: str) -> None:
    sh = shutil.which("dash") or "/bin/sh"
    subprocess.run(
        [sh, "-c", doc_functions() + script], cwd=directory, capture_output=True, check=True, timeout=30
    )


async def test_the_documented_openssl_and_the_cli_register_a_device(
    system: System, intake: ServiceProcess, operator: Operator, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    product = await fleetreg_json(
        operator, system, "product", "create", "--name", f"x-{uuid.uuid4().hex[:6]}", "--service", "ssh:22"
    )
    await fleetreg_json(operator, system, "product", "lock", product["id"])
    created = await fleetreg_json(
        operator,
        system,
        "auto",
        "create",
        "--product",
        product["id"],
        "--attestation",
        "x509",
        "--max-devices",
        "10",
    )
    assert created["attestation"] == "x509" and created["hardware_id_from"] == "cn"
    factory(tmp_path, 'make_ca "Example Maker Devices CA"')
    added = await fleetreg_json(
        operator, system, "auto", "ca", "add", created["id"], "--certificate", str(tmp_path / "ca.pem")
    )
    assert added["verified"] is False
    code, out, _err = await fleetreg(operator, system, "auto", "ca", "show", added["id"])
    assert code == 0 and added["verification_code"] in out and "openssl x509 -req" in out
    factory(tmp_path, f'verification_cert "{added["verification_code"]}"')
    verified = await fleetreg_json(
        operator,
        system,
        "auto",
        "ca",
        "verify",
        added["id"],
        "--certificate",
        str(tmp_path / "verification.pem"),
    )
    assert verified["verified"] is True
    hardware_id = f"b827eb{uuid.uuid4().hex[:6]}"
    factory(tmp_path, f'device_cert "{hardware_id}"')
    device_pem = (tmp_path / "device.pem").read_text()
    await _settle()
    status, board = await claim(
        session,
        intake.url,
        created["bulk_identification_code"],
        hardware_id,
        {"X-Client-Cert": quote(device_pem)},
        include=True,
    )
    assert status == 200 and board["decision"] == "new" and board["hardware_id"] == hardware_id, board

    serial = format(x509.load_pem_x509_certificate(device_pem.encode()).serial_number, "x")
    revoked = await fleetreg_json(operator, system, "auto", "ca", "revoke", added["id"], "--serial", serial)
    assert revoked["revoked_serials"] == [serial]
    unrevoked = await fleetreg_json(
        operator, system, "auto", "ca", "unrevoke", added["id"], "--serial", serial
    )
    assert unrevoked["revoked_serials"] == []
    crl = tmp_path / "ca.crl"
    crl.write_bytes(certs.crl_of(tmp_path / "ca.pem", tmp_path / "ca.key", [int(serial, 16)]))
    with_crl = await fleetreg_json(operator, system, "auto", "ca", "crl", added["id"], "--file", str(crl))
    assert with_crl["crl"] is not None
    listed = await fleetreg_json(operator, system, "auto", "ca", "list", created["id"])
    assert [c["id"] for c in listed["cas"]] == [added["id"]]
    code, out, _err = await fleetreg(operator, system, "auto", "ca", "list", created["id"])
    assert code == 0 and "Example Maker Devices CA" in out and "verified" in out
    code, _out, err = await fleetreg(operator, system, "auto", "ca", "delete", added["id"])
    assert code != 0 and "--yes" in err  # no terminal to confirm on
    deleted = await fleetreg_json(operator, system, "auto", "ca", "delete", added["id"], "--yes")
    assert deleted["deleted"] is True
    code, _out, err = await fleetreg(
        operator, system, "auto", "ca", "add", created["id"], "--certificate", str(tmp_path / "device.pem")
    )
    assert code != 0 and "CA" in err and len(err.strip().splitlines()) == 1
