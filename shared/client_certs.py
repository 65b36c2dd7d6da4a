"""The client certificate of a request, from where a device's TLS connection ends: this
process's https listener, or a TLS-terminating proxy listed in FLEETREG_TRUSTED_PROXIES
(docs/device-identity.md, "Client certificates on the https listener"; docs/operations.md,
"Client certificates behind a proxy").

* **TLS** (``via="tls"``): the certificate the client presented in the handshake of the
  intake's https listener, which OpenSSL verified against the listener's anchors
  (shared/tls.py: chains to SOME anchor, validity times not checked) and whose key the
  client proved. Python 3.11 exposes the leaf only, so ``chain`` is empty.
* **A trusted proxy** (``via="proxy"``): a header the operator names in
  FLEETREG_CLIENT_CERT_HEADER (off by default; ``X-Client-Cert`` in the docs), holding the
  client's certificate as URL-encoded PEM (RFC 3986 percent-encoding), the leaf first,
  then any chain certificates, as PEM blocks one after another. That is what nginx's
  ``$ssl_client_escaped_cert`` (the leaf), Envoy's ``%DOWNSTREAM_PEER_CERT%`` (the leaf;
  the same encoding as the ``Cert=`` of its ``x-forwarded-client-cert``) and AWS ALB's
  ``X-Amzn-Mtls-Clientcert`` (leaf then chain) give. The proxy checked the client's
  proof of the key; what it verified the chain against is its own configuration, so
  fleetreg verifies the chain itself wherever it accepts a certificate.

The header is read ONLY when it is configured AND the connection's peer is in
FLEETREG_TRUSTED_PROXIES (the same list that makes ``X-Forwarded-For`` believed,
shared/throttle.py); then it is the only source (the proxy speaks for the client; a
certificate the proxy itself presents to an https backend is not the device's). From any
other peer the header is ignored, never trusted and never parsed. Off by default because
a certificate is no secret (a device shows it to every server it meets, in the clear
before TLS 1.3): a proxy that passes a client's own header through would let anyone who
saw a device's certificate speak as that device, and a deployment that already trusts its
proxies for ``X-Forwarded-For`` must not start believing a new header on upgrade. A header
from a trusted proxy that is garbage, too long or carries too many certificates is a 400
naming the header.

Whoever accepts a certificate still checks that it chains to the anchor it requires,
that it is not revoked, and its validity time: presence here proves possession only.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from cryptography import x509

from shared.errors import InvalidInput
from shared.metrics import CLIENT_CERTIFICATE_REFUSALS
from shared.throttle import from_trusted_proxy

# The header the docs and the proxy examples use; FLEETREG_CLIENT_CERT_HEADER names the one read.
CLIENT_CERT_HEADER = "X-Client-Cert"
# The header's length, URL-encoded: a P-256 leaf is about 1,000 characters, an RSA-4096 one
# about 2,500; a leaf and a three-certificate RSA chain fit. (The whole request head is
# bounded by FLEETREG_HTTP_MAX_HEADER_BYTES, 16 KiB by default: past it, 431.)
MAX_HEADER_CHARS = 12 * 1024
# Certificates after the leaf: a device's chain is an intermediate or two below a root.
MAX_CHAIN_CERTIFICATES = 4
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"

Via = Literal["tls", "proxy"]

# The header a trusted proxy's client certificate comes in (FLEETREG_CLIENT_CERT_HEADER),
# set by the service's app factory; absent: no header is ever read.
CLIENT_CERT_HEADER_NAME = web.AppKey("client_cert_header", str)


@dataclass(frozen=True)
class ClientCertificate:
    """A client's certificate: ``leaf`` (its own), ``chain`` (certificates it sent after it,
    leaf's issuer first; empty over this process's TLS), and ``via`` where it was read."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    via: Via


class ClientCertificateHeaderInvalid(InvalidInput):
    """A trusted proxy's client-certificate header that is not a usable certificate (400,
    ``field`` the header's name)."""

    code = "client_certificate_invalid"

    def __init__(self, message: str, rule: str, header: str = CLIENT_CERT_HEADER) -> None:
        super().__init__(message, field=header, rule=rule)
        CLIENT_CERTIFICATE_REFUSALS.labels("malformed_header").inc()


def client_certificate(request: web.Request) -> ClientCertificate | None:
    """The request's client certificate (module docstring), or None when the client
    presented none. ClientCertificateHeaderInvalid (400) for a trusted proxy's header that
    is not one: too long (rule ``max_chars``), too many certificates (``max_chain``), not
    URL-encoded PEM certificates (``pem``), given twice (``once``)."""
    header = request.config_dict.get(CLIENT_CERT_HEADER_NAME)
    if header is not None and from_trusted_proxy(request):
        values = request.headers.getall(header, [])
        if len(values) > 1:
            raise ClientCertificateHeaderInvalid(f"{header} is given more than once", "once", header)
        return from_header(values[0], header) if values else None
    return from_tls(request)


def from_tls(request: web.Request) -> ClientCertificate | None:
    """The certificate of the request's TLS handshake, or None (plain http, or none sent)."""
    transport = request.transport
    connection = transport.get_extra_info("ssl_object") if transport is not None else None
    if connection is None:
        return None
    der = connection.getpeercert(binary_form=True)
    if not der:
        return None
    return ClientCertificate(x509.load_der_x509_certificate(der), (), "tls")


def from_header(value: str, header: str = CLIENT_CERT_HEADER) -> ClientCertificate | None:
    """A trusted proxy's header (named ``header``): URL-encoded PEM, the leaf then the chain; None
    for an empty value (a proxy that forwards an empty variable: no certificate).
    ClientCertificateHeaderInvalid as :func:`client_certificate` says."""
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_HEADER_CHARS:
        raise ClientCertificateHeaderInvalid(
            f"{header} is longer than {MAX_HEADER_CHARS} characters", "max_chars", header
        )
    # unquote, not unquote_plus: "+" is a base64 character, and no proxy writes spaces as "+".
    try:
        text = urllib.parse.unquote(value, errors="strict")
    except UnicodeDecodeError as exc:
        raise ClientCertificateHeaderInvalid(
            f"{header} is not URL-encoded text (percent-escapes that are not UTF-8)", "pem", header
        ) from exc
    blocks = text.count(PEM_BEGIN)
    if blocks > 1 + MAX_CHAIN_CERTIFICATES:
        raise ClientCertificateHeaderInvalid(
            f"{header} holds {blocks} certificates: at most the leaf and "
            f"{MAX_CHAIN_CERTIFICATES} chain certificates",
            "max_chain",
            header,
        )
    if not text.lstrip().startswith(PEM_BEGIN):
        raise ClientCertificateHeaderInvalid(
            f"{header} must be URL-encoded PEM certificates, the leaf first "
            "(nginx: $ssl_client_escaped_cert)",
            "pem",
            header,
        )
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("utf-8"))
    except ValueError as exc:
        raise ClientCertificateHeaderInvalid(
            f"{header} holds a PEM block that is not an X.509 certificate", "pem", header
        ) from exc
    return ClientCertificate(certificates[0], tuple(certificates[1:]), "proxy")
