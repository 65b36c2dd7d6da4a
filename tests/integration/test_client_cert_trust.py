"""The https listener's client certificates (shared/tls.py, shared/client_certs.py) on a
real aiohttp server, driven with curl as a device would be: a client without a
certificate still connects; a certificate chaining to an anchor reaches the application
(an expired one too: the application refuses it itself); an anchor may be an
intermediate; a new anchor is accepted after a refresh, without a restart; a certificate
of an unknown CA fails the handshake (what curl reports is the measurement the docs
quote); a bad anchor does not stop the others."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.client_certs import client_certificate
from shared.tls import ClientCertTrust
from tests.support.system import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)


@dataclass(frozen=True)
class Issuer:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str, parent: Issuer | None = None) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(parent.certificate.subject if parent else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(parent.key if parent else key, hashes.SHA256())
    )
    return Issuer(key, certificate)


def make_leaf(folder: Path, name: str, issuer: Issuer, *, expired: bool = False) -> str:
    """A client certificate and key in ``folder`` (NAME.pem, NAME.key); curl's arguments."""
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = (
        (NOW - timedelta(days=10), NOW - timedelta(days=1)) if expired else (NOW, NOW + timedelta(days=1))
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(minutes=5))
        .not_valid_after(end)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    (folder / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return f"--cert {folder / name}.pem --key {folder / name}.key"


@dataclass
class Listener:
    url: str
    ca: Path  # the server certificate's CA (curl --cacert)
    trust: ClientCertTrust
    anchors: list[bytes]


async def seen(request: web.Request) -> web.Response:
    """What the application sees of the client's certificate."""
    found = client_certificate(request)
    if found is None:
        return web.Response(text="none")
    cn = found.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return web.Response(text=f"{found.via}:{cn!s}:{len(found.chain)}")


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The listener's own certificate, made by the same script as ``make up``."""
    folder = tmp_path_factory.mktemp("server-tls")
    subprocess.run([str(ROOT / "deploy" / "local" / "tls.sh"), str(folder)], check=True)
    return folder


@pytest.fixture
async def listener(server_tls: Path) -> AsyncIterator[Listener]:
    anchors: list[bytes] = []

    async def provider() -> list[bytes]:
        return list(anchors)

    trust = ClientCertTrust(str(server_tls / "server.pem"), str(server_tls / "server.key"), [provider])
    app = web.Application()
    app.router.add_get("/", seen)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=trust.listening_context()).start()
    try:
        yield Listener(f"https://127.0.0.1:{port}/", server_tls / "ca.pem", trust, anchors)
    finally:
        await runner.cleanup()


