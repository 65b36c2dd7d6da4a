"""Client certificates on an https listener: which ones the TLS handshake accepts, kept up
to date while the process runs (the intake's https listener, docs/device-identity.md,
"Client certificates on the https listener").

The listener asks every client for a certificate but requires none (``CERT_OPTIONAL``):
devices without one (every device of the reference protocol, and most native ones) connect
as before. A certificate a client does present is verified by OpenSSL during the handshake
against the **anchors**: each account's issuing CA (EST renewal by the current
certificate) and whatever else the service's providers return (the verified X.509
attestation CAs). The anchors change while the process runs (a new account, an operator
verifying a CA), so :class:`ClientCertTrust` reads them from the registry every
``FLEETREG_TLS_CLIENT_CA_REFRESH_SECONDS`` (:data:`REFRESH_MIN_S` to :data:`REFRESH_MAX_S`),
applies what changed to an ``SSLContext`` (:meth:`ClientCertTrust.refresh`) and hands that
context to each new connection from the listening context's
server-name callback (``sni_callback``: OpenSSL calls it for every ClientHello, with or
without SNI, before the client's certificate arrives; switching ``SSLObject.context``
switches the trust store the certificate is verified against). Every instance reads the
same registry, so several instances accept the same anchors within one refresh interval;
nothing depends on one instance.

Verification flags, on both contexts (the connection keeps the first context's flags and
verify mode; the store is the switched one's):

* ``VERIFY_X509_PARTIAL_CHAIN``: an anchor need not be self-signed (an operator may upload
  an intermediate CA; the chain ends at it);
* ``X509_V_FLAG_NO_CHECK_TIME``: an expired or not-yet-valid certificate passes the
  handshake, so the application refuses it with a clear answer (403 naming ``expired``)
  instead of a TLS alert the device cannot explain. Every consumer checks the time itself.

A certificate that does not chain to an anchor (an unknown CA, a self-signed one) fails
the handshake: asyncio aborts the connection without delivering OpenSSL's alert, so the
client sees the connection closed (measured with curl 7.88 / OpenSSL 3.0: exit 35 over
TLS 1.2, exit 52 "Empty reply from server" or 56 over TLS 1.3), never an HTTP status, and
nothing reaches the service's log or its refusal counts. What passes the handshake proves
that the client holds the certificate's key and that the certificate chains to SOME
anchor: a consumer still checks that it is the anchor it requires (an account's CA, a
registration's attestation CA), that the certificate is not revoked, and its time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from cryptography import x509

from shared.metrics import TLS_CLIENT_ANCHORS

log = logging.getLogger(__name__)

# X509_V_FLAG_NO_CHECK_TIME (OpenSSL 1.1.0+), not exported by Python's ssl module.
NO_CHECK_TIME = 0x200000
# FLEETREG_TLS_CLIENT_CA_REFRESH_SECONDS: how stale the accepted anchors may be. At most
# five minutes: a CA an operator just verified (or a new account's) is accepted within it.
REFRESH_DEFAULT_S = 30.0
REFRESH_MIN_S = 1.0
REFRESH_MAX_S = 300.0

# At most this many new anchors are added to the current context in place (on the event
# loop, about 2.5 ms each with 5,000 loaded); more are loaded into a new one in a thread.
IN_PLACE_MAX = 16

# An anchors provider: the DER of every CA certificate it trusts now (read from the registry).
AnchorsProvider = Callable[[], Awaitable[list[bytes]]]


def client_auth_context(cert_file: str, key_file: str, anchors: Sequence[bytes] = ()) -> ssl.SSLContext:
    """A server context presenting ``cert_file``/``key_file`` (PEM) that asks for a client
    certificate without requiring one and verifies a presented one against ``anchors``
    (DER), partial chains allowed, validity times not checked (module docstring).
    OSError or ssl.SSLError for unreadable files; ssl.SSLError for a bad anchor."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | NO_CHECK_TIME
    if anchors:
        context.load_verify_locations(cadata=b"".join(anchors))
    return context


def usable_anchors(ders: Sequence[bytes]) -> tuple[list[bytes], int]:
    """The anchors OpenSSL can load, without duplicates, in a stable order, and how many
    were skipped (not an X.509 certificate: one bad row must not stop every other CA)."""
    usable: set[bytes] = set()
    skipped = 0
    for der in ders:
        try:
            x509.load_der_x509_certificate(der)
        except ValueError:
            skipped += 1
            continue
        usable.add(der)
    return sorted(usable), skipped


class ClientCertTrust:
    """The https listener's trust in client certificates: the anchors' current context,
    rebuilt by :meth:`refresh` (run it once before the listener starts, then periodically).

    ``providers``: each returns the DER certificates it trusts now; a provider that raises
    fails the round (logged and counted by the periodic job) and the previous anchors stay.
    """

    def __init__(self, cert_file: str, key_file: str, providers: Sequence[AnchorsProvider]) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._providers = tuple(providers)
        self._current = client_auth_context(cert_file, key_file)
        self._anchors: frozenset[bytes] = frozenset()
        self.refreshed_at = 0.0  # time.monotonic() of the last successful round

    @property
    def anchors(self) -> int:
        """How many CA certificates a client certificate may chain to now."""
        return len(self._anchors)

    def listening_context(self) -> ssl.SSLContext:
        """The context the listener is started with: it hands each connection the anchors'
        current context (which carries the same certificate, key and flags)."""
        context = client_auth_context(self.cert_file, self.key_file)
        context.sni_callback = self._switch
        return context

    def _switch(self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        connection.context = self._current

    async def refresh(self) -> bool:
        """Read every provider's anchors and apply what changed; True when anything did.

        OpenSSL's trust store sorts itself again at every insertion, so loading n anchors
        costs about n² (measured: 23 ms for 100, 0.28 s for 1,000, 4.8 s for 5,000 on one
        core). Hence: a few new anchors (at most IN_PLACE_MAX, nothing removed: a new
        account, a newly verified CA) are added to the current context in place (2.5 ms
        each at 5,000); anything else (the first load, a removed CA) builds a new context
        in a worker thread and swaps it in. Connections already open keep their context."""
        ders: list[bytes] = []
        for provider in self._providers:
            ders.extend(await provider())
        anchors, skipped = usable_anchors(ders)
        if skipped:
            log.warning(
                "client certificate anchors skipped: not X.509 certificates", extra={"count": skipped}
            )
        self.refreshed_at = time.monotonic()
        wanted = frozenset(anchors)
        if wanted == self._anchors:
            return False
        added = wanted - self._anchors
        if self._anchors and wanted > self._anchors and len(added) <= IN_PLACE_MAX:
            self._current.load_verify_locations(cadata=b"".join(sorted(added)))
        else:
            self._current = await asyncio.to_thread(
                client_auth_context, self.cert_file, self.key_file, anchors
            )
        self._anchors = wanted
        TLS_CLIENT_ANCHORS.set(len(wanted))
        log.info("client certificate anchors loaded", extra={"count": len(wanted), "added": len(added)})
        return True


# Set by a service that verifies client certificates (the intake's resources): its https
# listener is then started with the trust's listening context (shared/http.py ``run``).
CLIENT_CERT_TRUST = web.AppKey("client_cert_trust", ClientCertTrust)
