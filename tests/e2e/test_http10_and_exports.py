"""HTTP/1.0 answered on every API, and exports cut only when the client takes nothing
(issue 22).

nginx speaks HTTP/1.0 to its upstream by default (``proxy_http_version``), and the device
export answered it 500 (a chunked body, which HTTP/1.0 does not have). Here raw HTTP/1.0
requests (the request bytes written by hand, the answers read by the standard library's
parser, http.client, which honours Content-Length, chunks and close, and raises
IncompleteRead for a short body) go to every API's representative routes on the running
services, with and without ``Connection: keep-alive``.

An export used to be cut when one write of a 1,000-row batch took longer than
FLEETREG_EXPORT_STALL_SECONDS, so a slow but steady reader lost it. Now only a client that
takes no byte for that long is cut, and the CLI reports such a cut as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import os
import socket
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.support.api import Operator, new_operator
from tests.support.bulk import bulk_product, csv_rows, csv_text
from tests.support.system import LOGS, ROOT, ServiceProcess, System

pytestmark = pytest.mark.e2e

STALL_S = 2.0


def _slow_fleet() -> int:
    """Devices of the slow-reader test, each about 2 KB as JSON lines (long name and
    categories): 6 MB, or 2 MB more than the largest send buffer the kernel tunes a socket
    to (net.ipv4.tcp_wmem, 4 MB by default), so the service's writes really wait for the
    reader; a 1,000-row batch is 2 MB."""
    largest = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return max(3000, (largest + 2_000_000) // 2000)


SLOW_FLEET = _slow_fleet()


@dataclass
class Answer:
    status: int
    version: int  # 10 or 11, as the status line says
    headers: http.client.HTTPMessage
    body: bytes
    closed: bool  # the answer said the connection closes after it (and it did)


def request10(
    method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"", keep_alive: bool = False
) -> bytes:
    """The bytes of an HTTP/1.0 request (``Connection: keep-alive`` if asked)."""
    lines = [
        f"{method} {path} HTTP/1.0",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    if keep_alive:
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _exchange(url: str, requests: list[bytes], context: ssl.SSLContext | None) -> list[Answer]:
    """Each request in turn on one connection, each answer read to its end; stops after an
    answer that closes the connection (and checks that the server did close it)."""
    where = urlsplit(url)
    assert where.hostname is not None and where.port is not None
    answers = []
    with contextlib.ExitStack() as held:
        sock = held.enter_context(socket.create_connection((where.hostname, where.port), timeout=30))
        if context is not None:
            sock = held.enter_context(context.wrap_socket(sock, server_hostname=where.hostname))
        for request in requests:
            sock.sendall(request)
            response = http.client.HTTPResponse(sock, method=request.split(b" ", 1)[0].decode())
            response.begin()
            body = response.read()  # IncompleteRead if shorter than its length or last chunk
            answers.append(
                Answer(response.status, response.version, response.headers, body, response.will_close)
            )
            if response.will_close:
                # (a TLS connection closed without close_notify is closed all the same)
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    assert sock.recv(1) == b"", "the answer said close, the server kept the connection"
                break
    return answers


async def exchange(url: str, *requests: bytes, context: ssl.SSLContext | None = None) -> list[Answer]:
    return await asyncio.to_thread(_exchange, url, list(requests), context)


class _Kept(io.BytesIO):
    """Bytes read once, parsed answer after answer (http.client closes what it read from)."""

    def close(self) -> None:
        pass

    def makefile(self, mode: str) -> _Kept:  # what http.client asks of a socket
        return self


def _pipelined(url: str, requests: list[bytes]) -> list[Answer]:
    """Every request written at once (pipelined), everything read until the server
    closes, then parsed answer after answer."""
    where = urlsplit(url)
    assert where.hostname is not None and where.port is not None
    received = b""
    with socket.create_connection((where.hostname, where.port), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        while piece := sock.recv(65536):
            received += piece
    kept = _Kept(received)
    answers = []
    for request in requests:
        response = http.client.HTTPResponse(kept, method=request.split(b" ", 1)[0].decode())
        response.begin()
        body = response.read()
        answers.append(Answer(response.status, response.version, response.headers, body, response.will_close))
    assert kept.read() == b"", "more answers than requests"
    return answers


def well_framed(answer: Answer, *, keep_alive: bool) -> None:
    """A complete HTTP/1.0 answer: no chunks, a length or the connection closed, no 5xx;
    kept alive only when the client asked and the length frames the body."""
    assert answer.status < 500, (answer.status, answer.body[:300])
    assert answer.version == 10, answer.version
    assert "Transfer-Encoding" not in answer.headers, answer.headers
    length = answer.headers.get("Content-Length")
    assert length is not None or answer.closed, answer.headers
    if length is not None:
        assert int(length) == len(answer.body)
    assert answer.closed == (not keep_alive), (answer.closed, answer.headers)


@pytest.fixture
def logs() -> dict[str, int]:
    """Where each service log ends before the test: what it writes is read after."""
    return {path.name: path.stat().st_size for path in LOGS.glob("*.log")}


def logged_since(offsets: dict[str, int]) -> str:
    return "".join(
        path.read_text(errors="replace")[offsets.get(path.name, 0) :] for path in LOGS.glob("*.log")
    )


async def test_every_api_answers_http_1_0_completely_with_and_without_keep_alive(
    system: System, operator: Operator, session: aiohttp.ClientSession, logs: dict[str, int]
) -> None:
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    hardware_id = f"h10-{uuid.uuid4().hex[:8]}"
    json_type = {"Content-Type": "application/json"}

    # The device API: registration (polled until final), then manifest, file, ready and
    # heartbeat on one kept-alive connection.
    claim = json.dumps({"bulk_identification_code": code, "hardware_id": hardware_id}).encode()
    (answer,) = await exchange(system.device_url, request10("POST", "/v1/registrations", json_type, claim))
    well_framed(answer, keep_alive=False)
    registered = json.loads(answer.body)
    deadline = time.monotonic() + 30
    while registered.get("status") == "pending" and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        (answer,) = await exchange(
            system.device_url, request10("GET", f"/v1/registrations/{registered['request_id']}")
        )
        well_framed(answer, keep_alive=False)
        registered = json.loads(answer.body)
    assert answer.status == 200 and "device_secret" in registered, registered
    device = registered["device_id"]
    secret = {"Authorization": f"Bearer {registered['device_secret']}"}
    (manifest,) = await exchange(
        system.device_url, request10("GET", f"/v1/devices/{device}/manifest", secret)
    )
    well_framed(manifest, keep_alive=False)
    file_path = urlsplit(json.loads(manifest.body)["files"][0]["url"]).path
    answers = await exchange(
        system.device_url,
        request10("GET", f"/v1/devices/{device}/manifest", secret, keep_alive=True),
        request10("GET", file_path, secret, keep_alive=True),
        request10("POST", f"/v1/devices/{device}/ready", secret, keep_alive=True),
        request10("POST", f"/v1/devices/{device}/heartbeat", secret, keep_alive=True),
        request10("POST", f"/v1/devices/{device}/heartbeat", secret),  # the last one closes
    )
    assert [a.status for a in answers] == [200, 200, 202, 202, 202]
    for one in answers[:-1]:
        well_framed(one, keep_alive=True)
    well_framed(answers[-1], keep_alive=False)
    assert answers[0].body == manifest.body and answers[1].body  # the file, to its length
    # HTTP/1.0 wants a Content-Length on a POST; without one the body is empty, not awaited.
    bare = f"POST /v1/devices/{device}/heartbeat HTTP/1.0\r\nHost: 127.0.0.1\r\n"
    bare += f"Authorization: {secret['Authorization']}\r\n\r\n"
    (answer,) = await exchange(system.device_url, bare.encode())
    well_framed(answer, keep_alive=False)
    assert answer.status == 202

    # The operator API: list, export (both formats), get; alone and kept alive.
    key = {"Authorization": f"Bearer {operator.api_key}"}
    for alive in (False, True):
        answers = await exchange(
            system.operator_url,
            request10("GET", "/v1/devices?limit=10", key, keep_alive=alive),
            request10("GET", "/v1/devices/export?format=csv", key, keep_alive=alive),
            request10("GET", "/v1/devices/export?format=jsonl", key, keep_alive=alive),
            request10("GET", f"/v1/devices/{device}", key, keep_alive=alive),
        )
        assert [a.status for a in answers] == ([200] * 4 if alive else [200])
        for one in answers:
            well_framed(one, keep_alive=alive)
    listed, as_csv, as_jsonl, detail = answers
    assert [d["id"] for d in json.loads(listed.body)["devices"]] == [device]
    assert as_csv.body.decode().count("\r\n") == 2 and device in as_csv.body.decode()
    assert [json.loads(line)["id"] for line in as_jsonl.body.splitlines()] == [device]
    assert json.loads(detail.body)["id"] == device
    # HEAD: the export's headers and no body, so the next answer on the connection is whole.
    answers = await exchange(
        system.operator_url,
        request10("HEAD", "/v1/devices/export?format=csv", key, keep_alive=True),
        request10("GET", f"/v1/devices/{device}", key),
    )
    assert [a.status for a in answers] == [200, 200] and answers[0].body == b""
    assert answers[0].headers["Content-Type"].startswith("text/csv")
    assert json.loads(answers[1].body)["id"] == device

    # Pipelined: written at once, answered in order (the connection guard reads at most two
    # ahead), the last one closing the connection.
    answers = await asyncio.to_thread(
        _pipelined,
        system.operator_url,
        [
            request10("GET", f"/v1/devices/{device}", key, keep_alive=True),
            request10("GET", "/v1/devices/export?format=jsonl", key, keep_alive=True),
            request10("GET", "/v1/devices?limit=10", key, keep_alive=True),
            request10("GET", f"/v1/devices/{device}", key),
        ],
    )
    assert [a.status for a in answers] == [200] * 4
    for one in answers[:-1]:
        well_framed(one, keep_alive=True)
    well_framed(answers[-1], keep_alive=False)
    assert json.loads(answers[1].body)["id"] == device and json.loads(answers[3].body)["id"] == device
    (alone,) = await exchange(system.operator_url, request10("GET", "/v1/devices/export?format=csv", key))
    well_framed(alone, keep_alive=False)
    # The same export over HTTP/1.0 alone (its times may have moved: the heartbeats land).
    assert alone.body.splitlines()[0] == as_csv.body.splitlines()[0] and alone.body.count(b"\r\n") == 2

    # The bulk API's upload answer, the console's sign-in page, the reference protocol (https).
    product = await bulk_product(operator)
    rows = csv_text(csv_rows(3)).encode()
    (uploaded,) = await exchange(
        system.bulk_url,
        request10(
            "POST",
            f"/v1/bulk-registrations?product_id={product}&file_name=fleet.csv",
            {**key, "Content-Type": "text/csv"},
            rows,
        ),
    )
    well_framed(uploaded, keep_alive=False)
    assert uploaded.status == 201, uploaded.body
    (page,) = await exchange(system.operator_url, request10("GET", "/console/sign-in"))
    well_framed(page, keep_alive=False)
    assert page.status == 200 and b"</html>" in page.body
    (static,) = await exchange(system.operator_url, request10("GET", "/console/static/console.css"))
    well_framed(static, keep_alive=False)  # a file (aiohttp's FileResponse, sendfile)
    assert static.status == 200 and len(static.body) > 100
    compat = urlsplit(system.compat_url)
    context = ssl.create_default_context(cafile=str(system.tls_ca))
    answers = await exchange(
        f"https://{compat.netloc}",
        request10(
            "GET",
            f"{compat.path}/bulk/registration/device/friendly/configuration/{code}/{hardware_id}-c/",
            keep_alive=True,
        ),
        request10("GET", f"{compat.path}/openapi.yaml"),
        context=context,
    )
    assert [a.status for a in answers] == [200, 200]
    well_framed(answers[0], keep_alive=True)
    well_framed(answers[1], keep_alive=False)

    # Every service's metrics on its operations port.
    for process in system.services.values():
        (metrics,) = await exchange(process.ops_url, request10("GET", "/metrics"))
        well_framed(metrics, keep_alive=False)
        assert metrics.status == 200 and b"fleetreg_" in metrics.body

    logged = logged_since(logs)
    assert "Unhandled exception" not in logged and "Traceback" not in logged


# ------------------------------------------------------------------------------ stalls ----
@pytest.fixture
async def stalling(system: System) -> AsyncIterator[ServiceProcess]:
    """An operator instance whose exports end after STALL_S without a byte taken."""
    async with system.instance("operator", {"FLEETREG_EXPORT_STALL_SECONDS": str(STALL_S)}) as process:
        yield process


async def _large_fleet(session: aiohttp.ClientSession, pool: Pool, process: ServiceProcess) -> Operator:
    """An account of SLOW_FLEET devices of about 2 KB each as JSON lines, written straight
    into the registry (their content does not matter here, their size does)."""
    owner = await new_operator(session, pool, process.url)
    registration = await owner.product()
    await pool.execute(
        """INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id,
                                claimed_hardware_id, name, category_a, category_b, lifecycle)
           SELECT gen_random_uuid(), $1, $2, $3, 'slow-' || n, 'slow-' || n,
                  'Device ' || n || ' ' || repeat('n', 200), repeat('a', 800), repeat('b', 800),
                  'preregistered'
             FROM generate_series(1, $4::int) AS n""",
        owner.account_id,
        registration["product_id"],
        registration["id"],
        SLOW_FLEET,
    )
    return owner


def _read_slowly(url: str, api_key: str) -> tuple[bytes, float]:
    """The export read by a client with a small receive buffer, 512 KiB a second in
    bursts a second apart: a batch of 2 MB takes it 4 s, twice the stall time."""
    where = urlsplit(url)
    assert where.hostname is not None and where.port is not None
    started = time.monotonic()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(30)
        sock.connect((where.hostname, where.port))
        sock.sendall(
            f"GET /v1/devices/export?format=jsonl HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {api_key}\r\nConnection: close\r\n\r\n".encode()
        )
        response = http.client.HTTPResponse(sock, method="GET")
        response.begin()
        assert response.status == 200
        body = b""
        while piece := response.read(512 * 1024):  # IncompleteRead if the export is cut
            body += piece
            time.sleep(1.0)
    return body, time.monotonic() - started


async def test_a_slow_steady_reader_gets_the_whole_export_and_a_stopped_one_is_cut_and_reported(
    stalling: ServiceProcess, session: aiohttp.ClientSession, pool: Pool
) -> None:
    owner = await _large_fleet(session, pool, stalling)

    body, took = await asyncio.to_thread(_read_slowly, stalling.url, owner.api_key)
    lines = body.splitlines()
    assert len(lines) == SLOW_FLEET and len(body) > 5_000_000
    assert {json.loads(line)["hardware_id"] for line in lines} == {
        f"slow-{n}" for n in range(1, SLOW_FLEET + 1)
    }
    assert took > 2 * STALL_S  # it did read slowly (the writes waited on it)

    # The CLI through a relay that stops passing the export on (a client that stops
    # reading): the service ends the export after STALL_S; once the relay passes on what it
    # holds and the close, the CLI fails rather than leave a short export.
    log_from = (LOGS / f"{stalling.instance}.log").stat().st_size
    async with Relay(stalling.url) as relay:
        env = {
            **os.environ,
            "FLEETREG_ENDPOINTS_FILE": "/nonexistent",
            "FLEETREG_ADMIN_URL": relay.url,
            "FLEETREG_ADMIN_TOKEN": owner.api_key,
        }
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "devices",
            "export",
            "--format",
            "jsonl",
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        cut = await export_cut(stalling, log_from)
        stopped_for = time.monotonic() - relay.stopped_at
        relay.passing.set()
        out, err = await cli.communicate()
    assert cut and stopped_for >= STALL_S, stopped_for
    assert cli.returncode != 0, err
    assert b"did not complete" in err, err
    assert len(out.splitlines()) < SLOW_FLEET

    # Over HTTP/1.0 the cut is as plain: fewer bytes than the Content-Length announced.
    log_from = (LOGS / f"{stalling.instance}.log").stat().st_size
    async with Relay(stalling.url) as relay:
        key = {"Authorization": f"Bearer {owner.api_key}"}
        reading = asyncio.create_task(
            exchange(relay.url, request10("GET", "/v1/devices/export?format=jsonl", key))
        )
        assert await export_cut(stalling, log_from)
        relay.passing.set()
        with pytest.raises(http.client.IncompleteRead):
            await reading


async def export_cut(process: ServiceProcess, log_from: int, within_s: float = 20) -> bool:
    """Whether the instance logs an export ended early (past ``log_from`` in its log)."""
    log = LOGS / f"{process.instance}.log"
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if "device export ended early" in log.read_text(errors="replace")[log_from:]:
            return True
        await asyncio.sleep(0.2)
    return False


class Relay:
    """A TCP relay in front of a service that stops passing the service's bytes on once a
    device export is asked for (``passing`` cleared), and reads no more from the service
    meanwhile: its receive buffer is small, so the service's writes wait, as for a client
    that stopped reading."""

    def __init__(self, upstream: str) -> None:
        where = urlsplit(upstream)
        assert where.hostname is not None and where.port is not None
        self._upstream = (where.hostname, where.port)
        self.passing = asyncio.Event()
        self.passing.set()
        self.stopped_at = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, self._upstream)
        service_in, service_out = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        for task in (
            asyncio.create_task(self._pump(client_in, service_out, watch=True)),
            asyncio.create_task(self._pump(service_in, client_out, watch=False)),
        ):
            self._tasks.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, watch: bool) -> None:
        try:
            while piece := await source.read(16 * 1024):
                if not watch:  # the service's bytes wait while passing is cleared
                    await self.passing.wait()
                elif b"/v1/devices/export" in piece:
                    self.passing.clear()
                    self.stopped_at = time.monotonic()
                sink.write(piece)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()
