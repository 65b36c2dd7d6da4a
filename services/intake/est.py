"""EST (RFC 7030) on the intake, under the label of an auto registration
(``/.well-known/est/<auto registration ID>/...``): ``cacerts``, ``simpleenroll`` and
``simplereenroll``. Free of HTTP like the handlers (the routes hand in the header and
the body's text).

Authentication (RFC 7030 section 3.2.3, HTTP-based client authentication): HTTP Basic,
the user ID the device ID and the password its device secret, checked exactly as the
native API's bearer secret (:func:`services.intake.handlers.authenticate`: the same
stale-credential and throttling rules). Basic because it is the scheme the RFC names and
every EST client (curl ``--user``, libest, estclient) sends; the native API's Bearer
carries no device ID, which EST's path has no room for.

Without Basic credentials, the device's **current certificate** authenticates
``simplereenroll`` and ``simpleenroll`` (RFC 7030 section 3.3.2, certificate-based client
authentication; 4.2.1 allows a certificate of the EST CA on ``simpleenroll`` too): presented
as the TLS client certificate on the https listener, or by a trusted proxy
(shared/client_certs.py), and checked by
:func:`services.intake.certificates.issue_by_certificate`. A certificate of another CA is
no proof here; ``simplereenroll`` then (and without any certificate) falls back to the
current certificate's key: a CSR (whose signature proves its key) of the key of an
unrevoked, unexpired certificate of a device of the label's registration renews that
device's certificate once two thirds of its validity have passed, and answers it again
before (:func:`services.intake.certificates.renew_by_key`: a CSR can be replayed, a
handshake cannot)."""

from __future__ import annotations

import base64
import binascii

from cryptography import x509

from services.intake import certificates, handlers
from services.intake.certificates import CertificateRefused, Issued
from services.intake.handlers import Intake
from shared.domain.certificates import IssuingCa
from shared.errors import Unauthorized

EST_REALM = "fleetreg EST"
NO_CREDENTIALS = (
    "send the device ID and device secret with HTTP Basic authentication "
    "(curl --user DEVICE_ID:DEVICE_SECRET), or the device's current certificate as the TLS "
    "client certificate on the https listener"
)
NO_CURRENT_KEY = (
    "the CSR's key is not the key of a current certificate of this auto registration's devices: "
    "send the device ID and device secret with HTTP Basic authentication"
)


class EstUnauthorized(Unauthorized):
    """A 401 whose challenge is HTTP Basic (RFC 7617), as RFC 7030 section 3.2.3 asks."""

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Basic realm="{self.realm}", charset="UTF-8"'}


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """The (device ID, device secret) of an ``Authorization: Basic`` header; None without
    a header; EstUnauthorized (counted) for one that is not Basic or not decodable."""
    if authorization is None or not authorization.strip():
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise EstUnauthorized(NO_CREDENTIALS, realm=EST_REALM)
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise EstUnauthorized(NO_CREDENTIALS, realm=EST_REALM) from exc
    device_id, colon, secret = decoded.partition(":")
    if not colon or not device_id or not secret:
        raise EstUnauthorized(NO_CREDENTIALS, realm=EST_REALM)
    return device_id, secret


async def cacerts(r: Intake, label: str) -> IssuingCa:
    """The issuing CA of the label's account (created on first use); NotFound (404) for a
    label that is no auto registration."""
    return await r.issuer.ca(r.pool, await r.issuer.label_account(r.pool, label))


async def enroll(
    r: Intake,
    label: str,
    authorization: str | None,
    csr_text: str,
    *,
    renewal: bool,
    presented: x509.Certificate | None = None,
) -> Issued:
    """``simpleenroll`` (``renewal`` False) or ``simplereenroll``: a certificate of the CSR's
    key for the device the call proves, which must belong to the label's auto registration.
    ``presented``: the client certificate (shared/client_certs.py), read only without Basic
    credentials.

    NotFound (404) for an unknown label; EstUnauthorized (401, Basic challenge) without a
    proof (not counted when nothing was presented) or with a wrong one (counted);
    CsrRefused (400); Forbidden (403) for a disabled device or another registration's;
    CertificateRefused (403) for a client certificate of the account's CA that proves no
    enabled device of the label now (revoked, expired, ...), or one of another CA when no
    other proof is left."""
    await r.issuer.label_account(r.pool, label)
    credentials = basic_credentials(authorization)
    if credentials is None:
        if presented is None and not renewal:
            raise EstUnauthorized(NO_CREDENTIALS, realm=EST_REALM, presented=False)
        csr = certificates.checked_csr(csr_text)
        refused: CertificateRefused | None = None
        if presented is not None:
            via = "est_reenroll" if renewal else "est_enroll"
            try:
                return await certificates.issue_by_certificate(
                    r.pool, r.issuer, label, presented, csr, via=via
                )
            except CertificateRefused as exc:
                if exc.reason != "unknown_issuer" or not renewal:
                    raise
                refused = exc  # another CA's certificate: the CSR's key may still prove the device
        issued = await certificates.renew_by_key(r.pool, r.issuer, label, csr)
        if issued is None:
            raise refused or EstUnauthorized(NO_CURRENT_KEY, realm=EST_REALM)
        return issued
    device_id, secret = credentials
    try:
        device = await handlers.authenticate(
            r.pool,
            r.keyring,
            device_id,
            f"Bearer {secret}",
            r.devices,
            r.settings.throttle.stale_credential_seconds,
        )
    except Unauthorized as exc:
        raise EstUnauthorized(
            exc.message, realm=EST_REALM, counted=exc.counted, code=exc.code, reason_code=exc.reason_code
        ) from exc
    csr = certificates.checked_csr(csr_text)
    return await certificates.issue(
        r.pool,
        r.issuer,
        device.id,
        csr,
        lambda g: g == device.credential_generation,
        via="est_reenroll" if renewal else "est_enroll",
        registration_id=label,
    )
