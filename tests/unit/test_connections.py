"""The connection guard's bookkeeping and its reading of aiohttp, without sockets: the caps,
the derived per-process cap, sources, settings, and a GuardedConnection fed bytes through an
in-memory transport (heads split from bodies, bounds crossed, requests still answered)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from shared import connections
from shared.connections import (
    ConnectionLimits,
    GuardedConnection,
    Listener,
    process_connection_cap,
    source_of,
)
from shared.settings import ConnectionBounds, HttpSettings, SettingsError, load

MiB = 1024 * 1024


def test_the_caps_per_source_and_per_process() -> None:
    limits = ConnectionLimits(per_source=2, total=3)
    assert limits.admit("a") is None and limits.admit("a") is None
    assert limits.admit("a") == "source"  # a third from one address
    assert limits.admit("b") is None  # another address still gets in
    assert limits.admit("c") == "process"  # but not past the process's total
    assert (limits.open, limits.of("a"), limits.sources) == (3, 2, 2)
    limits.release("a")
    assert limits.admit("a") is None
    for source in ("a", "a", "b"):
        limits.release(source)
    assert (limits.open, limits.sources) == (0, 0)  # nothing left behind by departed sources


def test_the_last_quarter_of_the_process_cap_is_kept_for_small_sources() -> None:
    limits = ConnectionLimits(per_source=1000, total=80)
    crowd = [limits.admit("crowd") for _ in range(70)]
    assert crowd.count(None) == 60 and set(crowd[60:]) == {"process"}  # three quarters, then 503
    assert [limits.admit(f"device-{i}") for i in range(20)] == [None] * 20  # the reserve
    assert limits.admit("another") == "process"  # the cap itself holds
    for i in range(20):
        limits.release(f"device-{i}")
    # A source with a few connections still gets into the reserve, up to the small-source bound.
    assert [limits.admit("office") for _ in range(16)] == [None] * 16
    assert limits.admit("office") == "process"


def test_the_process_cap_is_derived_from_descriptors_and_memory() -> None:
    assert process_connection_cap(0, 1024, None) == 768
    assert process_connection_cap(0, 20_000, None) == 17_500
    assert process_connection_cap(0, 20_000, 512 * MiB) == 1024  # Compose's and Kubernetes' intake
    assert process_connection_cap(0, 20_000, 1024 * MiB) == 2389  # ingestion
    assert process_connection_cap(0, 100, None) == 64  # never nothing
    assert process_connection_cap(5000, 1024, 512 * MiB) == 5000  # a configured cap is taken as is


def test_the_memory_limit_of_cgroup_v2_and_v1(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text("536870912\n")
    assert connections.memory_limit((v2, v1)) == 512 * MiB
    v2.write_text("max\n")
    assert connections.memory_limit((v2, v1)) is None
    v1.write_text("9223372036854771712\n")  # v1's "no limit"
    assert connections.memory_limit((tmp_path / "absent", v1)) is None
    assert connections.memory_limit((tmp_path / "absent",)) is None


def test_sources_are_addresses_or_ipv6_prefixes() -> None:
    assert source_of(("203.0.113.7", 50000)) == "203.0.113.7"
    assert source_of(("2001:db8:1:2:aaaa::1", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("2001:db8:1:2:bbbb::9", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("::ffff:198.51.100.1", 1, 0, 0)) == "198.51.100.1"
    assert source_of(None) == "unknown"


def test_the_settings_and_their_names() -> None:
    settings = load(lambda env: HttpSettings.from_env(env, "FLEETREG_HTTP", 1, service="intake"), {})
    assert settings.connections == ConnectionBounds()
    assert settings.connections.max_connections_per_source >= 1000  # NAT sites, bench, agents
    env = {
        "FLEETREG_HTTP_MAX_HEADER_BYTES": "32768",
        "FLEETREG_HTTP_BODY_TIMEOUT_SECONDS": "60",
        "FLEETREG_HTTP_SEND_TIMEOUT_SECONDS": "90",
    }
    bounds = load(
        lambda env: HttpSettings.from_env(env, "FLEETREG_HTTP", 1, service="intake"), env
    ).connections
    assert (bounds.max_header_bytes, bounds.body_timeout_s, bounds.send_timeout_s) == (32768, 60.0, 90.0)
    with pytest.raises(SettingsError, match="FLEETREG_HTTP_KEEPALIVE_SECONDS='long' is not a number"):
        load(
            lambda env: HttpSettings.from_env(env, "FLEETREG_HTTP", 1, service="intake"),
            {"FLEETREG_HTTP_KEEPALIVE_SECONDS": "long"},
        )
    with pytest.raises(SettingsError, match="FLEETREG_HTTP_MAX_HEADER_BYTES=10 is below its minimum"):
        load(
            lambda env: HttpSettings.from_env(env, "FLEETREG_HTTP", 1, service="intake"),
            {"FLEETREG_HTTP_MAX_HEADER_BYTES": "10"},
        )


# ---------------------------------------------------- a connection without sockets ----
class MemoryTransport(asyncio.Transport):
    """What the guard and aiohttp's handler use of a transport, in memory."""

    def __init__(self, peer: str = "192.0.2.1") -> None:
        super().__init__()
        self.peer = peer
        self.written = b""
        self.closed = False
        self.aborted = False
        self.reading = True
        self.buffered = 0  # what get_write_buffer_size says waits for the client

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.peer, 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered


async def echo_length(request: web.Request) -> web.Response:
    return web.Response(text=str(len(await request.read())))


async def guarded(
    bounds: ConnectionBounds, limits: ConnectionLimits | None = None
) -> tuple[web.Server, Listener]:
    server = web.Server(echo_length)
    listener = Listener(server=server, bounds=bounds, limits=limits or ConnectionLimits(10, 10), service="t")
    return server, listener


async def exchange(listener: Listener, *pieces: bytes, peer: str = "192.0.2.1") -> MemoryTransport:
    transport = MemoryTransport(peer)
    connection = GuardedConnection(listener)
    connection.connection_made(transport)
    for piece in pieces:
        connection.data_received(piece)
        await asyncio.sleep(0.01)  # the handler's task answers
    connection.connection_lost(None)
    await asyncio.sleep(0)
    return transport


def statuses(transport: MemoryTransport) -> list[int]:
    """The status of every answer written, in order."""
    return [int(chunk[:3]) for chunk in transport.written.split(b"HTTP/1.1 ")[1:]]


def test_aiohttp_still_queues_parsed_requests_where_the_guard_reads_them() -> None:
    # shared/connections.py reads RequestHandler._messages; an aiohttp upgrade that moves it fails here.
    assert "_messages" in web.RequestHandler.__slots__
    # ... and its idle state (_waiter) and its own holds on the reading (base_protocol.py).
    assert "_waiter" in web.RequestHandler.__slots__
    assert {"_reading_paused", "_buffer_paused"} <= set(web.RequestHandler.__mro__[1].__slots__)


