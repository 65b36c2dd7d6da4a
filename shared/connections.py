"""Bounded connections on every HTTP listener, enforced in front of aiohttp's parser.

aiohttp bounds header lines (``max_line_size``, ``max_field_size``) and their number
(``max_headers``, 128 in 3.14) but not their total: 128 fields of 8,190 bytes let one
unfinished request buffer about 1 MB in the parser. It has no header-completion or
body-read timeout, and no cap on connections. So every listener serves a
:class:`GuardedConnection` per connection, an ``asyncio.Protocol`` that wraps the
protocol aiohttp's ``web.Server`` makes (its ``RequestHandler``) and sees every byte
before the parser does:

* it counts the bytes of each request's head (request line and headers) up to the
  blank line that ends it, and past ``max_header_bytes`` answers ``431`` and closes
  without giving the parser another byte;
* it closes a head not finished ``header_timeout_s`` after its first byte (``408``), and
  cuts a body that brings less than ``body_min_bytes_per_s`` bytes a second over a window
  of ``body_timeout_s`` (no answer: the handler waiting for the body owns it; a window in
  which the service itself stopped reading, aiohttp's back-pressure, is not held against
  the client);
* it reads at most ``PIPELINED_REQUESTS`` requests ahead of their answers, none while
  the client is not reading the answers already sent (its writing paused), and cuts a
  connection whose writing is paused and whose client takes no byte of it for
  ``send_timeout_s``; a bound crossed behind a
  pipelined request is answered after that request's answer, never before;
* it answers a request asking to switch protocols (``Connection: Upgrade``) like any
  other and closes the connection after it, reading nothing more into aiohttp (which
  would buffer it without bound);
* a request aiohttp's parser refuses (a NUL byte in a header, a bad header name or
  request line) is answered by :class:`JsonParseErrors` with the services' JSON ``400``,
  which repeats none of the request (aiohttp's own quoted the offending line: a bearer
  secret included);
* it admits a connection only under :class:`ConnectionLimits` (per source address and
  per process, over every listener of the process); past either it answers ``503`` with
  ``Retry-After``, logs it (at most ``LOG_LINES_PER_MINUTE`` lines a minute per reason)
  and counts it in ``fleetreg_http_connections_refused_total``.

aiohttp's own settings do the rest (:func:`handler_args`): the idle keep-alive timeout,
its per-line limits, a body's buffer. TLS handshakes and shutdowns are bounded by
``header_timeout_s`` (``ssl_handshake_timeout``, ``ssl_shutdown_timeout`` of
``loop.create_server``); a TLS listener's sockets get a small receive buffer
(``TLS_RECEIVE_BUFFER_BYTES``) and the process's large buffers are unmapped when freed
(:func:`return_large_buffers`), so what a connection costs is bounded and given back.

To find where a request's head ends, the connection splits what it receives at the
first blank line and feeds the head alone to aiohttp's parser; then reads the request
aiohttp just parsed (``RequestHandler._messages``, the queue its ``data_received``
fills) to know whether a body follows and how long it is (``Content-Length``; a
chunked body is followed to its end through the request's payload). That private
attribute is read in :func:`_parsed_request` and ``_busy``; ``_answered`` reads the
handler's idle state (``_waiter``) and ``_look`` its own holds on the reading
(``_reading_paused``, ``_buffer_paused``); tests/unit/test_connections.py fails if an
aiohttp upgrade changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import fcntl
import functools
import ipaddress
import logging
import resource
import socket
import struct
import termios
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from shared.metrics import HTTP_CONNECTIONS_CLOSED, HTTP_CONNECTIONS_OPEN, HTTP_CONNECTIONS_REFUSED
from shared.settings import ConnectionBounds

log = logging.getLogger(__name__)

HEAD_END = b"\r\n\r\n"
# How long a refused connection may still send (its request, read and dropped) before it
# is closed: closing a socket with unread data sends a reset, which can destroy the
# answer before the client reads it.
LINGER_SECONDS = 1.0
RETRY_AFTER_SECONDS = 5
LOG_LINES_PER_MINUTE = 10
# File descriptors a process keeps for what is not a client connection: the database
# pool, the broker's connections, spool and log files, the refused connections being
# answered, and accept()'s own margin. At least this many, or an eighth of the limit.
RESERVED_FDS = 256
# What one open connection may cost at most in resident memory, and what the process
# keeps for everything else, for the cap a memory limit implies. The worst connection is
# one whose body arrives faster than its handler reads it: aiohttp buffers up to twice
# ``READ_BUFFER_BYTES`` of it, plus one read of up to 256 KiB (uvloop's read size) before
# it stops reading the socket. Measured on the intake (docs/security.md, "Bounded
# connections"): 200 connections pushing bodies as fast as they could, 280 KiB each; 1,000
# holding a 16 KiB head over https, 80 KiB each; idle, 4 (http) and 24 KiB (https).
CONNECTION_MEMORY_BYTES = 384 * 1024
RESERVED_MEMORY_BYTES = 128 * 1024 * 1024
# The kernel's receive buffer of a TLS listener's connections (it doubles the figure):
# what one read can bring, so what a connection holds in flight. Devices send requests
# of a few KiB; bulk uploads use the plain listener, whose buffers stay self-tuned.
TLS_RECEIVE_BUFFER_BYTES = 32 * 1024
# aiohttp's read_bufsize: a body's buffer stops the socket's reading at twice this (its
# default, 256 KiB, lets a connection whose handler has not read yet hold 512 KiB).
READ_BUFFER_BYTES = 64 * 1024
# Pipelining: parsed requests a connection may have queued behind the one being handled
# before the guard stops reading it (aiohttp's own queue holds 32). A client that sends
# requests and never reads the answers then holds at most this many, and one read.
PIPELINED_REQUESTS = 2
# How often a connection whose writing is paused looks whether the client took a byte of
# what waits for it (at most; a quarter of the send timeout when that is shorter).
SEND_CHECK_SECONDS = 1.0
# How often a connection whose reading the guard paused looks whether it may go on (the
# handler's queue drained, the client read its answers): aiohttp's handler tells nobody.
HOLD_POLL_SECONDS = 0.05
# The write buffer of a TLS connection past which its writing pauses (the client is not
# reading): uvloop's TLS layer defaults to 512 KiB (a quarter of it to resume), so 300
# clients pipelining requests and never reading the answers held 150 MB of the intake
# (issue 21), and a reader had to take 384 KiB within the send timeout to count as
# progress. At 32 KiB (resume at 8 KiB), and at most 32 KiB kept undecrypted while the
# guard holds the reading (256 KiB by default), 300 such clients over https took 107 MB
# (357 KiB each, within CONNECTION_MEMORY_BYTES); at 64 KiB each, 134 MB.
TLS_SEND_BUFFER_BYTES = 32 * 1024
TLS_HELD_READ_BYTES = 32 * 1024
# A source with fewer connections than this may use the last quarter of the process cap.
SMALL_SOURCE_CONNECTIONS = 16
TRIM_EVERY_SECONDS = 5.0
TRIM_AFTER_CONNECTIONS = 100
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024


def sending_progress(transport: asyncio.BaseTransport) -> tuple[int, int]:
    """What waits for the client, as (the transport's write buffer, the socket's send
    queue): the second is ``SIOCOUTQ`` (Linux), bytes sent and not acknowledged or not sent
    yet, 0 where it cannot be read. Either one shrinking means the client took some bytes:
    the send queue shrinks with every byte acknowledged, whereas the buffer moves only
    when the socket has room again, which the kernel signals once a third of its send
    buffer is free (it grows to 4 MB on a fast link, so a slow reader may take seconds)."""
    buffered = cast(asyncio.WriteTransport, transport).get_write_buffer_size()
    queued = 0
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4)  # SIOCOUTQ == TIOCOUTQ
            queued = int(struct.unpack("i", raw)[0])
    return buffered, queued


def took_some(before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Whether the client took bytes between two :func:`sending_progress` readings."""
    return after[0] < before[0] or after[1] < before[1]


