"""Bringing your own intermediate (docs/device-identity.md) on the running system: a root
and an intermediate made with openssl as the docs write it, uploaded with the CLI; a
device registering with a CSR gets a certificate ``openssl verify -CAfile root.pem
-untrusted intermediate.pem`` accepts; EST cacerts answers the intermediate and the root;
the CRL is signed by the intermediate after a disable; the https listener accepts the
certificate for an EST renewal; a second upload is refused (409) once a certificate is
out; another account is unaffected; the intermediate's key is in no log and no answer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.db.pool import Pool
from tests.e2e.test_cli import fleetreg, fleetreg_json
from tests.e2e.test_device_certificates import boot, csr_of, p256, run
from tests.support.api import Operator, new_operator
from tests.support.pki import hostile_uploads, new_pki, pem
from tests.support.system import LOGS, System

pytestmark = pytest.mark.e2e

# The docs' commands (docs/device-identity.md, "Bringing your own intermediate").
OPENSSL_PKI = """
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout root.key \
  -subj "/CN=Example Devices Root" -days 3650 -out root.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout intermediate.key \
  -subj "/CN=Example Devices Intermediate" -out intermediate.csr
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > ca.ext
openssl x509 -req -in intermediate.csr -CA root.pem -CAkey root.key -CAcreateserial -days 1825 \
  -extfile ca.ext -out intermediate.pem
