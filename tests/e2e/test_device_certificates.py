"""Device certificates from a CSR (issue 25, item 2) on the running system: issued with a
two-call registration and later with the device secret, the subject always the ASSIGNED
hardware ID, revoked by disable, reset, delete, move and a reclaim before "ready" into the
account's CRL (audited), EST (RFC 7030) driven with curl and openssl as the RFC's examples
are, on the native port and the https listener, and the attacker's
cases: CSRs with another subject, weak keys, bad signatures, megabyte extensions,
garbage, a flood from one address (429), another account's label, and the CA's key in
no log."""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.db.pool import Pool
from shared.domain.certificates import open_issuing_ca
from tests.support.api import Operator
from tests.support.sources import fresh_address, from_address
from tests.support.system import LOGS, TEST_SECRET_KEY, ServiceProcess, System

pytestmark = pytest.mark.e2e

PKCS10 = {"Content-Type": "application/pkcs10"}


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_of(key: Any, subject: str = "ATTACKER-CHOSEN", *, der: bool = False) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .sign(key, hashes.SHA256())
    )
    if der:
        return base64.encodebytes(csr.public_bytes(serialization.Encoding.DER)).decode()
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def common_name(pem: str) -> str:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def boot(
    session: aiohttp.ClientSession, url: str, code: str, hardware_id: str, csr: str, cpu_id: str = ""
) -> dict[str, Any]:
    """A two-call registration carrying a CSR; the ready answer."""
    body: dict[str, Any] = {"bulk_identification_code": code, "hardware_id": hardware_id, "csr": csr}
    if cpu_id:
        body["fingerprint"] = {"cpu_id": cpu_id, "mac": ""}
    async with session.post(f"{url}/v1/registrations?include=files", json=body) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
    return answer


@pytest.fixture
async def ca_pem(operator: Operator) -> str:
    return str((await operator.call("GET", "/v1/account/issuing-ca", expect=200))["certificate_pem"])


