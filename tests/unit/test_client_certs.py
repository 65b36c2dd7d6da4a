"""A request's client certificate (shared/client_certs.py): the TLS handshake's, or a
trusted proxy's ``X-Client-Cert`` in the form nginx's ``$ssl_client_escaped_cert``, Envoy's
``%DOWNSTREAM_PEER_CERT%`` and AWS ALB's ``X-Amzn-Mtls-Clientcert`` give (URL-encoded PEM,
the leaf then the chain); the header from anyone else ignored; a bad one a clear 400."""

from __future__ import annotations

import ipaddress
import urllib.parse
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDict

from shared.client_certs import (
    CLIENT_CERT_HEADER,
    CLIENT_CERT_HEADER_NAME,
    MAX_CHAIN_CERTIFICATES,
    MAX_HEADER_CHARS,
    ClientCertificateHeaderInvalid,
    client_certificate,
    from_header,
)
from shared.throttle import THROTTLE

PROXY = "10.0.0.7"


def certificate(name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def escaped(*certs: x509.Certificate) -> str:
    """As nginx's $ssl_client_escaped_cert writes a PEM (every reserved character escaped)."""
    return urllib.parse.quote("".join(pem(c) for c in certs), safe="")


LEAF, INTERMEDIATE = certificate("device-1"), certificate("maker line 7")


def request(
    peer: str,
    headers: list[tuple[str, str]],
    tls_der: bytes | None = None,
    *,
    header: str | None = CLIENT_CERT_HEADER,
) -> web.Request:
    app = web.Application()
    if header is not None:  # FLEETREG_CLIENT_CERT_HEADER
        app[CLIENT_CERT_HEADER_NAME] = header
    trusted = (ipaddress.ip_network(f"{PROXY}/32"),)
    app[THROTTLE] = SimpleNamespace(settings=SimpleNamespace(trusted_proxies=trusted))  # type: ignore[assignment]
    connection = mock.Mock()
    connection.getpeercert.return_value = tls_der
    extra: dict[str, Any] = {"peername": (peer, 40000), "ssl_object": connection if tls_der else None}
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: extra.get(name, default)
    return make_mocked_request("POST", "/", headers=CIMultiDict(headers), app=app, transport=transport)


def test_the_nginx_form_is_the_leaf() -> None:
    found = from_header(escaped(LEAF))
    assert found is not None and found.via == "proxy"
    assert found.leaf == LEAF and found.chain == ()


def test_a_leaf_then_its_chain_as_aws_alb_sends_it() -> None:
    found = from_header(escaped(LEAF, INTERMEDIATE))
    assert found is not None and found.leaf == LEAF and found.chain == (INTERMEDIATE,)


def test_an_empty_value_is_no_certificate() -> None:
    assert from_header("") is None and from_header("   ") is None


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("hello", "pem"),
        (urllib.parse.quote(pem(LEAF)[:-200], safe=""), "pem"),  # cut short
        (urllib.parse.quote(pem(LEAF).replace("MII", "MIJ", 1), safe=""), "pem"),  # not DER
        ("%FF%FE", "pem"),  # not UTF-8
        ("A" * (MAX_HEADER_CHARS + 1), "max_chars"),
        (escaped(*[LEAF] * (MAX_CHAIN_CERTIFICATES + 2)), "max_chain"),
    ],
)
def test_a_bad_header_is_a_clear_400(value: str, rule: str) -> None:
    with pytest.raises(ClientCertificateHeaderInvalid) as refused:
        from_header(value)
    assert refused.value.status == 400
    assert refused.value.to_dict()["field"] == CLIENT_CERT_HEADER
    assert refused.value.rule == rule


def test_the_longest_chain_allowed_passes() -> None:
    found = from_header(escaped(LEAF, *[INTERMEDIATE] * MAX_CHAIN_CERTIFICATES))
    assert found is not None and len(found.chain) == MAX_CHAIN_CERTIFICATES


def test_a_trusted_proxys_header_is_read() -> None:
    found = client_certificate(request(PROXY, [(CLIENT_CERT_HEADER, escaped(LEAF))]))
    assert found is not None and found.leaf == LEAF and found.via == "proxy"


