"""An x509 device registers on the https listener with its own certificate as the TLS client
certificate, no proxy between (the verified attestation CA is an anchor of that listener,
refreshed at run time: shared/tls.py): the direct path of docs/device-identity.md."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_x509_attestation import verified_ca, x509_registration
from tests.support import x509 as certs
from tests.support.api import Operator
from tests.support.system import System

pytestmark = pytest.mark.e2e


def curl(command: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    # The device's call as the docs write it (the test's own text).
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, check=False)  # noqa: S602


async def test_an_x509_device_registers_over_tls_with_its_certificate(
    session: aiohttp.ClientSession, system: System, operator: Operator, tmp_path: Path
) -> None:
    created = await x509_registration(operator)
    root = certs.ca(f"Maker Root {uuid.uuid4().hex[:6]}")
    hardware_id = f"x5t-{uuid.uuid4().hex[:8]}"
    leaf = certs.device(root, hardware_id)
    (tmp_path / "d.pem").write_text(leaf.pem)
    (tmp_path / "d.key").write_text(leaf.key_pem)
    await verified_ca(operator, created["id"], root)
    body = json.dumps(
        {"bulk_identification_code": created["bulk_identification_code"], "hardware_id": hardware_id}
    )
    url = f"https://127.0.0.1:{system.env['FLEETREG_COMPAT_PORT']}/v1/registrations?include=files"
    command = (
        f"curl -s --cacert {system.tls_ca} --cert d.pem --key d.key -H 'Content-Type: application/json' "
        f"--data '{body}' '{url}'"
    )
    started = time.monotonic()
    while True:
        done = curl(command, tmp_path)
        if done.returncode == 0:
            break
        assert time.monotonic() - started < 10, done.returncode
        await asyncio.sleep(0.2)
    answer = json.loads(done.stdout)
    assert answer.get("status") in ("ready", "pending"), answer
    assert answer["hardware_id"] == hardware_id


async def test_the_wrong_usage_fails_the_handshake_on_the_direct_path(
    session: aiohttp.ClientSession, system: System, operator: Operator, tmp_path: Path
) -> None:
    """OpenSSL's client purpose check refuses a certificate of a verified CA whose keyUsage
    lacks digitalSignature or extendedKeyUsage lacks clientAuth at the handshake: no HTTP
    answer (docs/device-identity.md, "The device's side"); the reasons are a proxy's only."""
    created = await x509_registration(operator)
    root = certs.ca(f"Maker Root {uuid.uuid4().hex[:6]}")
    await verified_ca(operator, created["id"], root)
    url = f"https://127.0.0.1:{system.env['FLEETREG_COMPAT_PORT']}/v1/registrations"

    def call(name: str, leaf: certs.Issued) -> subprocess.CompletedProcess[bytes]:
        (tmp_path / f"{name}.pem").write_text(leaf.pem)
        (tmp_path / f"{name}.key").write_text(leaf.key_pem)
        body = json.dumps(
            {"bulk_identification_code": created["bulk_identification_code"], "hardware_id": name}
        )
        return curl(
            f"curl -s --cacert {system.tls_ca} --cert {name}.pem --key {name}.key "
            f"-H 'Content-Type: application/json' --data '{body}' '{url}'",
            tmp_path,
        )

    started = time.monotonic()  # the CA becomes an anchor within the refresh interval
    while (done := call("good-1", certs.device(root, "good-1"))).returncode != 0:
        assert time.monotonic() - started < 10, done.returncode
        await asyncio.sleep(0.2)
    for name, leaf in (
        ("ku-1", certs.device(root, "ku-1", digital_signature=False)),
        ("eku-1", certs.device(root, "eku-1", client_auth=False)),
    ):
        refused = call(name, leaf)
        assert refused.returncode in (35, 52, 56) and refused.stdout == b"", (name, refused)