async def test_a_registration_with_a_csr_gets_a_certificate_of_the_assigned_hardware_id(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    auto = await operator.product()
    ca = x509.load_pem_x509_certificate(
        (await operator.call("GET", "/v1/account/issuing-ca", expect=200))["certificate_pem"].encode()
    )
    hardware_id = f"cert-{uuid.uuid4().hex[:8]}"
    first = await boot(
        session, system.device_url, auto["bulk_identification_code"], hardware_id, csr_of(p256()), "a1"
    )
    assert first["manifest"]["files"] and first["certificate"]["ca_pem"]
    cert = x509.load_pem_x509_certificate(first["certificate"]["pem"].encode())
    assert common_name(first["certificate"]["pem"]) == hardware_id  # not the CSR's subject
    cert.verify_directly_issued_by(ca)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert format(cert.serial_number, "x") == first["certificate"]["serial"]
    # A clone (another board, same hardware ID, no secret) is H-1, and so is its certificate,
    # whatever its CSR says (here: H itself).
    clone = await boot(
        session,
        system.device_url,
        auto["bulk_identification_code"],
        hardware_id,
        csr_of(p256(), hardware_id),
        "b2",
    )
    assert (
        clone["clone"]
        and common_name(clone["certificate"]["pem"]) == clone["hardware_id"] == f"{hardware_id}-1"
    )
    device = await operator.call("GET", f"/v1/devices/{first['device_id']}", expect=200)
    assert device["certificate"]["serial"] == first["certificate"]["serial"]
    assert device["certificate"]["revoked_at"] is None


async def test_a_device_renews_with_its_secret_and_downloads_its_certificate(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    auto = await operator.product()
    answer = await boot(
        session, system.device_url, auto["bulk_identification_code"], uuid.uuid4().hex[:12], csr_of(p256())
    )
    url = f"{system.device_url}/v1/devices/{answer['device_id']}/certificate"
    auth = {"Authorization": f"Bearer {answer['device_secret']}"}
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with session.post(url, json={"csr": csr_of(key, der=True)}, headers=auth) as response:
        renewed = await response.json()
        assert response.status == 200, renewed
    assert renewed["serial"] != answer["certificate"]["serial"]
    async with session.get(url, headers=auth) as response:
        assert response.status == 200
        assert (await response.json())["serial"] == renewed["serial"]
    async with session.post(
        url, json={"csr": csr_of(p256())}, headers={"Authorization": "Bearer nope"}
    ) as response:
        assert response.status == 401


async def crl_serials(
    session: aiohttp.ClientSession, system: System, operator: Operator, ca_pem: str
) -> set[str]:
    async with session.get(f"{system.device_url}/v1/accounts/{operator.account_id}/crl") as response:
        assert response.status == 200
        assert response.content_type == "application/pkix-crl"
        crl = x509.load_der_x509_crl(await response.read())
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)  # the issuing CA is P-256
    assert crl.is_signature_valid(ca_key)
    return {format(entry.serial_number, "x") for entry in crl}


async def test_disable_reset_delete_and_move_revoke_into_the_crl_and_the_audit_trail(
    session: aiohttp.ClientSession, system: System, operator: Operator, ca_pem: str
) -> None:
    auto, elsewhere = await operator.product(), await operator.product()
    code = auto["bulk_identification_code"]
    booted = [
        await boot(session, system.device_url, code, uuid.uuid4().hex[:12], csr_of(p256())) for _ in range(4)
    ]
    assert not {b["certificate"]["serial"] for b in booted} & await crl_serials(
        session, system, operator, ca_pem
    )
    for answer, (method, path) in zip(
        booted, (("POST", "/disable"), ("POST", "/reset"), ("DELETE", ""), ("POST", "/move")), strict=True
    ):
        body = {"product_id": elsewhere["product_id"]} if path == "/move" else None
        await operator.call(method, f"/v1/devices/{answer['device_id']}{path}", body, expect=200)
        # Within the invalidation bound (the notification's delivery: milliseconds), awaited
        # up to a second as tests/e2e/test_lifecycle.py awaits a disable.
        deadline = time.monotonic() + 1
        while answer["certificate"]["serial"] not in await crl_serials(session, system, operator, ca_pem):
            assert time.monotonic() < deadline, path
            await asyncio.sleep(0.01)
    events = await operator.call("GET", "/v1/audit-events?action=certificate.revoked", expect=200)
    revoked = {e["changes"]["serial"]: e["changes"]["reason"] for e in events["audit_events"]}
    assert revoked == {
        booted[0]["certificate"]["serial"]: "disabled",
        booted[1]["certificate"]["serial"]: "reset",
        booted[2]["certificate"]["serial"]: "deleted",
        booted[3]["certificate"]["serial"]: "reset",  # a move is a reset into another product
    }
    device = await operator.call("GET", f"/v1/devices/{booted[0]['device_id']}", expect=200)
    assert device["certificate"]["revoked_at"] is not None


async def test_a_reclaim_before_ready_revokes_the_superseded_credentials_certificates(
    session: aiohttp.ClientSession, system: System, operator: Operator, ca_pem: str
) -> None:
    """The power-cut rule: the board claims again (same fingerprint, no Idempotency-Key)
    before "ready": the same device with new credentials, and the certificate of the
    earlier ones is revoked (superseded) in the reclaim's transaction, audited."""
    code = (await operator.product())["bulk_identification_code"]
    hardware_id = uuid.uuid4().hex[:12]
    first = await boot(session, system.device_url, code, hardware_id, csr_of(p256()), "pc")
    again = await boot(session, system.device_url, code, hardware_id, csr_of(p256()), "pc")
    assert (again["device_id"], again["decision"]) == (first["device_id"], "same")
    assert again["device_secret"] != first["device_secret"]
    deadline = time.monotonic() + 1  # the invalidation bound, as a disable's above
    while first["certificate"]["serial"] not in (crl := await crl_serials(session, system, operator, ca_pem)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert again["certificate"]["serial"] not in crl
    events = await operator.call(
        "GET", f"/v1/audit-events?action=certificate.revoked&target_id={first['device_id']}", expect=200
    )
    assert [
        (e["changes"]["serial"], e["changes"]["reason"], e["changes"]["by"]) for e in events["audit_events"]
    ] == [(first["certificate"]["serial"], "reset", "reclaim")]
    device = await operator.call("GET", f"/v1/devices/{first['device_id']}", expect=200)
    assert device["certificate"]["serial"] == again["certificate"]["serial"]
    assert device["certificate"]["revoked_at"] is None


def exit_code(command: str, cwd: Path) -> int:
    # As run(), for a command expected to fail.
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, timeout=60, check=False)  # noqa: S602
    return done.returncode


def run(command: str, cwd: Path) -> bytes:
    # A shell pipeline, as the RFC's and the docs' examples are written (the test's own text).
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, timeout=60, check=False)  # noqa: S602
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