async def curl(listener: Listener, arguments: str = "", *, tls12: bool = False) -> tuple[int, str]:
    """curl's exit code and answer body (the server runs on this event loop: no blocking)."""
    command = f"curl -sS --max-time 10 --cacert {listener.ca} {'--tls-max 1.2' if tls12 else ''} {arguments} {listener.url}"
    process = await asyncio.create_subprocess_shell(
        command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_without_a_certificate_a_client_connects_as_before(listener: Listener) -> None:
    assert await curl(listener) == (0, "none")
    assert await curl(listener, tls12=True) == (0, "none")


async def test_a_certificate_of_an_anchor_reaches_the_application_even_expired(
    listener: Listener, tmp_path: Path
) -> None:
    account = make_ca("account CA")
    listener.anchors.append(account.der)
    assert await listener.trust.refresh()
    assert listener.trust.anchors == 1
    assert await curl(listener, make_leaf(tmp_path, "device-1", account)) == (0, "tls:device-1:0")
    # Expired: past the handshake (no time check there), so the application answers it.
    assert await curl(listener, make_leaf(tmp_path, "old-device", account, expired=True)) == (
        0,
        "tls:old-device:0",
    )
    # Nothing changed: the context is not rebuilt.
    assert not await listener.trust.refresh()


async def test_an_intermediate_is_an_anchor_of_its_own(listener: Listener, tmp_path: Path) -> None:
    root = make_ca("maker root")
    intermediate = make_ca("maker line 7", root)
    listener.anchors.append(intermediate.der)  # the root is not uploaded
    await listener.trust.refresh()
    assert await curl(listener, make_leaf(tmp_path, "board-7", intermediate)) == (0, "tls:board-7:0")


async def test_a_new_anchor_is_accepted_after_a_refresh_and_an_unknown_ca_fails_the_handshake(
    listener: Listener, tmp_path: Path
) -> None:
    first, later = make_ca("first account"), make_ca("later account")
    listener.anchors.append(first.der)
    await listener.trust.refresh()
    device = make_leaf(tmp_path, "later-device", later)
    # Not (yet) an anchor: the handshake fails and no HTTP answer comes back. curl 7.88 with
    # OpenSSL 3.0 reports 52 or 56 over TLS 1.3 (the server's abort arrives after curl
    # sent its request) and 35 over TLS 1.2 (during the handshake): docs/device-identity.md.
    code, body = await curl(listener, device)
    assert code in (35, 52, 56) and body == ""
    code, body = await curl(listener, device, tls12=True)
    assert code == 35 and body == ""
    listener.anchors.append(later.der)
    assert await listener.trust.refresh()
    assert await curl(listener, device) == (0, "tls:later-device:0")
    assert await curl(listener, device, tls12=True) == (0, "tls:later-device:0")
    # A self-signed certificate (no anchor at all) fails alike.
    stranger = make_ca("stranger")
    code, body = await curl(listener, make_leaf(tmp_path, "self", stranger))
    assert code in (35, 52, 56) and body == ""


async def test_a_bad_anchor_does_not_stop_the_others(listener: Listener, tmp_path: Path) -> None:
    account = make_ca("account CA")
    listener.anchors.extend([b"not a certificate", account.der, account.der])
    assert await listener.trust.refresh()
    assert listener.trust.anchors == 1  # the garbage skipped, the duplicate once
    assert await curl(listener, make_leaf(tmp_path, "device-2", account)) == (0, "tls:device-2:0")


async def test_a_failing_provider_keeps_the_anchors_loaded(listener: Listener, tmp_path: Path) -> None:
    account = make_ca("account CA")
    listener.anchors.append(account.der)
    await listener.trust.refresh()

    async def down() -> list[bytes]:
        raise ConnectionError("the registry is unreachable")

    listener.trust._providers = (down,)  # the registry goes away
    with pytest.raises(ConnectionError):
        await listener.trust.refresh()
    assert await curl(listener, make_leaf(tmp_path, "device-3", account)) == (0, "tls:device-3:0")


async def test_a_removed_anchor_is_no_longer_accepted_by_new_connections(
    listener: Listener, tmp_path: Path
) -> None:
    kept, removed = make_ca("kept"), make_ca("removed")
    listener.anchors.extend([kept.der, removed.der])
    await listener.trust.refresh()
    device = make_leaf(tmp_path, "removed-device", removed)
    assert await curl(listener, device) == (0, "tls:removed-device:0")
    listener.anchors.remove(removed.der)
    assert await listener.trust.refresh()  # rebuilt without it
    assert listener.trust.anchors == 1
    code, body = await curl(listener, device)
    assert code in (35, 52, 56) and body == ""
    assert await curl(listener, make_leaf(tmp_path, "kept-device", kept)) == (0, "tls:kept-device:0")


async def test_many_new_anchors_at_once_are_loaded_into_a_new_context(
    listener: Listener, tmp_path: Path
) -> None:
    first = make_ca("first")
    listener.anchors.append(first.der)
    await listener.trust.refresh()
    batch = [make_ca(f"batch {i}") for i in range(20)]  # past IN_PLACE_MAX
    listener.anchors.extend(ca.der for ca in batch)
    assert await listener.trust.refresh()
    assert listener.trust.anchors == 21
    assert await curl(listener, make_leaf(tmp_path, "batch-device", batch[-1])) == (0, "tls:batch-device:0")
    assert await curl(listener, make_leaf(tmp_path, "first-device", first)) == (0, "tls:first-device:0")
