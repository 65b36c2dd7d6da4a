"""Device certificates on the intake: each account's issuing CA kept unsealed in memory
(signing at the registration rate costs no registry read for the key), issuing a
certificate to a proven device, renewal proven by the current certificate's key, the
account's CRL and EST's ``cacerts`` (docs/device-identity.md, "Device certificates").

An account's CA is kept until ``issuer:<account ID>`` on ``fleetreg_invalidate`` (an operator
uploaded an intermediate: :meth:`Issuer.replaced`) or a reconnection of the listener; an
issuance with a CA kept too long signs nothing (the registry compares it under the lock an
upload takes) and reads the CA again.

The CRL is built from the registry (so every instance publishes the same revocations)
and kept until a certificate of its account is revoked (a disable, reset, delete, move or
reclaim before "ready"): the revoking statement announces ``crl:<account ID>`` on
``fleetreg_invalidate``, which drops that account's kept CRL only
(:meth:`Issuer.invalidate`; dropping every account's at any device's change rebuilt a
5,700-entry CRL at each, stalling unrelated calls 0.2-0.4 s). None is kept while the
listener is disconnected, nor longer than :data:`CRL_KEPT_SECONDS` (its entries expire,
and its nextUpdate must stay ahead). A revocation is therefore in the CRL once the
notification is delivered (milliseconds after the operator's answer: the device cache's
bound, docs/architecture.md).

Each device holds at most ``max_per_device`` unexpired certificates, revoked or not
(:class:`CertificateLimit`): a device secret, which anyone with a ``code`` factory image
can get, otherwise wrote certificates without bound, all of them in the CRL after a
reclaim (3,197 in 20 s from one address: a 302 KB CRL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from shared.db import certificates as registry
from shared.db.pool import Pool
from shared.domain.certificates import (
    MAX_CERTIFICATES_PER_DEVICE_DEFAULT,
    CsrRefused,
    DeviceCertificate,
    IssuingCa,
    certificate_revocation_list,
    device_certificate,
    parse_csr,
    public_key_sha256,
)
from shared.domain.identifiers import is_uuid
from shared.domain.refusals import ReasonCode
from shared.errors import Conflict, Forbidden, NotFound
from shared.metrics import CERTIFICATE_LIMIT_REFUSALS, CSR_REFUSALS, DEVICE_CERTIFICATES_ISSUED

NO_CA = "no such account"
NOT_ISSUED = "the device is disabled, was reset or deleted, or is unknown: no certificate issued"
# How long a CRL is kept without a signal: its expired entries leave within this, and its
# nextUpdate (an hour after it is built) is never less than 55 minutes ahead.
CRL_KEPT_SECONDS = 300.0


class CertificateLimit(Conflict):
    """The device holds ``held`` unexpired certificates (revoked or not), at least
    FLEETREG_MAX_CERTIFICATES_PER_DEVICE (``limit``): nothing is signed or recorded.

    409, not 429: the refusal is about what the device holds, not how fast it asks. It
    lasts until its oldest certificates expire (``available_at``, months away with the
    default validity), so a client's or proxy's automatic retry after a 429 would only
    hammer; and every certificate, revoked or not, ends in the account's CRL, so no rate
    may refill it. Not counted against the caller's address either: the call proved the
    device secret. The device keeps using its current certificate
    (``GET /v1/devices/{id}/certificate``); an operator whose devices need more (many
    resets in one validity) raises the setting."""

    code = "certificate_limit"

    def __init__(self, held: int, limit: int, available_at: datetime) -> None:
        super().__init__(
            f"the device holds {held} unexpired certificates (revoked ones too: each is in the "
            f"account's CRL until it expires), the limit: use its current certificate "
            f"(GET /v1/devices/{{device_id}}/certificate), or ask again after "
            f"{available_at.isoformat()}, when enough of them expire; an operator may raise "
            f"FLEETREG_MAX_CERTIFICATES_PER_DEVICE",
            field="csr",
            rule=f"max_certificates_per_device={limit}",
        )
        self.available_at = available_at

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "available_at": self.available_at.isoformat()}


class NotThisRegistration(Forbidden):
    """A proven device asked under an EST label (an auto registration) that is not its
    own (403): counted against the caller's source as an unknown label's 404 is, so a
    device secret does not tell labels that exist from those that do not, uncounted."""

    reason_code = ReasonCode.OTHER_REGISTRATION


class CertificateRefused(Forbidden):
    """A client certificate that proves no device here (403): ``rule`` the reason, one of
    unknown_issuer, unknown_serial, revoked, expired, not_yet_valid, disabled,
    other_registration (the route counts it in ``fleetreg_client_certificate_refusals_total``)."""

    code = "certificate_refused"

    def __init__(self, reason: str, message: str) -> None:
        # A disabled device's certificate: the device waits for the operator's enable.
        code = ReasonCode.DISABLED if reason == "disabled" else ReasonCode.CERTIFICATE_REFUSED
        super().__init__(message, field="client_certificate", rule=reason, reason_code=code)
        self.reason = reason


@dataclass(frozen=True)
class Issued:
    """A certificate just issued (or the current one) and the CA that signed it."""

    certificate: DeviceCertificate
    ca: IssuingCa


class Issuer:
    """The intake's issuing CAs (per account, unsealed once per process), the EST labels'
    accounts, the CRLs kept until their account's next revocation signal, and the cap of
    unexpired certificates per device (``max_per_device``)."""

    def __init__(
        self, secret_key: bytes, days: int, max_per_device: int = MAX_CERTIFICATES_PER_DEVICE_DEFAULT
    ) -> None:
        self._secret_key = secret_key
        self.days = days
        self.max_per_device = max_per_device
        self._cas: dict[str, IssuingCa] = {}
        self._labels: dict[str, str] = {}  # auto registration ID -> account ID (never changes)
        self._crls: dict[str, tuple[float, bytes]] = {}  # account ID -> (built at, monotonic; DER)
        # Of the signals (per account; ``_epoch`` for the listener's state): a CRL read or
        # built across one is not kept.
        self._generations: dict[str, int] = {}
        self._epoch = 0
        self._listening = False
        self._lock = asyncio.Lock()

    def apply(self, payload: str) -> None:
        """A ``fleetreg_invalidate`` payload: ``crl:<account ID>`` drops that account's CRL;
        ``issuer:<account ID>`` (an operator uploaded its issuing CA) its kept CA and CRL;
        any other is not about certificates."""
        if payload.startswith("crl:"):
            self.invalidate(payload.removeprefix("crl:").strip().lower())
        elif payload.startswith("issuer:"):
            self.replaced(payload.removeprefix("issuer:").strip().lower())

    def replaced(self, account_id: str) -> None:
        """The account's issuing CA was replaced: read (and unseal) it again, and build its
        CRL with it."""
        self._cas.pop(account_id, None)
        self.invalidate(account_id)

    def invalidate(self, account_id: str) -> None:
        """A certificate of the account was revoked: its next CRL fetch is built again
        (every other account's kept CRL stays)."""
        self._generations[account_id] = self._generations.get(account_id, 0) + 1
        self._crls.pop(account_id, None)

    def listening(self, up: bool) -> None:
        """The invalidation listener's state: while it is down, no CRL is kept."""
        self._listening = up
        self._epoch += 1
        self._crls.clear()
        # An ``issuer:`` signal may have been missed: read every CA again (an issuance
        # with a stale one signs nothing anyway: the registry compares it).
        self._cas.clear()

    async def ca(self, pool: Pool, account_id: str) -> IssuingCa:
        """The account's issuing CA (created on first use); NotFound for no such account."""
        found = self._cas.get(account_id)
        if found is not None:
            return found
        if not is_uuid(account_id):
            raise NotFound(NO_CA, field="account_id")
        async with self._lock:  # one creation (and one unsealing) per process
            found = self._cas.get(account_id)
            if found is None:
                found = await registry.issuing_ca(pool, self._secret_key, account_id)
                if found is None:
                    raise NotFound(NO_CA, field="account_id")
                self._cas[account_id] = found
        return found

    async def label_account(self, pool: Pool, label: str) -> str:
        """The account of an EST label (an auto registration's ID); NotFound otherwise."""
        account_id = self._labels.get(label)
        if account_id is None:
            account_id = await registry.auto_registration_account(pool, label) if is_uuid(label) else None
            if account_id is None:
                raise NotFound("no auto registration with this ID", field="label")
            self._labels[label] = account_id
        return account_id

    async def crl(self, pool: Pool, account_id: str) -> bytes:
        """The account's CRL (DER), built from the registry or kept since its last signal
        (at most CRL_KEPT_SECONDS)."""
        kept = self._crls.get(account_id)
        if kept is not None and time.monotonic() - kept[0] < CRL_KEPT_SECONDS:
            return kept[1]
        # Before the read: a signal during the read or the build is not missed.
        state = (self._listening, self._epoch, self._generations.get(account_id, 0))
        built_at = time.monotonic()
        ca = await self.ca(pool, account_id)
        # Off the event loop: a CRL of 40,000 entries takes about 0.4 s to build, which
        # stalled every call of this intake; in a thread only its signing holds the loop.
        built = await asyncio.to_thread(
            certificate_revocation_list, ca, await registry.revoked(pool, account_id)
        )
        if state == (True, self._epoch, self._generations.get(account_id, 0)) and self._listening:
            self._crls[account_id] = (built_at, built)
        return built


def checked_csr(text: str) -> x509.CertificateSigningRequest:
    """The CSR of a call (PEM or base64 DER), checked; CsrRefused (400) with its reason,
    counted in ``fleetreg_csr_refusals_total``."""
    try:
        return parse_csr(text)
    except CsrRefused as exc:
        CSR_REFUSALS.labels(exc.reason).inc()
        raise


async def issue(
    pool: Pool,
    issuer: Issuer,
    device_id: str,
    csr: x509.CertificateSigningRequest,
    proven: Callable[[int], bool],
    *,
    via: str,
    registration_id: str | None = None,
    known: registry.IssuingDevice | None = None,
) -> Issued:
    """Sign the CSR's key for the device (its assigned hardware ID as subject) and record
    the certificate. ``proven(generation)``: whether the caller proved the device's
    credentials of that generation (its current one is read here); ``registration_id``:
    the auto registration the device must belong to (an EST label); ``via``: the
    metric's label; ``known``: the device as the caller knows it (its registration's
    outcome), read otherwise. Forbidden (403) when the device is unknown, disabled, elsewhere, or
    no longer at the proven generation (a reset, a disable or a delete that commits while
    this runs either waits for the record and revokes it, or leaves nothing recorded);
    CertificateLimit (409) when it holds ``issuer.max_per_device`` unexpired certificates
    (nothing signed), decided under the device row's lock in Postgres."""
    device = known or await registry.issuing_device(pool, device_id)
    if device is None or device.disabled or not proven(device.credential_generation):
        raise Forbidden(NOT_ISSUED, reason_code=ReasonCode.NOT_ISSUED)
    if registration_id is not None and device.registration_id != registration_id:
        raise NotThisRegistration("the device does not belong to this auto registration")
    for _ in range(2):  # once more after an upload replaced the CA this instance kept
        ca = await issuer.ca(pool, device.account_id)
        recorded = await registry.record_certificate(
            pool,
            device_id,
            device.credential_generation,
            device.hardware_id,
            partial(device_certificate, ca, csr, device.hardware_id, device_id, issuer.days),
            issuer.max_per_device,
            ca.der,
        )
        if not isinstance(recorded, registry.StaleCa):
            break
        issuer.replaced(device.account_id)
    if recorded is None or isinstance(recorded, registry.StaleCa):
        raise Forbidden(NOT_ISSUED, reason_code=ReasonCode.NOT_ISSUED)
    if isinstance(recorded, registry.AtCertificateLimit):
        CERTIFICATE_LIMIT_REFUSALS.labels(via).inc()
        raise CertificateLimit(recorded.held, issuer.max_per_device, recorded.frees_at)
    DEVICE_CERTIFICATES_ISSUED.labels(via).inc()
    return Issued(recorded, ca)


async def renew_by_key(
    pool: Pool, issuer: Issuer, label: str, csr: x509.CertificateSigningRequest
) -> Issued | None:
    """A renewal proven by the current certificate's key: the CSR (whose signature proves
    its key) holds the key of an unrevoked, unexpired certificate of an enabled device of
    the label's auto registration; None when none does. Before two thirds of that
    certificate's validity have passed it is answered again, nothing signed or written: a
    CSR proves its key but not when it was made, so a captured one replayed renews at most
    once per two thirds of a validity, not at every call."""
    account_id = await issuer.label_account(pool, label)
    holder = await registry.holder_of_key(pool, account_id, public_key_sha256(csr))
    if holder is None or holder.registration_id != label:
        return None
    held = holder.certificate
    if datetime.now(UTC) < held.issued_at + (held.not_after - held.issued_at) * 2 / 3:
        return Issued(_stored(held), await issuer.ca(pool, account_id))
    return await issue(
        pool,
        issuer,
        holder.device_id,
        csr,
        lambda g: g == holder.credential_generation,
        via="est_reenroll",
        registration_id=label,
    )


def issued_by(certificate: x509.Certificate, ca: IssuingCa) -> bool:
    """Whether ``certificate`` names ``ca`` as its issuer and carries its signature (a
    proxy's header is verified here, not in any handshake: shared/client_certs.py)."""
    if certificate.issuer != ca.certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


async def issue_by_certificate(
    pool: Pool,
    issuer: Issuer,
    label: str,
    presented: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    *,
    via: str,
) -> Issued:
    """A certificate of the CSR's key for the device whose current certificate the client
    presented (RFC 7030 section 3.3.2, certificate-based client authentication): issued by
    the label's account's CA (checked here, whatever verified the handshake), recorded for
    a device of the label's auto registration under that serial and byte for byte, not
    revoked, within its validity, the device enabled. The new certificate's subject is the
    device's assigned hardware ID, as always. CertificateRefused (403) naming the reason."""
    account_id = await issuer.label_account(pool, label)
    ca = await issuer.ca(pool, account_id)
    if not issued_by(presented, ca):
        raise CertificateRefused(
            "unknown_issuer",
            "the client certificate is not issued by this auto registration's account CA "
            "(EST cacerts names it)",
        )
    found = await registry.certificate_by_serial(pool, account_id, format(presented.serial_number, "x"))
    if found is None or found.der != presented.public_bytes(Encoding.DER):
        raise CertificateRefused("unknown_serial", "the client certificate was not issued to a device here")
    now = datetime.now(UTC)
    if found.revoked_at is not None or found.registration_id is None:
        raise CertificateRefused(
            "revoked", "the client certificate is revoked: enroll with the device secret"
        )
    if presented.not_valid_before_utc > now:
        raise CertificateRefused("not_yet_valid", "the client certificate is not valid yet: check the clock")
    if found.not_after <= now:
        raise CertificateRefused(
            "expired", "the client certificate has expired: enroll with the device secret"
        )
    if found.disabled:
        raise CertificateRefused("disabled", "the device is disabled")
    if found.registration_id != label:
        raise CertificateRefused(
            "other_registration", "the client certificate's device does not belong to this auto registration"
        )
    return await issue(
        pool,
        issuer,
        found.device_id,
        csr,
        lambda g: g == found.credential_generation,
        via=via,
        registration_id=label,
    )


async def current(pool: Pool, issuer: Issuer, device_id: str) -> Issued:
    """The device's current certificate (its newest, unrevoked and unexpired); NotFound
    otherwise."""
    device = await registry.issuing_device(pool, device_id)
    found = await registry.current_certificate(pool, device_id)
    if (
        device is None
        or found is None
        or found.revoked_at is not None
        or found.not_after <= datetime.now(UTC)
    ):
        raise NotFound("the device has no current certificate: send a CSR", field="device_id")
    return Issued(_stored(found), await issuer.ca(pool, device.account_id))


def _stored(found: registry.IssuedCertificate) -> DeviceCertificate:
    cert = x509.load_der_x509_certificate(found.der)
    return DeviceCertificate(
        found.serial, cert.not_valid_before_utc, found.not_after, public_key_sha256(cert), found.der
    )
