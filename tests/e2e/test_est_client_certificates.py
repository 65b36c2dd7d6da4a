"""EST authenticated by the device's current certificate (RFC 7030 section 3.3.2) on the
running system, driven with curl and openssl as the RFC's examples are: the TLS client
certificate on the intake's https listener renews (``simplereenroll``) and enrolls
(``simpleenroll``) with no secret, for the device's assigned hardware ID whatever the CSR
says; a revoked, expired, another account's or another registration's certificate is
refused with its reason (and so are one not valid yet and one never recorded) and counted; a device without a certificate still registers on
that listener; a certificate of an unknown CA gets no HTTP answer at all; a proxy's
``X-Client-Cert`` (named in FLEETREG_CLIENT_CERT_HEADER) is honoured only from
FLEETREG_TRUSTED_PROXIES; and a new account's CA
is accepted within the refresh interval (FLEETREG_TLS_CLIENT_CA_REFRESH_SECONDS, 1 s in
the tests' system)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.db import certificates as registry
from shared.db.pool import Pool
from shared.domain.certificates import device_certificate
from tests.support.api import Operator, new_operator
from tests.support.sources import fresh_address, from_address
from tests.support.system import TEST_SECRET_KEY, System, metric_sample

pytestmark = pytest.mark.e2e

NEW_KEY = "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
# How long a new account's CA may take to be accepted: the tests' refresh interval (1 s),
# a round's own time and a loaded machine's slack.
ANCHOR_WAIT_S = 10.0


def sh(command: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    # A shell pipeline, as the RFC's and the docs' examples are written (the test's own text).
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, timeout=60, check=False)  # noqa: S602


def ok(command: str, cwd: Path) -> bytes:
    done = sh(command, cwd)
    assert done.returncode == 0, (command, done.stderr.decode())
    return done.stdout


@dataclass
class Device:
    """A device booted with a key openssl made (``<name>.key``) and its certificate
    (``<name>.pem``) in the test's folder."""

    name: str
    answer: dict[str, Any]

    @property
    def cert(self) -> str:  # curl's arguments
        return f"--cert {self.name}.pem --key {self.name}.key"


async def boot(
    session: aiohttp.ClientSession, system: System, auto: dict[str, Any], folder: Path, name: str
) -> Device:
    """A two-call registration carrying a CSR of a key openssl made; the certificate saved."""
    ok(f"{NEW_KEY} -keyout {name}.key -subj /CN=whatever -out {name}.csr", folder)
    body = {
        "bulk_identification_code": auto["bulk_identification_code"],
        "hardware_id": f"tls-{uuid.uuid4().hex[:10]}",
        "csr": (folder / f"{name}.csr").read_text(),
    }
    async with session.post(f"{system.device_url}/v1/registrations?include=files", json=body) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
    (folder / f"{name}.pem").write_text(answer["certificate"]["pem"])
    return Device(name, answer)