cat intermediate.pem root.pem > chain.pem
"""


def answered(command: str, cwd: Path) -> str:
    # curl's -w status; 000 while the handshake refuses the client certificate (not an
    # anchor yet: curl exits 35, 52 or 56).
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, timeout=60, check=False)  # noqa: S602
    return done.stdout.decode()


async def test_an_uploaded_intermediate_issues_verifiable_certificates_and_signs_the_crl(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool, tmp_path: Path
) -> None:
    before = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    # The docs' names, made unique: two accounts may not upload intermediates of one subject.
    name = f"Example Devices {uuid.uuid4().hex[:12]}"
    run(OPENSSL_PKI.replace("Example Devices", name), tmp_path)
    intermediate = x509.load_pem_x509_certificate((tmp_path / "intermediate.pem").read_bytes())
    key_text = (tmp_path / "intermediate.key").read_text()
    key_lines = [line for line in key_text.splitlines() if not line.startswith("-----")]
    answers: list[str] = []

    # Hostile or mistaken uploads: 400 naming field and rule, nothing changed.
    (tmp_path / "root-only.key").write_text((tmp_path / "root.key").read_text())
    code, out, err = await fleetreg(
        operator, system, "account", "issuing-ca", "--upload", str(tmp_path / "chain.pem"), "--key",
        str(tmp_path / "root-only.key"),
    )  # fmt: skip
    assert code != 0 and "not the key of the first certificate" in err, (out, err)
    answers.extend((out, err))
    wrong = await operator.call(
        "PUT", "/v1/account/issuing-ca", {"certificate": (tmp_path / "root.pem").read_text(), "private_key": key_text},
        expect=400,
    )  # fmt: skip
    assert (wrong["field"], wrong["rule"]) == ("private_key", "key_mismatch")
    answers.append(json.dumps(wrong))

    # The upload, with the CLI.
    uploaded = await fleetreg_json(
        operator, system, "account", "issuing-ca", "--upload", str(tmp_path / "chain.pem"), "--key",
        str(tmp_path / "intermediate.key"),
    )  # fmt: skip
    assert uploaded["uploaded"] is True and uploaded["subject"] == f"CN={name} Intermediate"
    answers.append(json.dumps(uploaded))
    shown = await operator.call("GET", "/v1/account/issuing-ca", expect=200)
    assert shown["uploaded"] is True and shown["fingerprint_sha256"] == uploaded["fingerprint_sha256"]
    assert shown["certificate_pem"] == (tmp_path / "chain.pem").read_text()
    answers.append(json.dumps(shown))
    events = await operator.call("GET", "/v1/audit-events?action=issuing_ca.uploaded", expect=200)
    assert [e["changes"] for e in events["audit_events"]] == [
        {"subject": f"CN={name} Intermediate", "fingerprint_sha256": shown["fingerprint_sha256"]}
    ]
    answers.append(json.dumps(events))

    # A device registering with a CSR: its certificate chains to the operator's root.
    auto = await operator.product()
    answer = await boot(
        session, system.device_url, auto["bulk_identification_code"], uuid.uuid4().hex[:12], csr_of(p256())
    )
    answers.append(json.dumps(answer))
    (tmp_path / "device.pem").write_text(answer["certificate"]["pem"])
    assert answer["certificate"]["ca_pem"] == (tmp_path / "chain.pem").read_text()
    verified = run("openssl verify -CAfile root.pem -untrusted intermediate.pem device.pem", tmp_path)
    assert verified.strip().endswith(b"OK")
    device_cert = x509.load_pem_x509_certificate(answer["certificate"]["pem"].encode())
    assert device_cert.issuer == intermediate.subject

    # EST cacerts: the intermediate and the root (a PKCS#7 SET OF: no order).
    est = f"{system.device_url}/.well-known/est/{auto['id']}"
    run(
        f"curl -sf {est}/cacerts | base64 -d | openssl pkcs7 -inform DER -print_certs -out cacerts.pem",
        tmp_path,
    )
    assert set(x509.load_pem_x509_certificates((tmp_path / "cacerts.pem").read_bytes())) == {
        intermediate,
        x509.load_pem_x509_certificate((tmp_path / "root.pem").read_bytes()),
    }

    # The https listener trusts the intermediate (within its refresh, 1 s here): the device
    # renews over EST with its certificate as the TLS client certificate.
    run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout next.key -subj /CN=x "
        "-outform DER -out next.der && base64 next.der > next.b64",
        tmp_path,
    )
    https = f"https://127.0.0.1:{system.env['FLEETREG_COMPAT_PORT']}/.well-known/est/{auto['id']}"
    renew = (
        f"curl -sf --cacert {system.tls_ca} --user {answer['device_id']}:{answer['device_secret']} "
        f"-H 'Content-Type: application/pkcs10' --data-binary @next.b64 {https}/simpleenroll "
        "| base64 -d | openssl pkcs7 -inform DER -print_certs -out next.pem"
    )
    run(renew, tmp_path)
    run("openssl verify -CAfile root.pem -untrusted intermediate.pem next.pem", tmp_path)
    # A CSR of a new key: only the client certificate proves the device (RFC 7030 3.3.2).
    run(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout third.key -subj /CN=x "
        "-outform DER -out third.der && base64 third.der > third.b64",
        tmp_path,
    )
    deadline = time.monotonic() + 5
    reenroll = (
        f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {system.tls_ca} --cert next.pem --key next.key "
        f"-H 'Content-Type: application/pkcs10' --data-binary @third.b64 {https}/simplereenroll"
    )
    while (status := answered(reenroll, tmp_path)) != "200":
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.2)

    # Certificates are out: another CA would orphan their revocations; the same upload
    # again (a retry) changes nothing.
    in_use = await operator.call("PUT", "/v1/account/issuing-ca", new_pki().body(), expect=409)
    assert in_use["error"] == "issuing_ca_in_use" and "/crl" in in_use["message"]
    again = {"certificate": (tmp_path / "chain.pem").read_text(), "private_key": key_text}
    assert await operator.call("PUT", "/v1/account/issuing-ca", again, expect=200) == shown

    # A disable: the CRL lists the certificate, signed by the intermediate.
    await operator.call("POST", f"/v1/devices/{answer['device_id']}/disable", expect=200)
    deadline = time.monotonic() + 1
    while True:
        async with session.get(f"{system.device_url}/v1/accounts/{operator.account_id}/crl") as response:
            assert response.status == 200
            crl = x509.load_der_x509_crl(await response.read())
        assert crl.issuer == intermediate.subject and crl.is_signature_valid(intermediate.public_key())
        if crl.get_revoked_certificate_by_serial_number(device_cert.serial_number) is not None:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    (tmp_path / "crl.der").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    run("openssl crl -inform DER -in crl.der -CAfile chain.pem -noout -verify", tmp_path)

    # Another account: its own self-made CA, untouched.
    other = await new_operator(session, pool, system.operator_url)
    theirs = await other.call("GET", "/v1/account/issuing-ca", expect=200)
    assert theirs["uploaded"] is False and theirs["subject"] == f"CN=fleetreg devices {other.account_id}"
    their_auto = await other.product()
    their_device = await boot(
        session,
        system.device_url,
        their_auto["bulk_identification_code"],
        uuid.uuid4().hex[:12],
        csr_of(p256()),
    )
    assert (
        x509.load_pem_x509_certificate(their_device["certificate"]["pem"].encode()).issuer
        != intermediate.subject
    )
    async with session.get(f"{system.device_url}/.well-known/est/{their_auto['id']}/cacerts") as response:
        assert response.status == 200 and intermediate.subject.rfc4514_string() not in await response.text()

    # A third account may not upload the same intermediate (one issuer name, one CRL); an
    # intermediate of its own is shown as the CLI's table.
    third = await new_operator(session, pool, system.operator_url)
    code, out, err = await fleetreg(
        third, system, "account", "issuing-ca", "--upload", str(tmp_path / "chain.pem"), "--key",
        str(tmp_path / "intermediate.key"),
    )  # fmt: skip
    assert code != 0 and "another account's issuing CA has this subject" in err, (out, err)
    own = new_pki()
    (tmp_path / "third-chain.pem").write_text(own.body()["certificate"])
    (tmp_path / "third.key").write_text(own.body()["private_key"])
    code, out, err = await fleetreg(
        third, system, "account", "issuing-ca", "--upload", str(tmp_path / "third-chain.pem"), "--key",
        str(tmp_path / "third.key"),
    )  # fmt: skip
    assert code == 0 and own.intermediate.subject.rfc4514_string() in out and "fingerprint_sha256" in out, err
    answers.extend((out, err))
    code, out, err = await fleetreg(third, system, "account", "issuing-ca", "--key", "x")
    assert code != 0 and "go together" in err

    # The intermediate's key: in no answer and no log.
    for text in answers:
        assert "PRIVATE KEY" not in text
        assert not [line for line in key_lines if line in text]
    for path in LOGS.glob("*.log"):
        with path.open("rb") as log:
            log.seek(before.get(path, 0))
            written = log.read().decode(errors="replace")
        assert "PRIVATE KEY" not in written, path
        for line in key_lines:
            assert line not in written, path


async def test_hostile_uploads_get_a_4xx_naming_field_and_rule_and_change_nothing(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    before = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    shown = await operator.call("GET", "/v1/account/issuing-ca", expect=200)
    pki = new_pki()
    good = pki.body()
    block = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"
    cases: list[tuple[str, Any, str, str]] = [
        (what, body, field, rule) for what, body, field, rule in hostile_uploads()
    ]
    cases += [
        ("a list", [good], "body", "type=object"),
        ("a string", "certificate", "body", "type=object"),
        ("a number as the certificate", {**good, "certificate": 5}, "certificate", "required"),
        ("an object as the key", {**good, "private_key": {"pem": good["private_key"]}}, "private_key", "required"),
        ("null as the key", {**good, "private_key": None}, "private_key", "required"),
        ("1,000 empty PEM blocks", {**good, "certificate": block * 1000}, "certificate", "malformed"),
        ("NUL bytes", {**good, "certificate": "\x00" * 100}, "certificate", "malformed"),
        ("garbage", {**good, "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
         "private_key", "malformed"),
        ("a chain past the limit", {**good, "certificate": pem(pki.intermediate, *[pki.root] * 9)},
         "certificate", "max_chain=8"),
    ]  # fmt: skip
    headers = {"Authorization": f"Bearer {operator.api_key}"}
    url = f"{system.operator_url}/v1/account/issuing-ca"
    for what, body, field, rule in cases:
        async with session.put(url, json=body, headers=headers) as response:
            answer = await response.json()
            assert response.status == 400, (what, response.status, answer)
        assert (answer["field"], answer["rule"]) == (field, rule), (what, answer)
        assert "PRIVATE KEY" not in json.dumps(answer)
    async with session.put(url, data=b'{"certificate": \x00}', headers=headers) as response:
        assert response.status == 400 and (await response.json())["rule"] == "json"

    # Nothing half-written: the self-made CA, not audited.
    assert await operator.call("GET", "/v1/account/issuing-ca", expect=200) == shown
    events = await operator.call("GET", "/v1/audit-events?action=issuing_ca.uploaded", expect=200)
    assert events["audit_events"] == []
    for path in LOGS.glob("*.log"):
        with path.open("rb") as log:
            log.seek(before.get(path, 0))
            assert "PRIVATE KEY" not in log.read().decode(errors="replace"), path


async def test_an_upload_racing_registrations_with_csrs_leaves_one_ca_per_outcome(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    # Devices boot with CSRs while the operator uploads: either the upload came first and
    # every certificate is the intermediate's, or a certificate was out first (409) and
    # every certificate is the self-made CA's. Never both, never a 5xx.
    auto = await operator.product()
    self_made = await operator.call("GET", "/v1/account/issuing-ca", expect=200)
    pki = new_pki()
    headers = {"Authorization": f"Bearer {operator.api_key}"}

    async def upload() -> int:
        await asyncio.sleep(0.05)
        async with session.put(
            f"{system.operator_url}/v1/account/issuing-ca", json=pki.body(), headers=headers
        ) as response:
            assert response.status in (200, 409), await response.text()
            return response.status

    boots = [
        boot(
            session,
            system.device_url,
            auto["bulk_identification_code"],
            uuid.uuid4().hex[:12],
            csr_of(p256()),
        )
        for _ in range(20)
    ]
    status, *answers = await asyncio.gather(upload(), *boots)
    issuers = {
        x509.load_pem_x509_certificate(a["certificate"]["pem"].encode()).issuer.rfc4514_string()
        for a in answers
    }
    expected = pki.intermediate.subject.rfc4514_string() if status == 200 else self_made["subject"]
    assert issuers == {expected}, status
    shown = await operator.call("GET", "/v1/account/issuing-ca", expect=200)
    assert shown["uploaded"] is (status == 200)
    assert {a["certificate"]["ca_pem"] for a in answers} == {shown["certificate_pem"]}
