"""The client certificate a handler sees (shared/client_certs.py): a trusted proxy's
X-Client-Cert header (URL-encoded PEM, leaf first), ignored from any other peer, refused
with a 400 naming the header when it is garbage."""

from __future__ import annotations

import ipaddress
from unittest import mock
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from shared.client_certs import HEADER, client_certificate
from shared.errors import InvalidInput
from shared.throttle import THROTTLE, Throttle, ThrottleSettings
from tests.support import x509 as certs

PROXY = (ipaddress.ip_network("10.0.0.0/8"),)
ROOT = certs.ca("Proxy Test CA")
LINE = certs.ca("Proxy Test Line CA", issuer=ROOT)
LEAF = certs.device(LINE, "dev-1")


def request_from(peer: str, value: str | None) -> web.Request:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 4000) if name == "peername" else default
    )
    app = web.Application()
    app[THROTTLE] = Throttle(ThrottleSettings((), (), (), PROXY), "test")
    headers = CIMultiDict({HEADER: value} if value is not None else {})
    return make_mocked_request("POST", "/v1/registrations", headers=headers, transport=transport, app=app)


def test_a_trusted_proxys_header_gives_the_leaf_and_its_chain() -> None:
    found = client_certificate(request_from("10.1.2.3", quote(LEAF.pem + LINE.pem)))
    assert found is not None and found.via == "proxy"
    assert found.leaf == LEAF.certificate and found.chain == (LINE.certificate,)


def test_the_header_from_anyone_else_or_no_header_is_no_certificate() -> None:
    assert client_certificate(request_from("203.0.113.9", quote(LEAF.pem))) is None
    assert client_certificate(request_from("10.1.2.3", None)) is None


@pytest.mark.parametrize(
    "value",
    ["garbage", quote("-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----"), quote(LEAF.pem * 6)],
)
def test_garbage_from_the_proxy_is_a_400_naming_the_header(value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        client_certificate(request_from("10.1.2.3", value))
    assert caught.value.field == HEADER
