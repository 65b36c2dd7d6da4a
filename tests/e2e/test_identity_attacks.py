"""Issue 25's per-device identity attacked from outside (item 4): findings of the outside
tester that the existing e2e tests of derived keys and device certificates did not cover.

* A wrong device secret sent through EST (HTTP Basic) counts on the (source, device) pair
  as one sent through the native API does (docs/security.md, "Counted per source and per
  what was guessed": the device ID is the target of a wrong secret), not on the source
  alone: from one address, one device's secret is guessed at 10 a minute on either path.
* ``simplereenroll`` without credentials renewed for anyone who replays a captured CSR,
  each call a new certificate row and signature, never counted; now it renews once two
  thirds of the current certificate's validity have passed and answers the current one
  before (docs/device-identity.md, "EST").
* The certificate call names an unknown field as every JSON body does (``known_fields``).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from shared.db.pool import Pool
from tests.support.api import Operator
from tests.support.sources import fresh_address, from_address
from tests.support.system import ServiceProcess, System

pytestmark = pytest.mark.e2e

PKCS10 = {"Content-Type": "application/pkcs10"}


def csr_der_b64(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")]))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def boot(session: aiohttp.ClientSession, url: str, code: str, csr: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"bulk_identification_code": code, "hardware_id": uuid.uuid4().hex[:12]}
    if csr is not None:
        body["csr"] = csr
    async with session.post(f"{url}/v1/registrations?include=files", json=body) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
    return answer


@pytest.fixture(scope="module")
async def pair_intake(system: System) -> AsyncIterator[ServiceProcess]:
    """An intake whose per-target allowance (3) is well below its per-source one (100), so
    a refusal counted on the source alone is told apart from one counted on its pair."""
    env = {
        "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "100/minute",
        "FLEETREG_LIMIT_REFUSALS_PER_TARGET": "3/minute",
    }
    async with system.instance("intake", env) as process:
        yield process


async def test_a_wrong_secret_through_est_counts_on_the_devices_pair(
    session: aiohttp.ClientSession, pair_intake: ServiceProcess, operator: Operator
) -> None:
    auto = await operator.product()
    device = await boot(session, pair_intake.url, auto["bulk_identification_code"])
    est = f"{pair_intake.url}/.well-known/est/{auto['id']}/simpleenroll"
    csr = csr_der_b64(ec.generate_private_key(ec.SECP256R1()))
    wrong = {**PKCS10, "Authorization": basic(device["device_id"], secrets.token_hex(32))}
    async with from_address(fresh_address()) as guesser:
        statuses = []
        for _ in range(5):
            async with guesser.post(est, data=csr, headers=wrong) as response:
                statuses.append(response.status)
                last = await response.json()
        assert statuses == [401, 401, 401, 429, 429], statuses
        assert last["rule"] == "refusals_per_target", last
        # Another device's wrong secret from the same address is its own pair: answered.
        other = await boot(session, pair_intake.url, auto["bulk_identification_code"])
        headers = {**PKCS10, "Authorization": basic(other["device_id"], secrets.token_hex(32))}
        async with guesser.post(est, data=csr, headers=headers) as response:
            assert response.status == 401
        # The device's own secret from that address still enrolls (it proves something).
        right = {**PKCS10, "Authorization": basic(device["device_id"], device["device_secret"])}
        async with guesser.post(est, data=csr, headers=right) as response:
            assert response.status == 200, await response.text()


async def test_an_unknown_field_of_the_certificate_call_is_named(
    session: aiohttp.ClientSession, system: System, operator: Operator
) -> None:
    auto = await operator.product()
    device = await boot(session, system.device_url, auto["bulk_identification_code"])
    csr = csr_der_b64(ec.generate_private_key(ec.SECP256R1()))
    async with session.post(
        f"{system.device_url}/v1/devices/{device['device_id']}/certificate",
        json={"csr": csr, "subject": "CN=someone-else"},
        headers={"Authorization": f"Bearer {device['device_secret']}"},
    ) as response:
        answer = await response.json()
        assert response.status == 400
        assert (answer["field"], answer["rule"]) == ("subject", "known_fields"), answer


async def test_a_replayed_csr_renews_once_per_two_thirds_of_a_validity(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool
) -> None:
    """A captured CSR (a proxy log, a debug dump) proves its key to ``simplereenroll``
    without credentials, but not when it was made: replayed 20 times from a stranger's
    address it once wrote and signed 20 certificates (164 a second from one address in the
    attack, every one revoked into the CRL at the device's next reset). Now, before two
    thirds of the current certificate's validity, the current one is answered again."""
    auto = await operator.product()
    captured = csr_der_b64(ec.generate_private_key(ec.SECP256R1()))
    device = await boot(session, system.device_url, auto["bulk_identification_code"], captured)
    first = device["certificate"]["serial"]
    renew = f"{system.device_url}/.well-known/est/{auto['id']}/simplereenroll"

    async def replay(replayer: aiohttp.ClientSession) -> int:
        async with replayer.post(renew, data=captured, headers=PKCS10) as response:
            assert response.status == 200, await response.text()
            (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(await response.read()))
            return cert.serial_number

    async def rows() -> int:
        query = "SELECT count(*) FROM device_certificates WHERE device_id = $1"
        return int(await pool.fetchval(query, uuid.UUID(device["device_id"])))

    async with from_address(fresh_address()) as replayer:
        serials = {await replay(replayer) for _ in range(20)}
        assert serials == {int(first, 16)}  # the current certificate, again
        assert await rows() == 1
        # Two thirds of its validity later, the same CSR renews: once.
        await pool.execute(
            "UPDATE device_certificates SET issued_at = now() - interval '300 days', "
            "not_after = now() + interval '65 days' WHERE device_id = $1",
            uuid.UUID(device["device_id"]),
        )
        renewed = {await replay(replayer) for _ in range(5)}
        assert len(renewed) == 1 and renewed != {int(first, 16)}
        assert await rows() == 2


async def test_a_device_secret_buys_at_most_the_cap_of_certificates_and_a_reclaim_no_more(
    session: aiohttp.ClientSession, system: System, operator: Operator, pool: Pool
) -> None:
    """The outside tester's loop: 10 parallel loops of POST /certificate wrote 3,197
    certificates in 20 s from one address, all revoked into the CRL by a reclaim. Now a
    burst of 30 at once (native and EST) records the cap (FLEETREG_MAX_CERTIFICATES_PER_DEVICE,
    10, the registration's included) and answers the rest 409 ``certificate_limit``."""
    auto = await operator.product()
    device = await boot(
        session,
        system.device_url,
        auto["bulk_identification_code"],
        csr_der_b64(ec.generate_private_key(ec.SECP256R1())),
    )
    native = f"{system.device_url}/v1/devices/{device['device_id']}/certificate"
    est = f"{system.device_url}/.well-known/est/{auto['id']}/simpleenroll"
    bearer = {"Authorization": f"Bearer {device['device_secret']}"}
    est_auth = {**PKCS10, "Authorization": basic(device["device_id"], device["device_secret"])}

    async def ask(index: int) -> tuple[int, dict[str, Any] | None]:
        csr = csr_der_b64(ec.generate_private_key(ec.SECP256R1()))
        if index % 2:
            async with session.post(est, data=csr, headers=est_auth) as response:
                body = await response.json() if response.status != 200 else None
                return response.status, body
        async with session.post(native, json={"csr": csr}, headers=bearer) as response:
            return response.status, await response.json()

    answers = await asyncio.gather(*(ask(i) for i in range(30)))
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 9 + [409] * 21, statuses
    refused = next(body for status, body in answers if status == 409)
    assert refused is not None and refused["error"] == "certificate_limit", refused
    assert refused["rule"] == "max_certificates_per_device=10" and refused["available_at"]
    query = "SELECT count(*) FROM device_certificates WHERE device_id = $1"
    assert await pool.fetchval(query, uuid.UUID(device["device_id"])) == 10
    # The device still downloads its current certificate.
    async with session.get(native, headers=bearer) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
async def strict_intake(system: System) -> AsyncIterator[ServiceProcess]:
    """An intake allowing 3 refused calls a minute per source."""
    env = {
        "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "3/minute",
        "FLEETREG_LIMIT_REFUSALS_PER_TARGET": "100/minute",
    }
    async with system.instance("intake", env) as process:
        yield process


async def _statuses(calls: int, call: Any) -> list[int]:
    return [await call() for _ in range(calls)]


async def test_malformed_proofs_wrong_est_types_and_foreign_labels_count_as_refusals(
    session: aiohttp.ClientSession, strict_intake: ServiceProcess, operator: Operator
) -> None:
    """Each was answered (400, 415, 403) but never counted, so never 429: a malformed proof,
    an EST body of another type, and a proven device asking under another registration's
    EST label (which told an existing label from an unknown one's counted 404)."""
    auto, other = await operator.product(), await operator.product()
    code = auto["bulk_identification_code"]
    device = await boot(session, strict_intake.url, code)
    csr = csr_der_b64(ec.generate_private_key(ec.SECP256R1()))
    own = f"{strict_intake.url}/.well-known/est/{auto['id']}/simpleenroll"
    foreign = f"{strict_intake.url}/.well-known/est/{other['id']}/simpleenroll"
    auth = basic(device["device_id"], device["device_secret"])

    async def malformed_proof() -> int:
        body = {"bulk_identification_code": code, "hardware_id": "h1", "proof": {"expires": "soon"}}
        async with prober.post(f"{strict_intake.url}/v1/registrations", json=body) as response:
            return response.status

    async def wrong_type() -> int:
        headers = {"Content-Type": "text/plain", "Authorization": auth}
        async with prober.post(own, data=csr, headers=headers) as response:
            return response.status

    async def foreign_label() -> int:
        async with prober.post(foreign, data=csr, headers={**PKCS10, "Authorization": auth}) as response:
            return response.status

    for call, status in ((malformed_proof, 400), (wrong_type, 415), (foreign_label, 403)):
        async with from_address(fresh_address()) as prober:
            assert await _statuses(5, call) == [status] * 3 + [429] * 2, call.__name__
            # The device proving itself from that address still enrolls under its own label.
            async with prober.post(own, data=csr, headers={**PKCS10, "Authorization": auth}) as response:
                assert response.status == 200, await response.text()
