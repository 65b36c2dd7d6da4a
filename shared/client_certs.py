"""The client certificate a device presented, for the handlers (X.509 attestation,
docs/device-identity.md). Minimal form, until the https listener's TLS handshake supplies it
too: behind a TLS-terminating proxy, the ``X-Client-Cert`` header (the URL-encoded PEM of
the leaf, then any chain certificates, as nginx's ``$ssl_client_escaped_cert`` and AWS ALB
mTLS write it), read ONLY from a peer in ``FLEETREG_TRUSTED_PROXIES``: from anyone else the
header is ignored, as X-Forwarded-For is."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from aiohttp import web
from cryptography import x509

from shared.domain.x509_attestation import MAX_CHAIN, parse_certificates
from shared.throttle import THROTTLE

HEADER = "X-Client-Cert"


@dataclass(frozen=True)
class ClientCertificate:
    """The device's certificate (``leaf``), the further certificates it presented
    (``chain``, nearest first), and how it came: the TLS handshake or a trusted proxy."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    via: Literal["tls", "proxy"]


def client_certificate(request: web.Request) -> ClientCertificate | None:
    """The certificate the request presents, or None (none, or a header from a peer that is
    not a trusted proxy). A trusted proxy's header that is not 1 to 1 + MAX_CHAIN PEM
    certificates is InvalidInput (400, field ``X-Client-Cert``)."""
    value = request.headers.get(HEADER)
    if not value or not _from_trusted_proxy(request):
        return None
    found = parse_certificates(unquote(value), HEADER, at_most=1 + MAX_CHAIN)
    return ClientCertificate(found[0], tuple(found[1:]), "proxy")


def _from_trusted_proxy(request: web.Request) -> bool:
    throttle = request.config_dict.get(THROTTLE)
    if throttle is None or request.remote is None:
        return False
    try:
        peer = ipaddress.ip_address(request.remote.partition("%")[0])
    except ValueError:
        return False
    return any(peer in network for network in throttle.settings.trusted_proxies)