async def test_est_with_curl_and_openssl(
    session: aiohttp.ClientSession, system: System, operator: Operator, ca_pem: str, tmp_path: Path
) -> None:
    auto = await operator.product()
    answer = await boot(
        session, system.device_url, auto["bulk_identification_code"], uuid.uuid4().hex[:12], csr_of(p256())
    )
    est = f"{system.device_url}/.well-known/est/{auto['id']}"
    # RFC 7030 section 4.1: the CA certificates, base64 PKCS#7 certs-only.
    shown = run(f"curl -sf {est}/cacerts | base64 -d | openssl pkcs7 -inform DER -print_certs", tmp_path)
    assert ca_pem.strip().splitlines()[1].encode() in shown
    # Section 4.2: a key made by openssl, its CSR as base64 DER, HTTP Basic with the device secret.
    run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key "
        "-subj /CN=whatever -outform DER -out device.der && base64 device.der > device.b64",
        tmp_path,
    )
    user = f"{answer['device_id']}:{answer['device_secret']}"
    enroll = f"curl -sf --user {user} -H 'Content-Type: application/pkcs10' --data-binary @device.b64 {est}"
    issued = run(f"{enroll}/simpleenroll | base64 -d | openssl pkcs7 -inform DER -print_certs", tmp_path)
    assert f"subject=CN={answer['hardware_id']}".encode() in issued.replace(b" = ", b"=")
    # Renewal proven by the current certificate's key alone (no secret): the same key's CSR.
    renew = "curl -sf -H 'Content-Type: application/pkcs10' --data-binary @device.b64"
    renewed = run(
        f"{renew} {est}/simplereenroll | base64 -d | openssl pkcs7 -inform DER -print_certs", tmp_path
    )
    assert answer["hardware_id"].encode() in renewed
    # Another key without a secret, or no credentials to enroll: 401 with the Basic challenge.
    other = {"Content-Type": "application/pkcs10"}
    async with session.post(
        f"{est}/simplereenroll", data=csr_of(p256(), der=True), headers=other
    ) as response:
        assert response.status == 401
    async with session.post(f"{est}/simpleenroll", data=csr_of(p256(), der=True), headers=other) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    async with session.get(f"{system.device_url}/.well-known/est/{uuid.uuid4()}/cacerts") as response:
        assert response.status == 404


async def test_est_on_the_https_listener_with_curl_and_openssl(
    session: aiohttp.ClientSession, system: System, operator: Operator, ca_pem: str, tmp_path: Path
) -> None:
    """EST where a device meets it in the field: the intake's https listener
    (FLEETREG_COMPAT_PORT with FLEETREG_TLS_CERT), the server verified with curl --cacert,
    and the enrolled certificate verified against the account's CA by openssl."""
    auto = await operator.product()
    answer = await boot(
        session, system.device_url, auto["bulk_identification_code"], uuid.uuid4().hex[:12], csr_of(p256())
    )
    (tmp_path / "issuing-ca.pem").write_text(ca_pem)
    est = f"https://127.0.0.1:{system.env['FLEETREG_COMPAT_PORT']}/.well-known/est/{auto['id']}"
    curl = f"curl -sf --cacert {system.tls_ca}"
    shown = run(f"{curl} {est}/cacerts | base64 -d | openssl pkcs7 -inform DER -print_certs", tmp_path)
    assert ca_pem.strip().splitlines()[1].encode() in shown
    run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout device.key "
        "-subj /CN=whatever -outform DER -out device.der && base64 device.der > device.b64",
        tmp_path,
    )
    post = f"{curl} -H 'Content-Type: application/pkcs10' --data-binary @device.b64"
    user = f"{answer['device_id']}:{answer['device_secret']}"
    run(
        f"{post} --user {user} {est}/simpleenroll | base64 -d | openssl pkcs7 -inform DER -print_certs "
        "-out device.pem && openssl verify -CAfile issuing-ca.pem device.pem",
        tmp_path,
    )
    subject = run("openssl x509 -in device.pem -noout -subject", tmp_path).decode()
    assert subject.replace(" = ", "=").strip() == f"subject=CN={answer['hardware_id']}"
    # Renewal proven by the current certificate's key alone, over TLS too.
    renewed = run(
        f"{post} {est}/simplereenroll | base64 -d | openssl pkcs7 -inform DER -print_certs", tmp_path
    )
    assert b"BEGIN CERTIFICATE" in renewed
    # An unverified server is refused by curl (no --cacert: the test CA is not a public one).
    assert exit_code(f"curl -sf {est}/cacerts", tmp_path) == 60  # peer certificate not authenticated


async def test_another_accounts_device_never_gets_this_accounts_ca(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool
) -> None:
    from tests.support.api import new_operator

    other = await new_operator(session, pool, system.operator_url)
    mine, theirs = await operator.product(), await other.product()
    answer = await boot(
        session, system.device_url, theirs["bulk_identification_code"], uuid.uuid4().hex[:12], csr_of(p256())
    )
    async with session.post(
        f"{system.device_url}/.well-known/est/{mine['id']}/simpleenroll",
        data=csr_of(p256(), der=True),
        headers={
            **PKCS10,
            "Authorization": basic(answer["device_id"], answer["device_secret"]),
        },
    ) as response:
        assert response.status == 403
    cas = set()
    for label in (mine["id"], theirs["id"]):
        async with session.get(f"{system.device_url}/.well-known/est/{label}/cacerts") as response:
            cas.add(await response.read())
    assert len(cas) == 2
    theirs_ca = x509.load_pem_x509_certificate(answer["certificate"]["ca_pem"].encode())
    mine_ca = (await operator.call("GET", "/v1/account/issuing-ca", expect=200))["certificate_pem"]
    assert theirs_ca != x509.load_pem_x509_certificate(mine_ca.encode())


