"""Device certificates on the intake: each account's issuing CA kept unsealed in memory
(signing at the registration rate costs no registry read for the key), issuing a
certificate to a proven device, renewal proven by the current certificate's key, the
account's CRL and EST's ``cacerts`` (docs/device-identity.md, "Device certificates").

The CRL is built from the registry (so every instance publishes the same revocations)
and kept until a device of any account is disabled, reset, deleted or moved: those statements
announce ``device:<id>`` on ``fleetreg_invalidate``, which drops every kept CRL
(:meth:`Issuer.invalidate`), and none is kept while the listener is disconnected. A
revocation is therefore in the CRL once the notification is delivered (milliseconds after
the operator's answer: the device cache's bound, docs/architecture.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from cryptography import x509

from shared.batching import Coalescer
from shared.db import certificates as registry
from shared.db.pool import Pool
from shared.domain.certificates import (
    CsrRefused,
    DeviceCertificate,
    IssuingCa,
    certificate_revocation_list,
    device_certificate,
    parse_csr,
    public_key_sha256,
)
from shared.domain.identifiers import is_uuid
from shared.errors import Forbidden, NotFound
from shared.metrics import CSR_REFUSALS, DEVICE_CERTIFICATES_ISSUED

NO_CA = "no such account"
NOT_ISSUED = "the device is disabled, was reset or deleted, or is unknown: no certificate issued"


@dataclass(frozen=True)
class Issued:
    """A certificate just issued (or the current one) and the CA that signed it."""

    certificate: DeviceCertificate
    ca: IssuingCa


class Issuer:
    """The intake's issuing CAs (per account, unsealed once per process), the EST labels'
    accounts, and the CRLs kept until the next revocation signal."""

    def __init__(self, secret_key: bytes, days: int) -> None:
        self._secret_key = secret_key
        self.days = days
        self._cas: dict[str, IssuingCa] = {}
        self._labels: dict[str, str] = {}  # auto registration ID -> account ID (never changes)
        self._crls: dict[str, bytes] = {}
        self._listening = False
        self._lock = asyncio.Lock()
        self._records: Coalescer[registry.CertificateRecord, bool] | None = None

    async def record(self, pool: Pool, record: registry.CertificateRecord) -> bool:
        """Record a certificate just signed (shared.db.certificates.record_certificates): the
        records of concurrent registrations share one statement (shared.batching; a lone one
        is sent at once). The intake has one pool: the first one given is the one used."""
        if self._records is None:
            self._records = Coalescer(partial(registry.record_certificates, pool))
        return await self._records.submit(record)

    def invalidate(self) -> None:
        """A device changed somewhere (``device:`` on fleetreg_invalidate): the next CRL
        fetch of every account is built again."""
        self._crls.clear()

    def listening(self, up: bool) -> None:
        """The invalidation listener's state: while it is down, no CRL is kept."""
        self._listening = up
        self._crls.clear()

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
        """The account's CRL (DER), built from the registry or kept since the last signal."""
        kept = self._crls.get(account_id)
        if kept is not None:
            return kept
        listening = self._listening  # before the read: a signal during it is not missed
        ca = await self.ca(pool, account_id)
        built = certificate_revocation_list(ca, await registry.revoked(pool, account_id))
        if listening and self._listening:
            self._crls[account_id] = built
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
    this runs either waits for the record and revokes it, or leaves nothing recorded)."""
    device = known or await registry.issuing_device(pool, device_id)
    if device is None or device.disabled or not proven(device.credential_generation):
        raise Forbidden(NOT_ISSUED)
    if registration_id is not None and device.registration_id != registration_id:
        raise Forbidden("the device does not belong to this auto registration")
    ca = await issuer.ca(pool, device.account_id)
    issued = device_certificate(ca, csr, device.hardware_id, device_id, issuer.days, datetime.now(UTC))
    if not await issuer.record(
        pool, registry.CertificateRecord(device_id, device.credential_generation, device.hardware_id, issued)
    ):
        raise Forbidden(NOT_ISSUED)
    DEVICE_CERTIFICATES_ISSUED.labels(via).inc()
    return Issued(issued, ca)


async def renew_by_key(
    pool: Pool, issuer: Issuer, label: str, csr: x509.CertificateSigningRequest
) -> Issued | None:
    """A renewal proven by the current certificate's key: the CSR (whose signature proves
    its key) holds the key of an unrevoked, unexpired certificate of an enabled device of
    the label's auto registration; None when none does."""
    account_id = await issuer.label_account(pool, label)
    holder = await registry.holder_of_key(pool, account_id, public_key_sha256(csr))
    if holder is None or holder.registration_id != label:
        return None
    return await issue(
        pool,
        issuer,
        holder.device_id,
        csr,
        lambda g: g == holder.credential_generation,
        via="est_reenroll",
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
    cert = x509.load_der_x509_certificate(found.der)
    return Issued(
        DeviceCertificate(
            found.serial, cert.not_valid_before_utc, found.not_after, public_key_sha256(cert), found.der
        ),
        await issuer.ca(pool, device.account_id),
    )
