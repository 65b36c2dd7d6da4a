"""The client certificate of a request, from where a device's TLS connection ends: this
process's https listener, or a TLS-terminating proxy listed in FLEETREG_TRUSTED_PROXIES
(docs/device-identity.md, "Client certificates on the https listener"; docs/operations.md,
"Client certificates behind a proxy").

* **TLS** (``via="tls"``): the certificate the client presented in the handshake of the
  intake's https listener, which OpenSSL verified against the listener's anchors
  (shared/tls.py: chains to SOME anchor, validity times not checked) and whose key the
  client proved. Python 3.11 exposes the leaf only, so ``chain`` is empty.
* **A trusted proxy** (``via="proxy"``): the header ``X-Client-Cert``, the client's
  certificate as URL-encoded PEM (RFC 3986 percent-encoding), the leaf first, then any
  chain certificates, as PEM blocks one after another. That is what nginx's
  ``$ssl_client_escaped_cert`` (the leaf), Envoy's ``%DOWNSTREAM_PEER_CERT%`` (the leaf;
  the same encoding as the ``Cert=`` of its ``x-forwarded-client-cert``) and AWS ALB's
  ``X-Amzn-Mtls-Clientcert`` (leaf then chain) give. The proxy checked the client's
  proof of the key; what it verified the chain against is its own configuration, so
  fleetreg verifies the chain itself wherever it accepts a certificate.

The header is read ONLY when the connection's peer is in FLEETREG_TRUSTED_PROXIES (the
same list that makes ``X-Forwarded-For`` believed, shared/throttle.py), and then it is
the only source (the proxy speaks for the client; a certificate the proxy itself
presents to an https backend is not the device's). From any other peer the header is
ignored, never trusted and never parsed. A header from a trusted proxy that is garbage,
too long or carries too many certificates is a 400 naming ``X-Client-Cert``.

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

CLIENT_CERT_HEADER = "X-Client-Cert"
# The header's length, URL-encoded: a P-256 leaf is about 1,000 characters, an RSA-4096 one
# about 2,500; a leaf and a three-certificate RSA chain fit. (The whole request head is
# bounded by FLEETREG_HTTP_MAX_HEADER_BYTES, 16 KiB by default: past it, 431.)
MAX_HEADER_CHARS = 12 * 1024
# Certificates after the leaf: a device's chain is an intermediate or two below a root.
MAX_CHAIN_CERTIFICATES = 4
PEM_BEGIN = "-----BEGIN CERTIFICATE-----"

Via = Literal["tls", "proxy"]


@dataclass(frozen=True)
class ClientCertificate:
    """A client's certificate: ``leaf`` (its own), ``chain`` (certificates it sent after it,
    leaf's issuer first; empty over this process's TLS), and ``via`` where it was read."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    via: Via


class ClientCertificateHeaderInvalid(InvalidInput):
    """A trusted proxy's ``X-Client-Cert`` that is not a usable certificate (400)."""

    code = "client_certificate_invalid"

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message, field=CLIENT_CERT_HEADER, rule=rule)
        CLIENT_CERTIFICATE_REFUSALS.labels("malformed_header").inc()


def client_certificate(request: web.Request) -> ClientCertificate | None:
    """The request's client certificate (module docstring), or None when the client
    presented none. ClientCertificateHeaderInvalid (400) for a trusted proxy's header that
    is not one: too long (rule ``max_chars``), too many certificates (``max_chain``), not
    URL-encoded PEM certificates (``pem``)."""
    if from_trusted_proxy(request):
        values = request.headers.getall(CLIENT_CERT_HEADER, [])
        if len(values) > 1:
            raise ClientCertificateHeaderInvalid(f"{CLIENT_CERT_HEADER} is given more than once", "once")
        return from_header(values[0]) if values else None
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


def from_header(value: str) -> ClientCertificate | None:
    """A trusted proxy's ``X-Client-Cert``: URL-encoded PEM, the leaf then the chain; None
    for an empty value (a proxy that forwards an empty variable: no certificate).
    ClientCertificateHeaderInvalid as :func:`client_certificate` says."""
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_HEADER_CHARS:
        raise ClientCertificateHeaderInvalid(
            f"{CLIENT_CERT_HEADER} is longer than {MAX_HEADER_CHARS} characters", "max_chars"
        )
    # unquote, not unquote_plus: "+" is a base64 character, and no proxy writes spaces as "+".
    try:
        text = urllib.parse.unquote(value, errors="strict")
    except UnicodeDecodeError as exc:
        raise ClientCertificateHeaderInvalid(
            f"{CLIENT_CERT_HEADER} is not URL-encoded text (percent-escapes that are not UTF-8)", "pem"
        ) from exc
    blocks = text.count(PEM_BEGIN)
    if blocks > 1 + MAX_CHAIN_CERTIFICATES:
        raise ClientCertificateHeaderInvalid(
            f"{CLIENT_CERT_HEADER} holds {blocks} certificates: at most the leaf and "
            f"{MAX_CHAIN_CERTIFICATES} chain certificates",
            "max_chain",
        )
    if not text.lstrip().startswith(PEM_BEGIN):
        raise ClientCertificateHeaderInvalid(
            f"{CLIENT_CERT_HEADER} must be URL-encoded PEM certificates, the leaf first "
            "(nginx: $ssl_client_escaped_cert)",
            "pem",
        )
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("utf-8"))
    except ValueError as exc:
        raise ClientCertificateHeaderInvalid(
            f"{CLIENT_CERT_HEADER} holds a PEM block that is not an X.509 certificate", "pem"
        ) from exc
    return ClientCertificate(certificates[0], tuple(certificates[1:]), "proxy")