@dataclass
class Est:
    """curl against the intake's https listener, as a device in the field calls it."""

    system: System
    label: str
    folder: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.system.env['FLEETREG_COMPAT_PORT']}/.well-known/est/{self.label}"

    def call(self, operation: str, client: str, csr: str = "") -> tuple[int, int, bytes]:
        """(curl's exit code, HTTP status, body) of a POST with a fresh key's CSR (or ``csr``)."""
        if not csr:
            csr = f"new-{uuid.uuid4().hex[:6]}"
            ok(
                f"{NEW_KEY} -keyout {csr}.key -subj /CN=someone-else -outform DER | base64 > {csr}.b64",
                self.folder,
            )
        done = sh(
            f"curl -s --cacert {self.system.tls_ca} {client} -H 'Content-Type: application/pkcs10' "
            f"--data-binary @{csr}.b64 -o answer.out -w '%{{http_code}}' {self.url}/{operation}",
            self.folder,
        )
        body = (self.folder / "answer.out").read_bytes() if (self.folder / "answer.out").exists() else b""
        (self.folder / "answer.out").unlink(missing_ok=True)
        status = int(done.stdout or b"0")
        return done.returncode, status, body

    def issued(self, operation: str, client: str) -> x509.Certificate:
        code, status, body = self.call(operation, client)
        assert (code, status) == (0, 200), body
        (self.folder / "issued.b64").write_bytes(body)
        pem = ok("base64 -d issued.b64 | openssl pkcs7 -inform DER -print_certs", self.folder)
        return x509.load_pem_x509_certificate(pem)

    def refused(self, operation: str, client: str) -> dict[str, Any]:
        code, status, body = self.call(operation, client)
        assert (code, status) == (0, 403), body
        refusal: dict[str, Any] = json.loads(body)
        return refusal

    def accepted_within(self, device: Device) -> float:
        """Seconds until the listener takes the device's certificate (its CA an anchor)."""
        started = time.monotonic()
        while True:
            code, status, body = self.call("simplereenroll", device.cert)
            if code == 0:
                assert status == 200, body
                return time.monotonic() - started
            assert time.monotonic() - started < ANCHOR_WAIT_S, f"curl exit {code}"
            time.sleep(0.2)