def source_of(peername: Any) -> str:
    """The source a connection is counted under: the peer's IPv4 address, or its IPv6 /64
    (one subscriber's prefix, the same rule as shared/throttle.py); "unknown" without one."""
    host = peername[0] if isinstance(peername, tuple) and peername else None
    return _source(host) if isinstance(host, str) else "unknown"


@functools.lru_cache(maxsize=4096)  # a NAT site is one address; attackers' addresses only evict
def _source(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "unknown"
    return address_source(address)


def address_source(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The source a limit counts an address under, the same for the connection caps and
    the refused-calls throttle (shared/throttle.py): an IPv4 address (an IPv4-mapped IPv6
    one as its IPv4 form), or an IPv6 address's /64, the smallest block a single site
    is given (RFC 6177), so one site cannot take a fresh address per call."""
    if address.version == 6:
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def process_connection_cap(configured: int, fd_soft_limit: int, memory_limit: int | None) -> int:
    """The per-process connection cap: ``configured`` when set (above 0); else the smaller of

    * the file-descriptor soft limit less ``RESERVED_FDS`` (or an eighth of the limit,
      whichever is more): 1,024 descriptors give 768 connections, 20,000 give 17,500;
    * with a memory limit (the container's cgroup), what fits in it past
      ``RESERVED_MEMORY_BYTES`` at ``CONNECTION_MEMORY_BYTES`` a connection: 512 MiB
      give 1,024 connections, 1 GiB 2,389.
    """
    if configured > 0:
        return configured
    cap = fd_soft_limit - max(RESERVED_FDS, fd_soft_limit // 8)
    if memory_limit is not None:
        cap = min(cap, (memory_limit - RESERVED_MEMORY_BYTES) // CONNECTION_MEMORY_BYTES)
    return max(64, cap)


def fd_soft_limit() -> int:
    """RLIMIT_NOFILE's soft limit of this process (an unlimited one counts as 1,048,576)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1024**2


CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2 (Docker, Kubernetes on current hosts)
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def memory_limit(files: tuple[Path, ...] = CGROUP_MEMORY_LIMITS) -> int | None:
    """The process's cgroup memory limit in bytes, or None (no limit, or not in a container:
    v1 reports "no limit" as a number near 2^63)."""
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
        return None
    return None


def return_large_buffers() -> None:
    """Make glibc map every allocation of ``MMAP_THRESHOLD_BYTES`` or more on its own and
    unmap it when freed. By default glibc raises that threshold to the largest block it
    has freed, so after the first TLS connections the 256 KiB read buffer uvloop gives
    each one, and the 256 KiB reads themselves, come from the heap: resident in full and
    kept after the client leaves (150 connections sending 1 MB over https left the
    intake 46 MB larger; with this, 8 MB). No-op on a C library without ``mallopt``."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def heap_trimmer(*limits: ConnectionLimits) -> Callable[[], Awaitable[None]] | None:
    """One round of heap trimming, for a ``shared.periodic.PeriodicJob`` every
    ``TRIM_EVERY_SECONDS``: once ``TRIM_AFTER_CONNECTIONS`` connections fewer are open on one
    of ``limits`` than at the last round's peak, hand the heap's free pages back to the system
    (glibc's ``malloc_trim``, a few milliseconds). A crowd's small buffers (headers, TLS
    state) are freed when it leaves but stay resident, scattered among live objects, until
    then: 1,000 connections holding 16 KiB heads over https left the intake 54 MB larger.
    None where there is no ``malloc_trim`` (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return None

    async def trim_round() -> None:
        left = [each for each in limits if each.peak - each.open >= TRIM_AFTER_CONNECTIONS]
        if left:
            trim(0)
        for each in left:
            each.peak = each.open

    return trim_round


class ConnectionLimits:
    """Open connections per source and in total, shared by every listener of a process.

    ``admit`` says which cap a new connection would cross ("source" or "process") or
    None, in which case it is counted until ``release``. The last quarter of the process
    cap is kept for sources holding fewer than ``SMALL_SOURCE_CONNECTIONS``: one client
    holding connections up to the cap would otherwise lock every new device out (issue
    21: 1,100 idle connections from one client let 3 of 123 new devices in). Pure
    bookkeeping: no I/O."""

    def __init__(self, per_source: int, total: int) -> None:
        self.per_source = per_source
        self.total = total
        self.open = 0
        self.peak = 0  # the most open since heap_trimmer's round last looked
        self._by_source: Counter[str] = Counter()

    def admit(self, source: str) -> str | None:
        held = self._by_source[source]
        if self.open >= self.total:
            return "process"
        if held >= self.per_source:
            return "source"
        if held >= SMALL_SOURCE_CONNECTIONS and self.open >= self.total - self.total // 4:
            return "process"  # the reserve: for sources with few connections
        self.open += 1
        self.peak = max(self.peak, self.open)
        self._by_source[source] += 1
        return None

    def release(self, source: str) -> None:
        self.open -= 1
        left = self._by_source[source] - 1
        if left > 0:
            self._by_source[source] = left
        else:
            del self._by_source[source]  # an attacker's rotating sources leave nothing behind

    def of(self, source: str) -> int:
        return self._by_source[source]

    @property
    def sources(self) -> int:
        return len(self._by_source)


def handler_args(bounds: ConnectionBounds) -> dict[str, Any]:
    """What aiohttp enforces itself (``web.AppRunner``'s keyword arguments, handed to every
    ``RequestHandler``): the idle keep-alive timeout (its default is 3,630 s), measured from
    a connection's start and from each answer; and how much of a body it buffers before it
    stops reading the socket (twice ``read_bufsize``: 512 KiB by default, 128 KiB here).
    Its per-line limits (``max_line_size``, ``max_field_size``) are the total bound this
    module enforces first: at their default (8,190 bytes) one long header line under that
    total got aiohttp's own ``text/plain`` 400, which quotes the line back (a bearer token
    included), instead of this module's JSON 431; no head it is given can pass them now."""
    return {
        "keepalive_timeout": bounds.keepalive_s,
        "read_bufsize": READ_BUFFER_BYTES,
        "max_line_size": bounds.max_header_bytes,
        "max_field_size": bounds.max_header_bytes,
    }


class _RateLimitedLog:
    """At most ``LOG_LINES_PER_MINUTE`` warnings a minute per reason (a moving window):
    a flood is one line a few seconds, each saying how many went unlogged since."""

    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._item = RateLimitItemPerMinute(LOG_LINES_PER_MINUTE)
        self._unlogged: Counter[str] = Counter()

    def warning(self, reason: str, message: str, **extra: Any) -> None:
        if not self._limiter.hit(self._item, reason):
            self._unlogged[reason] += 1
            return
        unlogged, self._unlogged[reason] = self._unlogged[reason], 0
        log.warning(message, extra={**extra, "reason": reason, "unlogged_since_last": unlogged})


@dataclass
class Listener:
    """What every connection of one listener shares: aiohttp's protocol factory (the
    runner's ``web.Server``), the bounds, the process's :class:`ConnectionLimits`."""

    server: Callable[[], asyncio.Protocol]
    bounds: ConnectionBounds
    limits: ConnectionLimits
    service: str
    log: _RateLimitedLog = field(default_factory=_RateLimitedLog)


class _Phase(enum.Enum):
    HEAD = "head"  # waiting for, or reading, a request line and its headers
    BODY = "body"  # reading a body of known length (Content-Length)
    CHUNKED = "chunked"  # reading a chunked body, to its end as aiohttp's parser sees it
    # aiohttp answers a parse error itself: bytes go straight through (it reads no more).
    PASS = "pass"  # noqa: S105 (a phase, not a password)
    # A request asked for a protocol upgrade: it is answered like any other, then the
    # connection closes; what follows it is dropped unread (see _head).
    LAST = "last"
    CLOSING = "closing"  # answered by this module: what still arrives is dropped


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def error_answer(status: int, error: str, message: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 answer with the services' JSON error body, closing the connection."""
    body = orjson.dumps({"error": error, "message": message})
    head = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# What a request aiohttp's parser refused is told: never a byte of it.
MALFORMED_REQUEST = (
    "the request line or a header is not valid HTTP/1.1 (RFC 9112): a NUL or other control "
    "character, a space before a header's colon, a malformed request line; none of it is "
    "repeated here"
)


class JsonParseErrors(web.RequestHandler):
    """aiohttp's ``RequestHandler``, but a request its parser refuses (an
    ``HttpProcessingError``: a NUL byte in a header, a bad header name, a bad request line)
    is answered ``400`` with the services' JSON error body naming no byte of the request.
    aiohttp's own answer is ``text/plain`` with the parser's message, which quotes the
    offending line: an ``Authorization: Bearer <device secret>`` line holding a NUL went
    back to its sender, and to every proxy log on the way. aiohttp has no hook for it
    (aio-libs/aiohttp#3287, #9882): its error handler calls ``handle_error``, which this
    overrides; every other error is aiohttp's as before. The refusal is still logged
    through aiohttp's logger, which shared.logging.MalformedRequests turns into one
    warning line naming the exception's class only."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:  # as aiohttp: an answer was under way
            raise ConnectionError("an answer is sent already; the parse error is not answered")
        body = orjson.dumps({"error": "bad_request", "message": MALFORMED_REQUEST, "rule": "http_syntax"})
        response = web.Response(body=body, status=400, content_type="application/json")
        response.force_close()
        return response


class GuardedConnection(asyncio.Protocol):
    """One client connection: the bounds of :class:`ConnectionBounds` around aiohttp's
    ``RequestHandler`` (created only once the connection is admitted)."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._inner: Any = None  # aiohttp's RequestHandler, once admitted
        self._source = "unknown"
        self._phase = _Phase.HEAD
        self._head_bytes = 0
        self._carry = b""  # the last bytes of an unfinished head: a blank line may straddle reads
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_left = 0
        self._payload: StreamReader | None = None
        self._window_bytes = 0
        self._window_reading = True
        self._body_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._poll_timer: asyncio.TimerHandle | None = None
        self._stash = b""  # what arrived while reading was held (at most one read)
        self._held = False  # the guard paused the transport's reading
        self._writing_paused = False
        self._when_answered: Callable[[], None] | None = None
        self._last = False  # the request being read asked to switch protocols: the last one read

    # ------------------------------------------------------------ asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server's transport (uvloop's is not an asyncio.Transport subclass).
        self._transport = transport = cast(asyncio.Transport, transport)
        self._source = source_of(transport.get_extra_info("peername"))
        listener = self._listener
        crossed = listener.limits.admit(self._source)
        if crossed is not None:
            HTTP_CONNECTIONS_REFUSED.labels(listener.service, crossed).inc()
            cap = listener.limits.total if crossed == "process" else listener.limits.per_source
            whose = "this service" if crossed == "process" else "your address"
            listener.log.warning(
                f"{crossed}_connection_limit",
                "refused a connection past the connection limit (503)",
                source=self._source,
                limit=f"max_connections{'_per_source' if crossed == 'source' else ''}={cap}",
            )
            self._answer_and_close(
                error_answer(
                    503,
                    "unavailable",
                    f"too many open connections to {whose} (at most {cap}); retry later",
                    RETRY_AFTER_SECONDS,
                )
            )
            return
        HTTP_CONNECTIONS_OPEN.labels(listener.service).inc()
        if transport.get_extra_info("ssl_object") is not None:
            transport.set_write_buffer_limits(high=TLS_SEND_BUFFER_BYTES)
            # uvloop's TLS transport has it (asyncio's too); typeshed's Transport does not.
            cast(Any, transport).set_read_buffer_limits(high=TLS_HELD_READ_BYTES)
        self._inner = listener.server()
        if type(self._inner) is web.RequestHandler:
            # The same object with the JSON answer to a parse error (an empty __slots__:
            # the layout is aiohttp's own, so the class may change in place; web.Server
            # has no way to make another handler class without its private arguments).
            self._inner.__class__ = JsonParseErrors
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is _Phase.CLOSING:
            if HEAD_END in data and self._transport is not None and self._close_timer is not None:
                self._transport.close()  # the refused request is read: the answer is safe to close on
            return
        if phase is _Phase.LAST:
            return  # after a request asking to switch protocols: nothing more is read
        if phase is _Phase.PASS:
            self._inner.data_received(data)
            return
        if self._held:
            self._stash += data  # a read already under way when reading was paused
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        while data and self._phase not in (_Phase.CLOSING, _Phase.LAST):
            if self._phase is _Phase.HEAD:
                if self._head_bytes == 0 and not self._carry and self._busy():
                    # A new request while earlier ones wait for their answers: hold it
                    # (and stop reading) until they are answered.
                    self._stash = data + self._stash
                    self._hold()
                    return
                data = self._head(data)
            elif self._phase is _Phase.BODY:
                data = self._body(data)
            elif self._phase is _Phase.CHUNKED:
                data = self._chunked(data)
            else:  # PASS, set by _head
                self._inner.data_received(data)
                return

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            result: bool | None = self._inner.eof_received()
            return result
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (
            self._head_timer,
            self._body_timer,
            self._close_timer,
            self._send_timer,
            self._poll_timer,
        ):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._close_timer = self._send_timer = self._poll_timer = None
        self._transport = None
        self._stash, self._when_answered = b"", None
        if self._inner is not None:
            inner, self._inner = self._inner, None
            self._listener.limits.release(self._source)
            HTTP_CONNECTIONS_OPEN.labels(self._listener.service).dec()
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        # The client does not read its answers as fast as they come: no new request is read
        # meanwhile (_busy), and it is cut once it takes no byte for send_timeout_s. Over
        # TLS this is called when the TLS layer's own buffer passes its high-water mark.
        self._writing_paused = True
        if self._send_timer is None and self._transport is not None:
            self._watch_sending(sending_progress(self._transport), self._loop.time())
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._send_timer is not None:  # progress: a slow but steady reader is not cut
            self._send_timer.cancel()
            self._send_timer = None
        if self._inner is not None:
            self._inner.resume_writing()

    def _watch_sending(self, buffered: tuple[int, int], progress_at: float) -> None:
        """While writing is paused, look every ``SEND_CHECK_SECONDS`` whether the client took
        some of what waits for it (:func:`sending_progress`): any byte is
        progress, so only a client taking nothing for ``send_timeout_s`` is cut, however
        slowly it reads (resuming the writing, at the low-water mark, may take a while)."""
        timeout = self._listener.bounds.send_timeout_s
        self._send_timer = self._loop.call_later(
            min(SEND_CHECK_SECONDS, timeout / 4), self._sending_checked, buffered, progress_at
        )

    def _sending_checked(self, buffered: tuple[int, int], progress_at: float) -> None:
        self._send_timer = None
        transport = self._transport
        if transport is None or not self._writing_paused:
            return
        now = self._loop.time()
        left = sending_progress(transport)
        if took_some(buffered, left):
            progress_at = now
        if now - progress_at >= self._listener.bounds.send_timeout_s:
            self._close_for("send_timeout")
            return
        self._watch_sending(left, progress_at)

    # -------------------------------------------------------- holding the reading ----
    def _busy(self) -> bool:
        """Whether a new request must wait: ``PIPELINED_REQUESTS`` already queued behind the
        one being handled, or the client not reading the answers written so far."""
        return self._writing_paused or len(self._inner._messages) >= PIPELINED_REQUESTS

    def _answered(self) -> bool:
        """Whether every request read so far has been answered: none queued, and aiohttp's
        handler waiting for the next one (its ``_waiter``, the idle state its own keep-alive
        timeout looks for), so every answer is written to the transport."""
        inner = self._inner
        waiter = inner._waiter
        return not inner._messages and waiter is not None and not waiter.done()

    def _hold(self) -> None:
        """Stop reading the socket until :meth:`_look` finds the connection free again."""
        self._held = True
        transport = self._transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()
        self._look_later()

    def _look_later(self) -> None:
        if self._poll_timer is None:
            self._poll_timer = self._loop.call_later(HOLD_POLL_SECONDS, self._look)

    def _look(self) -> None:
        self._poll_timer = None
        if self._transport is None or self._inner is None:
            return
        if self._when_answered is not None:
            if self._answered():
                then, self._when_answered = self._when_answered, None
                then()
            else:
                self._look_later()
            return
        if not self._held:
            return
        if self._busy():
            self._look_later()
            return
        self._held = False
        data, self._stash = self._stash, b""
        self._feed(data)
        inner, transport = self._inner, self._transport
        if self._held or self._phase is _Phase.CLOSING or inner is None or transport is None:
            return
        # aiohttp may hold the reading itself (a body its handler has not read yet).
        if not (inner._reading_paused or inner._buffer_paused) and not transport.is_reading():
            transport.resume_reading()

    def _after_answers(self, then: Callable[[], None], *, hold: bool) -> None:
        """Call ``then`` once every request read so far is answered; with ``hold``, read
        nothing meanwhile."""
        self._when_answered = then
        if hold:
            self._hold()
        else:
            self._look_later()

    # ------------------------------------------------------------------ the phases ----
    def _head(self, data: bytes) -> bytes:
        """Count and feed head bytes up to the blank line that ends the head; the rest is
        returned for the next phase."""
        if self._head_bytes == 0 and not self._carry:
            self._start_head_timer()
        seen = self._carry + data
        at = seen.find(HEAD_END)
        end = len(data) if at < 0 else at + len(HEAD_END) - len(self._carry)
        self._head_bytes += end
        if self._head_bytes > self._listener.bounds.max_header_bytes:
            self._close_for("header_bytes")
            return b""
        if at < 0:
            self._carry = seen[-(len(HEAD_END) - 1) :]
            queued = len(self._inner._messages)
            self._inner.data_received(data)
            if _parsed_request(self._inner, queued) is not None:
                # A request before its blank line: the parser refused the head (a bare LF,
                # a bad line) and answers 400 itself.
                self._end_head()
                self._phase = _Phase.PASS
            return b""
        head, rest = data[:end], data[end:]
        queued = len(self._inner._messages)
        self._inner.data_received(head)
        parsed = _parsed_request(self._inner, queued)
        if parsed is None:
            # No request came of it (blank lines before a request line, which RFC 9112
            # section 2.2 lets a server ignore): still the same head, still counted.
            self._carry = b""
            return rest
        self._end_head()
        message, payload = parsed
        if not isinstance(message, RawRequestMessage):
            self._phase = _Phase.PASS  # aiohttp answers its parse error
            return rest
        if message.upgrade:
            # No fleetreg route switches protocols (no WebSocket), and after an upgrade
            # request aiohttp buffers what follows without bound until the answer (then
            # parses it with per-line limits only). RFC 9110 section 7.8 lets a server
            # ignore Upgrade: the request (its body too, bounded as any) is answered like
            # any other, nothing after it is read into aiohttp, and the connection closes
            # after the answer.
            self._last = True
            if payload.is_eof():
                self._last_read()
                return b""
        if payload.is_eof():
            self._phase = _Phase.HEAD
        elif message.chunked:
            self._phase, self._payload = _Phase.CHUNKED, payload
            self._start_body_timer()
        else:
            length = message.headers.get("Content-Length", "")
            if not length.isdigit():  # aiohttp would have refused it; nothing to follow then
                self._phase = _Phase.PASS
            else:
                self._phase, self._body_left = _Phase.BODY, int(length)
                self._start_body_timer()
        return rest

    def _body(self, data: bytes) -> bytes:
        piece, rest = data[: self._body_left], data[self._body_left :]
        self._body_left -= len(piece)
        self._window_bytes += len(piece)
        self._inner.data_received(piece)
        if self._body_left == 0:
            self._end_body()
        return rest

    def _chunked(self, data: bytes) -> bytes:
        self._window_bytes += len(data)
        self._inner.data_received(data)
        if self._payload is not None and self._payload.is_eof():
            self._end_body()
            if self._phase is _Phase.LAST:
                return b""  # what followed in this read went to aiohttp's tail: one read at most
            # A chunked body ends with a blank line: what follows it in the same read is the
            # start of a pipelined request's head, counted as such.
            after = data.rsplit(HEAD_END, 1)[-1] if HEAD_END in data else b""
            if after:
                self._start_head_timer()
                self._head_bytes = len(after)
                self._carry = after[-(len(HEAD_END) - 1) :]
        return b""

    # ---------------------------------------------------------------------- timers ----
    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(
                self._listener.bounds.header_timeout_s, self._close_for, "header_timeout"
            )

    def _end_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._head_bytes, self._carry = 0, b""

    def _start_body_timer(self) -> None:
        self._window_bytes = 0
        self._window_reading = self._transport is not None and self._transport.is_reading()
        self._body_timer = self._loop.call_later(self._listener.bounds.body_timeout_s, self._body_window)

    def _end_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._payload, self._body_left, self._phase = None, 0, _Phase.HEAD
        if self._last:
            self._last_read()

    def _last_read(self) -> None:
        """The upgrade request is read: drop what follows, close once it is answered."""
        self._phase = _Phase.LAST
        self._stash = b""
        # It keeps reading (what arrives is dropped): closing on unread data would send a
        # reset, which can destroy the answer before the client reads it.
        self._after_answers(self._close_quietly, hold=False)

    def _body_window(self) -> None:
        bounds = self._listener.bounds
        transport = self._transport
        # A window the service's own back-pressure began or ended in is not the client's.
        paused = not self._window_reading or (transport is not None and not transport.is_reading())
        if paused or self._window_bytes >= bounds.body_min_bytes_per_s * bounds.body_timeout_s:
            self._start_body_timer()
            return
        self._body_timer = None
        self._close_for("body_rate")

    # ------------------------------------------------------------------- closing ----
    def _close_quietly(self) -> None:
        if self._transport is not None:
            self._transport.close()  # the answers written so far are sent first

    def _close_for(self, reason: str) -> None:
        bounds = self._listener.bounds
        HTTP_CONNECTIONS_CLOSED.labels(self._listener.service, reason).inc()
        self._listener.log.warning(
            reason, "closed a connection past a bound", source=self._source, phase=self._phase.value
        )
        if reason == "header_bytes":
            answer = error_answer(
                431,
                "headers_too_large",
                f"the request line and headers are larger than {bounds.max_header_bytes} bytes",
            )
        elif reason == "header_timeout":
            answer = error_answer(
                408, "timeout", f"the request's headers did not arrive within {bounds.header_timeout_s:g} s"
            )
        else:
            # Mid-body, aiohttp's handler owns the answer; the client is not waiting for one.
            # Past the send timeout, the client reads nothing: what is queued for it is dropped.
            self._phase = _Phase.CLOSING
            self._send_timer = None
            if self._transport is not None:
                self._transport.abort()
            return
        if self._inner is not None and not self._answered():
            # Earlier requests of this connection are still being answered: the error is
            # written after their answers, never before (a client reading answers in order
            # would take it for an earlier request's). Nothing more is read meanwhile.
            self._phase = _Phase.CLOSING
            self._cancel_request_timers()
            self._stash = b""
            self._after_answers(functools.partial(self._answer_and_close, answer), hold=True)
            return
        self._answer_and_close(answer)

    def _cancel_request_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _answer_and_close(self, answer: bytes | None) -> None:
        """Answer (when nothing else is being answered), drop what still arrives, close at
        the end of the client's request or after ``LINGER_SECONDS``."""
        self._phase = _Phase.CLOSING
        self._cancel_request_timers()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._held:  # what the client still sends is read and dropped until the close
            self._held, self._stash = False, b""
            if not transport.is_reading():
                transport.resume_reading()
        if answer is not None:
            transport.write(answer)
        self._close_timer = self._loop.call_later(LINGER_SECONDS, transport.close)


def _parsed_request(inner: Any, queued_before: int) -> tuple[object, StreamReader] | None:
    """The request aiohttp's handler parsed from the bytes just fed (``RequestHandler``
    queues each parsed request, with its payload, in ``_messages`` until its own task
    takes it; none is taken during ``data_received``), or None."""
    messages = inner._messages
    if len(messages) <= queued_before:
        return None
    message, payload = messages[-1]
    return message, payload


class BoundedSite(web.TCPSite):
    """``web.TCPSite`` whose connections are :class:`GuardedConnection`\\ s, and whose TLS
    handshake and shutdown last at most ``header_timeout_s``. Started, stopped and cleaned
    up by its runner like any site."""

    __slots__ = ("_listener",)

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        bounds: ConnectionBounds,
        limits: ConnectionLimits,
        service: str,
        ssl_context: Any = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        server = runner.server
        if server is None:
            raise RuntimeError("call runner.setup() before making a site")
        self._listener = Listener(server=server, bounds=bounds, limits=limits, service=service)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner (not TCPSite's start)
        loop = asyncio.get_running_loop()
        # asyncio refuses TLS timeouts without TLS.
        handshake_s = self._listener.bounds.header_timeout_s if self._ssl_context is not None else None
        listener = self._listener
        self._server = await loop.create_server(
            lambda: GuardedConnection(listener),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=handshake_s,
            ssl_shutdown_timeout=handshake_s,
        )
        if self._ssl_context is not None:  # accepted connections inherit the listener's buffer
            for sock in self._server.sockets:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TLS_RECEIVE_BUFFER_BYTES)


def process_limits(bounds: ConnectionBounds) -> ConnectionLimits:
    """The caps every public listener of this process shares (``max_connections`` derived
    from the file-descriptor limit when 0)."""
    return ConnectionLimits(
        per_source=bounds.max_connections_per_source,
        total=process_connection_cap(bounds.max_connections, fd_soft_limit(), memory_limit()),
    )