async def test_requests_heads_bodies_chunks_and_pipelining_pass_untouched() -> None:
    _, listener = await guarded(ConnectionBounds(max_header_bytes=1024))
    big_body = b"x" * 5000  # a body far past the header bound is still a body
    transport = await exchange(
        listener,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + big_body[:100],
        big_body[100:] + b"GET / HTTP/1.1\r\nHo",  # the body's end and the next head, in one read
        b"st: h\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"0\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    assert statuses(transport) == [200, 200, 200, 200]
    assert transport.written.count(b"\r\n\r\n5000") == 1 and transport.written.count(b"\r\n\r\n3") == 1


async def test_a_head_past_the_bound_is_answered_431_even_split_across_reads() -> None:
    _, listener = await guarded(ConnectionBounds(max_header_bytes=1024))
    line = b"X-Pad: " + b"a" * 200 + b"\r\n"
    transport = await exchange(listener, b"GET / HTTP/1.1\r\n", *([line] * 6))
    assert statuses(transport) == [431]
    assert b'"error":"headers_too_large"' in transport.written
    # Exactly at the bound passes (the blank line straddling two reads).
    head = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX: "
    head += b"a" * (1024 - len(head) - 4) + b"\r\n\r"
    transport = await exchange(listener, head, b"\n")
    assert statuses(transport) == [200]


async def test_one_long_header_line_is_bounded_by_the_total_alone() -> None:
    """A single header line longer than aiohttp's default per-line limit (8,190 bytes) but
    under the total bound reaches the service; past the total it is the JSON 431, never
    aiohttp's text/plain 400 that quotes the line (a bearer token) back to its sender."""
    bounds = ConnectionBounds()  # 16 KiB in total, the default
    server = web.Server(echo_length, **connections.handler_args(bounds))
    listener = Listener(server=server, bounds=bounds, limits=ConnectionLimits(10, 10), service="t")
    token = b"Authorization: Bearer " + b"k" * 10_000 + b"\r\n"
    transport = await exchange(listener, b"GET / HTTP/1.1\r\nHost: h\r\n" + token + b"\r\n")
    assert statuses(transport) == [200]
    token = b"Authorization: Bearer " + b"k" * 17_000 + b"\r\n"
    # In pieces, as from a socket: the handler's task is waiting before the line arrives.
    transport = await exchange(listener, b"GET / HTTP/1.1\r\nHost: h\r\n", token, b"\r\n")
    assert statuses(transport) == [431]
    assert b'"error":"headers_too_large"' in transport.written
    assert b"kkkk" not in transport.written


@pytest.mark.parametrize(
    "head",
    [
        b"Authorization: Bearer s3cr3t-S3CR3T\x00x\r\n",  # a NUL in the value
        b"Authorization: Bearer s3cr3t-S3CR3T\x01\r\n",  # another control character
        b"Authorization : Bearer s3cr3t-S3CR3T\r\n",  # a space before the colon
        b"Authorization: Bearer s3cr3t-S3CR3T\r\nX\x00: y\r\n",  # a bad header name after it
    ],
)
async def test_a_header_the_parser_refuses_is_a_json_400_quoting_nothing(head: bytes) -> None:
    """aiohttp's own 400 for a header its parser refuses is text/plain with the parser's
    message, which quotes the line: ``Authorization: Bearer <secret>`` went back to the
    sender (and to every proxy log). Now it is the services' JSON error, naming no byte of
    the request, whether the head comes in one read or in pieces."""
    bounds = ConnectionBounds()
    server = web.Server(echo_length, **connections.handler_args(bounds))
    listener = Listener(server=server, bounds=bounds, limits=ConnectionLimits(10, 10), service="t")
    request = b"GET / HTTP/1.1\r\nHost: h\r\n" + head + b"\r\n"
    for pieces in ([request], [request[:30], request[30:]]):
        transport = await exchange(listener, *pieces)
        status_line, _, rest = transport.written.partition(b"\r\n")
        assert status_line.endswith(b" 400 Bad Request"), transport.written
        headers, _, body = rest.partition(b"\r\n\r\n")
        assert b"Content-Type: application/json" in headers
        answer = orjson.loads(body)
        assert (answer["error"], answer["rule"]) == ("bad_request", "http_syntax")
        assert b"S3CR3T" not in transport.written and b"Authorization" not in transport.written
        assert transport.closed  # aiohttp closes after a parse error, as before


async def test_a_slow_head_is_answered_408_and_a_slow_body_cut() -> None:
    _, listener = await guarded(
        ConnectionBounds(header_timeout_s=0.05, body_timeout_s=0.05, body_min_bytes_per_s=100)
    )
    transport = MemoryTransport()
    connection = GuardedConnection(listener)
    connection.connection_made(transport)
    connection.data_received(b"GET / HTTP/1.1\r\n")
    await asyncio.sleep(0.1)
    assert statuses(transport) == [408]
    body = MemoryTransport()
    connection = GuardedConnection(listener)
    connection.connection_made(body)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nab")
    await asyncio.sleep(0.1)
    assert body.aborted


async def test_a_body_the_service_stopped_reading_is_not_cut() -> None:
    """aiohttp pauses the transport when a handler leaves a body unread (its back-pressure):
    the client is not slow then, and the body-rate bound does not count that time."""
    release = asyncio.Event()

    async def busy(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text=str(len(await request.read())))

    bounds = ConnectionBounds(body_timeout_s=0.05, body_min_bytes_per_s=100_000)
    server = web.Server(busy, **connections.handler_args(bounds))
    listener = Listener(server=server, bounds=bounds, limits=ConnectionLimits(10, 10), service="t")
    transport = MemoryTransport()
    connection = GuardedConnection(listener)
    connection.connection_made(transport)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 300000\r\n\r\n" + b"x" * 200_000)
    await asyncio.sleep(0.2)
    assert not transport.reading and not transport.aborted  # paused by aiohttp, and kept
    release.set()
    await asyncio.sleep(0.01)
    connection.data_received(b"x" * 100_000)
    await asyncio.sleep(0.05)
    assert statuses(transport) == [200] and transport.written.endswith(b"300000")
    connection.connection_lost(None)


async def test_past_a_cap_503_with_retry_after_and_the_slot_is_given_back() -> None:
    limits = ConnectionLimits(per_source=1, total=5)
    _, listener = await guarded(ConnectionBounds(), limits)
    first = GuardedConnection(listener)
    first.connection_made(MemoryTransport("198.51.100.1"))
    refused = await exchange(listener, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", peer="198.51.100.1")
    assert statuses(refused) == [503] and b"\r\nRetry-After: 5\r\n" in refused.written
    assert refused.closed  # at the end of the refused request, not after the linger
    assert limits.open == 1  # the refused one was never counted
    other = await exchange(
        listener, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", peer="198.51.100.2"
    )
    assert statuses(other) == [200]
    first.connection_lost(None)
    assert (limits.open, limits.sources) == (0, 0)


# ------------------------------------ upgrades, pipelining, answers never read ----
def gated_server() -> tuple[web.Server, asyncio.Event]:
    """A server whose handler answers only once the event is set (a request in progress)."""
    release = asyncio.Event()

    async def gated(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text=str(len(await request.read())))

    return web.Server(gated), release


def connect(listener: Listener) -> tuple[GuardedConnection, MemoryTransport]:
    transport = MemoryTransport()
    connection = GuardedConnection(listener)
    connection.connection_made(transport)
    return connection, transport


async def test_an_upgrade_request_is_answered_then_the_connection_closes_unread() -> None:
    """Issue 21: after ``Connection: Upgrade`` the guard let every later byte through, and
    aiohttp buffered a second, unfinished request without bound. Now the upgrade request
    is answered as any other, what follows is dropped unread, and the connection closes."""
    _, listener = await guarded(ConnectionBounds(max_header_bytes=1024))
    connection, transport = connect(listener)
    inner = connection._inner
    connection.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    line = b"X-Pad: " + b"a" * 8000 + b"\r\n"
    connection.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n")
    for _ in range(128):  # 1 MB of an unfinished second request
        connection.data_received(line)
    assert inner._message_tail == b"" and len(inner._messages) == 1  # only the upgrade request
    await asyncio.sleep(0.2)
    assert statuses(transport) == [200] and transport.closed
    connection.connection_lost(None)


async def test_an_upgrade_request_with_a_body_gets_its_body_and_its_answer() -> None:
    _, listener = await guarded(ConnectionBounds())
    upgrade = b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
    for framed in (
        b"Content-Length: 5\r\n\r\nabcde",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
    ):
        connection, transport = connect(listener)
        request = upgrade + framed
        connection.data_received(request[:70])
        connection.data_received(request[70:] + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")  # never read
        await asyncio.sleep(0.2)
        assert statuses(transport) == [200] and transport.written.endswith(b"\r\n\r\n5") and transport.closed
        connection.connection_lost(None)


async def test_pipelined_requests_past_a_few_stop_the_reading_until_answered() -> None:
    server, release = gated_server()
    listener = Listener(
        server=server, bounds=ConnectionBounds(), limits=ConnectionLimits(10, 10), service="t"
    )
    connection, transport = connect(listener)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 20)
    await asyncio.sleep(0.1)
    # One in progress, PIPELINED_REQUESTS queued, the rest not parsed; the socket not read.
    assert len(connection._inner._messages) == connections.PIPELINED_REQUESTS
    assert not transport.reading
    release.set()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if len(statuses(transport)) == 20:
            break
    assert statuses(transport) == [200] * 20 and transport.reading  # all answered, in order
    connection.connection_lost(None)


async def test_a_client_not_reading_its_answers_is_not_read_and_is_cut_after_the_send_timeout() -> None:
    _, listener = await guarded(ConnectionBounds(send_timeout_s=0.3))
    connection, transport = connect(listener)
    connection.pause_writing()  # the transport's buffer is past its high-water mark
    connection.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await asyncio.sleep(0.1)
    assert not transport.reading and not connection._inner._messages and statuses(transport) == []
    connection.resume_writing()  # the client read: progress, the wait starts over
    await asyncio.sleep(0.1)
    assert statuses(transport) == [200] and transport.reading
    connection.pause_writing()
    await asyncio.sleep(0.5)
    assert transport.aborted
    connection.connection_lost(None)


async def test_a_client_taking_a_byte_now_and_then_is_not_cut_however_slowly_it_reads() -> None:
    """Issue 22: the send timeout counts from the last byte taken, not from the pause (the
    buffer may take long to drain to its low-water mark); a client that stops is cut."""
    _, listener = await guarded(ConnectionBounds(send_timeout_s=0.3))
    connection, transport = connect(listener)
    transport.buffered = 100_000
    connection.pause_writing()
    for _ in range(8):  # 0.8 s paused, well past the send timeout, a byte taken every 0.1 s
        await asyncio.sleep(0.1)
        transport.buffered -= 1
    assert not transport.aborted
    await asyncio.sleep(0.5)  # then nothing
    assert transport.aborted
    connection.connection_lost(None)


async def test_a_bound_crossed_behind_a_pipelined_request_is_answered_after_it() -> None:
    """Issue 21: the 431 was written ahead of the previous request's answer, so a client
    reading in order took it for the answer to its earlier request."""
    server, release = gated_server()
    listener = Listener(
        server=server,
        bounds=ConnectionBounds(max_header_bytes=1024),
        limits=ConnectionLimits(10, 10),
        service="t",
    )
    connection, transport = connect(listener)
    oversized = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Pad: " + b"a" * 2000 + b"\r\n"
    connection.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab" + oversized)
    await asyncio.sleep(0.1)
    assert transport.written == b"" and not transport.reading  # the first is not answered yet
    release.set()
    await asyncio.sleep(0.2)
    assert statuses(transport) == [200, 431]
    assert transport.written.index(b"\r\n\r\n2") < transport.written.index(b"431")
    connection.connection_lost(None)


async def test_the_heap_is_trimmed_once_a_crowd_left_either_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    """The round of the ``heap_trim`` periodic job (shared/http.py runs it every
    TRIM_EVERY_SECONDS): one malloc_trim when a crowd left the public or the operations
    listener, and that listener's peak taken down to what is open now."""
    trims: list[int] = []

    def fake_trim(pad: int) -> int:
        trims.append(pad)
        return 1

    monkeypatch.setattr(connections, "_malloc_trim", lambda: fake_trim)
    public, ops = ConnectionLimits(per_source=1000, total=1000), ConnectionLimits(per_source=1000, total=1000)
    trim_round = connections.heap_trimmer(public, ops)
    assert trim_round is not None
    crowd = connections.TRIM_AFTER_CONNECTIONS + 5
    for n in range(crowd):
        assert public.admit(f"10.0.0.{n}") is None
    await trim_round()
    assert trims == []  # the crowd is still here
    for n in range(crowd - 2):
        public.release(f"10.0.0.{n}")
    await trim_round()
    assert trims == [0] and (public.peak, ops.peak) == (2, 0)
    await trim_round()
    assert trims == [0]  # nothing left since the last round
    monkeypatch.setattr(connections, "_malloc_trim", lambda: None)
    assert connections.heap_trimmer(public, ops) is None  # not glibc: no job