def hardware_id_of(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


async def test_a_device_renews_and_enrolls_with_its_current_certificate_over_tls(
    session: aiohttp.ClientSession, system: System, operator: Operator, tmp_path: Path
) -> None:
    auto = await operator.product()
    device = await boot(session, system, auto, tmp_path, "device")
    est = Est(system, auto["id"], tmp_path)
    first_seconds = est.accepted_within(device)  # a new account's CA: the refresh interval
    assert first_seconds < ANCHOR_WAIT_S
    # simplereenroll with the current certificate and a NEW key whose CSR names someone
    # else: a certificate of the device's own hardware ID, verified by openssl.
    renewed = est.issued("simplereenroll", device.cert)
    assert hardware_id_of(renewed) == device.answer["hardware_id"]
    (tmp_path / "ca.pem").write_text(device.answer["certificate"]["ca_pem"])
    (tmp_path / "renewed.pem").write_bytes(renewed.public_bytes(serialization.Encoding.PEM))
    ok("openssl verify -CAfile ca.pem renewed.pem", tmp_path)
    shown = await operator.call("GET", f"/v1/devices/{device.answer['device_id']}", expect=200)
    assert shown["certificate"]["serial"] == format(renewed.serial_number, "x")
    # simpleenroll takes the current certificate too (RFC 7030 section 4.2.1); the earlier
    # certificate is still current (a renewal revokes nothing), and so is the new one.
    enrolled = est.issued("simpleenroll", device.cert)
    assert hardware_id_of(enrolled) == device.answer["hardware_id"]
    assert enrolled.serial_number != renewed.serial_number


async def test_revoked_expired_and_foreign_certificates_are_refused_with_their_reason(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool, tmp_path: Path
) -> None:
    auto, sibling = await operator.product(), await operator.product()
    est = Est(system, auto["id"], tmp_path)
    reset = await boot(session, system, auto, tmp_path, "reset")
    est.accepted_within(await boot(session, system, auto, tmp_path, "probe"))
    ops = system.services["intake"].ops_url
    counted_before = await metric_sample(session, ops, "fleetreg_throttle_refusals_total", service="intake")

    # Revoked: the operator reset the device (its certificate superseded), the board kept it.
    await operator.call("POST", f"/v1/devices/{reset.answer['device_id']}/reset", expect=200)
    for operation in ("simplereenroll", "simpleenroll"):
        refusal = est.refused(operation, reset.cert)
        assert (refusal["error"], refusal["field"], refusal["rule"]) == (
            "certificate_refused",
            "client_certificate",
            "revoked",
        )

    # Expired: a certificate the account's CA issued to the device long ago. It passes the
    # handshake (no time check there) and gets a clear answer instead of a TLS alert.
    old = await boot(session, system, auto, tmp_path, "old")
    ca = await registry.issuing_ca(pool, TEST_SECRET_KEY.encode(), operator.account_id)
    assert ca is not None
    issuing = await registry.issuing_device(pool, old.answer["device_id"])
    assert issuing is not None
    csr = x509.load_pem_x509_csr(ok(f"openssl req -new -key {old.name}.key -subj /CN=x", tmp_path))
    long_ago = datetime.now(UTC) - timedelta(days=30)
    expired = device_certificate(ca, csr, issuing.hardware_id, old.answer["device_id"], 1, long_ago)
    recorded = await registry.record_certificate(
        pool,
        old.answer["device_id"],
        issuing.credential_generation,
        issuing.hardware_id,
        lambda: expired,
        10,
        ca.der,
    )
    assert recorded == expired
    (tmp_path / "expired.pem").write_text(expired.pem)
    refusal = est.refused("simplereenroll", f"--cert expired.pem --key {old.name}.key")
    assert refusal["rule"] == "expired" and "expired" in refusal["message"]
    # Not valid yet (a device clock far ahead of the CA's would make one), and one the
    # account's CA signed that fleetreg never recorded (as a leaked CA key would make).
    later = datetime.now(UTC) + timedelta(days=2)
    future = device_certificate(ca, csr, issuing.hardware_id, old.answer["device_id"], 5, later)
    recorded = await registry.record_certificate(
        pool,
        old.answer["device_id"],
        issuing.credential_generation,
        issuing.hardware_id,
        lambda: future,
        10,
        ca.der,
    )
    assert recorded == future
    (tmp_path / "future.pem").write_text(future.pem)
    assert est.refused("simplereenroll", f"--cert future.pem --key {old.name}.key")["rule"] == "not_yet_valid"
    ghost = device_certificate(ca, csr, "ghost", str(uuid.uuid4()), 1)
    (tmp_path / "ghost.pem").write_text(ghost.pem)
    assert est.refused("simpleenroll", f"--cert ghost.pem --key {old.name}.key")["rule"] == "unknown_serial"

    # Another registration's device of the same account (same CA): not this label's.
    stranger = await boot(session, system, sibling, tmp_path, "sibling")
    assert est.refused("simplereenroll", stranger.cert)["rule"] == "other_registration"

    # Another account's device: its CA is an anchor too (it passes the handshake), but it
    # is not this account's CA.
    other = await new_operator(session, pool, system.operator_url)
    other_auto = await other.product()
    foreign = await boot(session, system, other_auto, tmp_path, "foreign")
    Est(system, other_auto["id"], tmp_path).accepted_within(foreign)
    for operation in ("simplereenroll", "simpleenroll"):
        refusal = est.refused(operation, foreign.cert)
        assert refusal["rule"] == "unknown_issuer", refusal
    # Counted against the caller like every refusal (shared/throttle.py), by reason too.
    counted = await metric_sample(session, ops, "fleetreg_throttle_refusals_total", service="intake")
    assert counted - counted_before >= 8
    for reason in (
        "revoked",
        "expired",
        "not_yet_valid",
        "unknown_serial",
        "other_registration",
        "unknown_issuer",
    ):
        assert (
            await metric_sample(session, ops, "fleetreg_client_certificate_refusals_total", reason=reason)
            >= 1
        )


async def test_a_device_without_a_certificate_still_registers_on_the_https_listener(
    system: System, operator: Operator, tmp_path: Path
) -> None:
    auto = await operator.product()
    base = f"https://127.0.0.1:{system.env['FLEETREG_COMPAT_PORT']}"
    body = json.dumps(
        {"bulk_identification_code": auto["bulk_identification_code"], "hardware_id": "plain-1"}
    )
    answer = json.loads(
        ok(
            f"curl -sf --cacert {system.tls_ca} -H 'Content-Type: application/json' "
            f"--data '{body}' '{base}/v1/registrations?include=files'",
            tmp_path,
        )
    )
    assert answer["status"] == "ready" and answer["hardware_id"] == "plain-1"
    # And EST renewal without a certificate or a secret is still the Basic challenge.
    code, status, _ = Est(system, auto["id"], tmp_path).call("simplereenroll", "")
    assert (code, status) == (0, 401)


async def test_a_certificate_of_an_unknown_ca_gets_no_http_answer(system: System, tmp_path: Path) -> None:
    """What such a device sees (docs/device-identity.md): the handshake fails and curl
    reports the connection closed (52 or 56 over TLS 1.3, 35 over TLS 1.2), no status."""
    ok(
        f"{NEW_KEY} -x509 -days 1 -keyout self.key -subj /CN=self-signed -out self.pem",
        tmp_path,
    )
    est = Est(system, str(uuid.uuid4()), tmp_path)
    code, status, _ = est.call("simplereenroll", "--cert self.pem --key self.key")
    assert code in (35, 52, 56) and status == 0
    code, status, _ = est.call("simplereenroll", "--tls-max 1.2 --cert self.pem --key self.key")
    assert code == 35 and status == 0


async def test_the_proxy_header_is_honoured_only_from_a_trusted_address(
    session: aiohttp.ClientSession, system: System, operator: Operator, tmp_path: Path
) -> None:
    auto = await operator.product()
    device = await boot(session, system, auto, tmp_path, "proxied")
    header = urllib.parse.quote(device.answer["certificate"]["pem"], safe="")  # nginx's form

    def csr() -> str:  # a fresh key each time: a renewed key's CSR would prove the device itself
        made = ok(f"{NEW_KEY} -keyout renew.key -subj /CN=x -outform DER | base64", tmp_path)
        return made.decode()

    pkcs10 = {"Content-Type": "application/pkcs10"}
    proxied = {"FLEETREG_TRUSTED_PROXIES": "127.0.0.1/32", "FLEETREG_CLIENT_CERT_HEADER": "X-Client-Cert"}
    async with system.instance("intake", proxied) as intake:
        est = f"{intake.url}/.well-known/est/{auto['id']}/simplereenroll"
        # From the trusted proxy (127.0.0.1): the device's certificate, on the plain port.
        async with session.post(est, data=csr(), headers={**pkcs10, "X-Client-Cert": header}) as response:
            assert response.status == 200, await response.text()
        # From anyone else: the header is ignored (here: no proof at all, the Basic challenge).
        async with from_address(fresh_address()) as stranger:
            async with stranger.post(
                est, data=csr(), headers={**pkcs10, "X-Client-Cert": header}
            ) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Basic ")
            async with stranger.post(
                est, data=csr(), headers={**pkcs10, "X-Client-Cert": "garbage"}
            ) as response:
                assert response.status == 401  # never parsed
        # Garbage from the proxy: a clear 400 naming the header.
        async with session.post(est, data=csr(), headers={**pkcs10, "X-Client-Cert": "garbage"}) as response:
            refusal = await response.json()
            assert response.status == 400 and refusal["field"] == "X-Client-Cert", refusal
        # A certificate forged to look like the device's (same subject, issuer name and
        # serial, another key): the signature does not verify against the account's CA.
        real = x509.load_pem_x509_certificate(device.answer["certificate"]["pem"].encode())
        forged = forge(real)
        async with session.post(
            est, data=csr(), headers={**pkcs10, "X-Client-Cert": urllib.parse.quote(forged, safe="")}
        ) as response:
            refusal = await response.json()
            assert response.status == 403 and refusal["rule"] == "unknown_issuer", refusal


def forge(real: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.issuer)
        .public_key(key.public_key())
        .serial_number(real.serial_number)
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    return forged.public_bytes(serialization.Encoding.PEM).decode()
