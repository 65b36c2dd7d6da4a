"""An x509 auto registration's CAs in the console: created with the x509 attestation, a CA
uploaded (its verification code shown with the openssl to sign it), a forged verification
refused, the real one accepted, a serial revoked and unrevoked, a CRL uploaded, the CA
deleted; every state as the API sees it."""

from __future__ import annotations

import re
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_der_x509_crl
from playwright.async_api import expect

from tests.e2e.console.conftest import Console
from tests.support import x509 as certs
from tests.support.api import Operator


def flash(console: Console) -> Any:
    return console.page.locator(".flash")


async def test_upload_verify_revoke_and_delete_a_ca(console: Console, operator: Operator) -> None:
    page = console.page
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": "Secure Gateway", "services": [{"type": "ssh", "port": 22}]},
        expect=201,
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    await console.open("/console/auto-registrations")
    await page.get_by_label("Product", exact=True).select_option(label="Secure Gateway")
    await page.get_by_label("Attestation").select_option("x509")
    await page.get_by_label("Hardware ID from (X.509 only)").select_option("san:dns")
    await page.get_by_role("button", name="Create auto registration").click()
    await expect(flash(console)).to_contain_text("upload and verify your CA")
    registration_id = re.search(r"/auto-registrations/([0-9a-f-]{36})", page.url)[1]  # type: ignore[index]
    shown = await operator.call("GET", f"/v1/auto-registrations/{registration_id}", expect=200)
    assert shown["attestation"] == "x509" and shown["hardware_id_from"] == "san:dns"
    await expect(page.locator("#cas ~ p").first).to_contain_text("verified")

    root = certs.ca("Console Maker CA")
    await page.get_by_label("CA certificate (PEM").fill(root.pem)
    await page.get_by_role("button", name="Upload the CA").click()
    await expect(flash(console)).to_contain_text("CA uploaded, not verified yet")
    [ca] = (await operator.call("GET", f"/v1/auto-registrations/{registration_id}/cas", expect=200))["cas"]
    code = ca["verification_code"]
    await expect(page.locator(f'[data-verification-code="{ca["id"]}"]')).to_have_text(code)
    await expect(page.locator(f"#ca-{ca['id']}")).to_contain_text("not verified")
    await console.check_accessibility()

    forged = certs.verification(certs.ca("Console Maker CA"), code)
    await page.get_by_label("Verification certificate (PEM)").fill(forged.pem)
    await page.get_by_role("button", name="Verify the CA").click()
    await expect(flash(console)).to_contain_text("not signed by this CA's key")
    await page.get_by_label("Verification certificate (PEM)").fill(certs.verification(root, code).pem)
    await page.get_by_role("button", name="Verify the CA").click()
    await expect(flash(console)).to_contain_text("CA verified")
    await expect(page.locator(f"#ca-{ca['id']}")).to_contain_text("verified")
    assert (await operator.call("GET", f"/v1/attestation-cas/{ca['id']}", expect=200))["verified"] is True

    await page.get_by_label("Serial to revoke (hex)").fill("0A:1B")
    await page.get_by_role("button", name="Revoke", exact=True).click()
    await expect(flash(console)).to_contain_text("Serial revoked")
    await expect(page.locator(f"#ca-{ca['id']}")).to_contain_text("a1b")
    await page.get_by_role("button", name="Unrevoke").click()
    await expect(flash(console)).to_contain_text("no longer revoked")
    der = certs.crl(root, [0xA1B])
    pem = load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM).decode()
    await page.get_by_label("CRL (PEM").fill(pem)
    await page.get_by_role("button", name="Upload the CRL").click()
    await expect(flash(console)).to_contain_text("CRL uploaded")
    after = await operator.call("GET", f"/v1/attestation-cas/{ca['id']}", expect=200)
    assert after["crl"] is not None and after["revoked_serials"] == []
    await console.check_accessibility()

    await page.get_by_label("I understand its devices stop registering").check()
    await page.get_by_role("button", name="Delete the CA").click()
    await expect(flash(console)).to_contain_text("CA deleted")
    assert (await operator.call("GET", f"/v1/auto-registrations/{registration_id}/cas", expect=200))[
        "cas"
    ] == []