def test_the_header_from_anyone_else_is_ignored_even_garbage() -> None:
    assert client_certificate(request("203.0.113.9", [(CLIENT_CERT_HEADER, escaped(LEAF))])) is None
    assert client_certificate(request("203.0.113.9", [(CLIENT_CERT_HEADER, "garbage")])) is None
    # ... and never stands in for the connection's own certificate.
    der = INTERMEDIATE.public_bytes(serialization.Encoding.DER)
    found = client_certificate(request("203.0.113.9", [(CLIENT_CERT_HEADER, escaped(LEAF))], der))
    assert found is not None and found.leaf == INTERMEDIATE and found.via == "tls"


def test_from_a_trusted_proxy_the_header_is_the_only_source() -> None:
    # A proxy's own certificate towards an https backend is not the device's.
    der = INTERMEDIATE.public_bytes(serialization.Encoding.DER)
    assert client_certificate(request(PROXY, [], der)) is None
    with pytest.raises(ClientCertificateHeaderInvalid) as twice:
        client_certificate(request(PROXY, [(CLIENT_CERT_HEADER, escaped(LEAF))] * 2))
    assert twice.value.rule == "once"


def test_without_a_configured_header_none_is_read_even_from_a_trusted_proxy() -> None:
    """Off by default: a deployment that trusts its proxy for X-Forwarded-For must not start
    believing a certificate header on upgrade (a certificate is no secret)."""
    assert client_certificate(request(PROXY, [(CLIENT_CERT_HEADER, escaped(LEAF))], header=None)) is None
    # The proxy then passes TLS through (an L4 balancer): the handshake's certificate counts.
    der = LEAF.public_bytes(serialization.Encoding.DER)
    found = client_certificate(
        request(PROXY, [(CLIENT_CERT_HEADER, escaped(INTERMEDIATE))], der, header=None)
    )
    assert found is not None and found.leaf == LEAF and found.via == "tls"


def test_the_configured_header_name_is_read_and_named_in_refusals() -> None:
    alb = "X-Amzn-Mtls-Clientcert"
    found = client_certificate(request(PROXY, [(alb, escaped(LEAF, INTERMEDIATE))], header=alb))
    assert found is not None and found.chain == (INTERMEDIATE,)
    assert client_certificate(request(PROXY, [(CLIENT_CERT_HEADER, escaped(LEAF))], header=alb)) is None
    with pytest.raises(ClientCertificateHeaderInvalid) as refused:
        client_certificate(request(PROXY, [(alb, "garbage")], header=alb))
    assert refused.value.to_dict()["field"] == alb


def test_the_header_setting() -> None:
    from services.intake.settings import client_cert_header
    from shared.settings import Env, SettingsError

    assert client_cert_header(Env({})) is None
    assert client_cert_header(Env({"FLEETREG_CLIENT_CERT_HEADER": "-"})) is None
    assert client_cert_header(Env({"FLEETREG_CLIENT_CERT_HEADER": "X-Client-Cert"})) == "X-Client-Cert"
    assert client_cert_header(Env({"FLEETREG_CLIENT_CERT_HEADER": ""})) is None  # empty: unset
    for bad in ("X Client", "X-Client-Cert:", "X-Client-Cert\r\nX"):
        with pytest.raises(SettingsError, match="FLEETREG_CLIENT_CERT_HEADER"):
            client_cert_header(Env({"FLEETREG_CLIENT_CERT_HEADER": bad}))


def test_a_handshake_certificate_without_a_chain() -> None:
    der = LEAF.public_bytes(serialization.Encoding.DER)
    found = client_certificate(request("203.0.113.9", [], der))
    assert found is not None and found.leaf == LEAF and found.chain == () and found.via == "tls"
    assert client_certificate(request("203.0.113.9", [])) is None


def test_the_anchors_refresh_setting_has_its_default_and_bounds() -> None:
    from services.intake.settings import client_ca_refresh_seconds
    from shared.settings import Env, SettingsError

    name = "FLEETREG_TLS_CLIENT_CA_REFRESH_SECONDS"
    assert client_ca_refresh_seconds(Env({})) == 30.0
    assert client_ca_refresh_seconds(Env({name: "1"})) == 1.0
    assert client_ca_refresh_seconds(Env({name: "300"})) == 300.0
    for bad in ("0.5", "301", "x"):
        with pytest.raises(SettingsError, match=name):
            client_ca_refresh_seconds(Env({name: bad}))
