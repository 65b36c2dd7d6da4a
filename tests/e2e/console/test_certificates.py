"""The console's part of device certificates: the account's CA on the home page (to hand
to the services that authenticate devices) and a device's certificate, then its
revocation, on the device's page."""

from __future__ import annotations

import uuid

import aiohttp
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID
from playwright.async_api import expect

from tests.e2e.console.conftest import Console
from tests.support.pki import new_pki, pem
from tests.support.system import System


def csr() -> str:
    request = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, "console")]))
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


async def test_the_ca_is_on_the_home_page_and_a_certificate_on_its_device_page(
    console: Console, session: aiohttp.ClientSession, system: System
) -> None:
    ca = await console.operator.call("GET", "/v1/account/issuing-ca", expect=200)
    await console.open("/console/")
    await expect(console.page.locator("#issuing-ca-pem")).to_contain_text(
        ca["certificate_pem"].splitlines()[1]
    )
    await expect(console.page.locator("#issuing-ca-origin")).to_contain_text(
        "fleetreg account issuing-ca --upload"
    )
    await console.check_accessibility()

    auto = await console.operator.product()
    body = {
        "bulk_identification_code": auto["bulk_identification_code"],
        "hardware_id": uuid.uuid4().hex[:12],
    }
    async with session.post(f"{system.device_url}/v1/registrations", json={**body, "csr": csr()}) as response:
        answer = await response.json()
    serial = answer["certificate"]["serial"]
    await console.open(f"/console/devices/{answer['device_id']}")
    await expect(console.page.locator("#device-certificate")).to_contain_text(serial)
    await console.page.get_by_role("button", name="Disable").click()
    await expect(console.page.locator("#device-certificate")).to_contain_text("revoked")


async def test_the_home_page_says_when_the_ca_is_an_uploaded_intermediate(console: Console) -> None:
    pki = new_pki()
    uploaded = await console.operator.call("PUT", "/v1/account/issuing-ca", pki.body(), expect=200)
    await console.open("/console/")
    origin = console.page.locator("#issuing-ca-origin")
    await expect(origin).to_contain_text("An intermediate of your own PKI, uploaded")
    await expect(origin).to_contain_text(uploaded["fingerprint_sha256"])
    await expect(console.page.locator("#issuing-ca-pem")).to_contain_text(
        pem(pki.root).splitlines()[1]  # the chain above it too
    )
    assert "PRIVATE KEY" not in await console.page.content()