def weak_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505  # the weak key refused


def weak_csrs() -> dict[str, tuple[str, str]]:
    """Every refused CSR: (its text, the rule the answer names)."""
    good = x509.load_pem_x509_csr(csr_of(p256()).encode()).public_bytes(serialization.Encoding.DER)
    tampered = bytearray(good)
    tampered[-3] ^= 1
    big = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"n{i}.example") for i in range(400)]), critical=False
        )
        .sign(p256(), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    return {
        "rsa1024": (csr_of(weak_rsa_key()), "weak_key"),
        "p192": (csr_of(ec.generate_private_key(ec.SECP192R1())), "weak_key"),
        "bad signature": (base64.b64encode(bytes(tampered)).decode(), "bad_signature"),
        "garbage": (
            "-----BEGIN CERTIFICATE REQUEST-----\nnot a csr\n-----END CERTIFICATE REQUEST-----",
            "malformed",
        ),
        "large extensions": (big, "too_large"),
    }


@pytest.fixture(scope="module")
async def strict_intake(system: System) -> AsyncIterator[ServiceProcess]:
    """An intake counting refusals with a small allowance per source."""
    async with system.instance("intake", {"FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "8/minute"}) as process:
        yield process


async def test_refused_csrs_name_their_reason_and_a_flood_from_one_address_is_429(
    session: aiohttp.ClientSession, strict_intake: ServiceProcess, operator: Operator
) -> None:
    auto = await operator.product()
    code = auto["bulk_identification_code"]
    est = f"{strict_intake.url}/.well-known/est/{auto['id']}"
    async with from_address(fresh_address()) as attacker:
        for name, (text, rule) in weak_csrs().items():
            body = {"bulk_identification_code": code, "hardware_id": "h1", "csr": text}
            async with attacker.post(f"{strict_intake.url}/v1/registrations", json=body) as response:
                refused = await response.json()
                assert (response.status, refused.get("rule")) == (400, rule), name
        # A megabyte body: past the intake's body limit, counted like the rest.
        async with attacker.post(f"{est}/simplereenroll", data=b"A" * 1_000_000, headers=PKCS10) as response:
            assert response.status in (413, 429)
        statuses = []
        for _ in range(6):
            async with attacker.post(f"{est}/simplereenroll", data=b"garbage", headers=PKCS10) as response:
                statuses.append(response.status)
        assert statuses[-1] == 429, statuses
        # A device that proves itself is still answered from that address.
        answer = await boot(attacker, strict_intake.url, code, uuid.uuid4().hex[:12], csr_of(p256()))
        assert answer["certificate"]["pem"]


async def test_the_ca_key_and_device_secrets_are_in_no_log(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool
) -> None:
    before = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    auto = await operator.product()
    answer = await boot(
        session, system.device_url, auto["bulk_identification_code"], uuid.uuid4().hex[:12], csr_of(p256())
    )
    est = f"{system.device_url}/.well-known/est/{auto['id']}"
    wrong = basic(answer["device_id"], secrets.token_hex(16))
    for headers in ({**PKCS10, "Authorization": wrong}, {"Content-Type": "text/plain"}):
        async with session.post(f"{est}/simpleenroll", data=b"\x00\xff" * 10, headers=headers) as response:
            assert response.status < 500
    row = await pool.fetchrow(
        "SELECT certificate, sealed_key FROM issuing_cas WHERE account_id = $1", operator.account_id
    )
    ca = open_issuing_ca(TEST_SECRET_KEY.encode(), operator.account_id, row["certificate"], row["sealed_key"])
    key_der = ca.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pem_lines = [
        line
        for line in ca.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
        .splitlines()
        if not line.startswith("-----")
    ]
    needles = [
        *pem_lines,
        key_der.hex(),
        format(ca.key.private_numbers().private_value, "x"),
        answer["device_secret"],
    ]
    for path in LOGS.glob("*.log"):
        with path.open("rb") as log:
            log.seek(before.get(path, 0))
            written = log.read().decode(errors="replace")
        assert "PRIVATE KEY" not in written, path
        for needle in needles:
            assert needle not in written, path
