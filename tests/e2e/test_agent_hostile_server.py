"""The device agent (agent/fleetreg-agent) against a broken or hostile server, and with
hostile configuration values, under BusyBox ash and dash: a small aiohttp server on
loopback answers the agent's calls as each test says (no fleetreg behind it). Whatever the
server sends, the agent writes nothing outside its folders, runs none of it, forges no log
line, neither sleeps for ever nor dies of a number, reads no endless answer, and sends
every configured value to the server exactly as configured.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.agent import EXIT_FINAL, Agent

pytestmark = pytest.mark.e2e

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeServer:
    """The device API as a test scripts it: ``answer`` answers every call; ``calls`` holds
    each call's method, path and body."""

    url: str = ""
    answer: Answer | None = None
    calls: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls.append((request.method, request.path_qs, await request.read()))
        if self.answer is None:
            return web.Response(status=500, text="error internal\n")
        return await self.answer(request)


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = FakeServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


@pytest.fixture
def board(tmp_path: Path, shell: str, fake: FakeServer) -> Agent:
    root = tmp_path / "board"
    root.mkdir()
    return Agent(
        root,
        shell,
        {"SERVER_URL": fake.url, "CODE": "CODE-1", "HARDWARE_ID": "hw-1", "MAC": "02:00:00:00:00:01"},
    )


def text(status: int, lines: dict[str, str], headers: dict[str, str] | None = None) -> web.Response:
    """An answer in the plain-text form; a value that is not plain printable ASCII is sent
    as base64, as shared/plain_text.py does."""
    body = ""
    for key, value in lines.items():
        if value.isascii() and value.isprintable() and value.strip() == value and value:
            body += f"{key} {value}\n"
        else:
            body += f"{key}:base64 {base64.b64encode(value.encode()).decode()}\n"
    return web.Response(status=status, text=body, content_type="text/plain", headers=headers)


def provisioning_file(provisioning_id: str = "P-1") -> bytes:
    return f"#begin\n{provisioning_id}\nport=22\n#end\n".encode()


def ready(device_id: str = "d-1", files: list[tuple[str, str]] | None = None) -> dict[str, str]:
    """A ready registration answer with ``files`` (service, name) inline."""
    files = [("ssh", "01-ssh.conf")] if files is None else files
    content = provisioning_file()
    lines = {
        "status": "ready",
        "device_id": device_id,
        "device_secret": "s3cr3t",
        "hardware_id": "hw-1",
        "decision": "new",
        "manifest.files.count": str(len(files)),
    }
    for i, (service, name) in enumerate(files):
        lines |= {
            f"manifest.files.{i}.service": service,
            f"manifest.files.{i}.name": name,
            f"manifest.files.{i}.size": str(len(content)),
            f"manifest.files.{i}.sha256": hashlib.sha256(content).hexdigest(),
            f"manifest.files.{i}.provisioning_id": "P-1",
            f"manifest.files.{i}.content": content.decode(),
        }
    return lines


async def until_logged(board: Agent, fragment: str) -> str:
    for _ in range(400):
        log = board.run_log()
        if fragment in log:
            return log
        assert board.process is not None and board.process.returncode is None, log
        await asyncio.sleep(0.05)
    raise AssertionError(f"never logged {fragment!r}:\n{board.run_log()}")


async def test_server_text_never_forges_a_log_line_nor_drives_the_terminal(
    board: Agent, fake: FakeServer
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        reason = "bad code\x1b[2J\x1b]0;owned\x07\nfleetreg-agent: ready device_id=FORGED"
        return text(403, {"status": "refused", "reason_code": "unknown_code", "reason": reason})

    fake.answer = refuse
    refused = await board.boot()
    assert refused.code == EXIT_FINAL, refused.log
    assert refused.events == ["register", "refused"], refused.log
    assert not any(c in refused.log for c in "\x1b\x07\r"), repr(refused.log)
    assert "reason=bad code?[2J?]0;owned? fleetreg-agent: ready device_id=FORGED" in refused.log


@pytest.mark.parametrize("retry_after", ["1000000000000", "99999999999999999999999"])
async def test_a_servers_wait_is_at_most_a_day_and_no_number_ends_the_agent(
    board: Agent, fake: FakeServer, retry_after: str
) -> None:
    async def throttle(request: web.Request) -> web.Response:
        return text(
            429, {"error": "too_many_requests", "reason_code": "throttled"}, {"Retry-After": retry_after}
        )

    fake.answer = throttle
    await board.start()
    try:
        log = await until_logged(board, "register_throttled")
        await asyncio.sleep(0.3)  # a shell that fails on the number ends meanwhile
        assert board.process is not None and board.process.returncode is None, board.run_log()
    finally:
        assert await board.stop() == 0
    assert "register_throttled reason_code=throttled retry_after=86400\n" in log, log
    assert len(fake.calls) == 1  # waiting out the day, not calling again


async def test_a_pending_answers_wait_is_at_most_a_day(board: Agent, fake: FakeServer) -> None:
    async def pending(request: web.Request) -> web.Response:
        return text(202, {"status": "pending", "request_id": "r-1", "retry_after": "1" + "0" * 25})

    fake.answer = pending
    await board.start()
    try:
        log = await until_logged(board, "register_pending")
        await asyncio.sleep(0.3)
        assert board.process is not None and board.process.returncode is None, board.run_log()
    finally:
        assert await board.stop() == 0
    assert "register_pending request_id=r-1 retry_after=86400\n" in log, log


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_endless_answer_is_cut_at_one_mebibyte_and_retried(
    board: Agent, fake: FakeServer, chunked: bool
) -> None:
    sent: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        total = 64 * 1024 * 1024
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = total
        await response.prepare(request)
        chunk = b"x" * 65536
        written = 0
        try:
            while written < total:
                await response.write(chunk)
                written += len(chunk)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            sent.append(written)
        return response

    fake.answer = endless
    await board.start()
    try:
        log = await until_logged(board, "register_fault")
        await until_logged(board, "register_fault status=000 curl exit 23" if chunked else "curl exit 63")
    finally:
        assert await board.stop() == 0
    assert "curl exit" in log
    assert not [p for p in board.root.rglob("*") if p.is_file() and p.stat().st_size > 1024 * 1024]
    assert max(sent, default=0) < 16 * 1024 * 1024, sent  # the agent hung up early


async def test_a_manifest_of_thousands_of_files_is_refused_before_any_folder_is_made(
    board: Agent, fake: FakeServer
) -> None:
    async def many(request: web.Request) -> web.Response:
        if request.path.startswith("/v1/registrations"):
            return text(200, ready(files=[(f"s{i}", f"{i:02d}-s.conf") for i in range(300)]))
        return web.Response(status=503, headers={"Retry-After": "1"})

    fake.answer = many
    await board.start()
    try:
        log = await until_logged(board, "files_bad_manifest count=300: more than 256 files")
    finally:
        assert await board.stop() == 0
    assert not board.files_dir.exists() or not list(board.files_dir.iterdir()), log


@pytest.mark.parametrize("device_id", ["../../../etc", "d-1\nfleetreg-agent: forged", "d-1/x", "d 1"])
async def test_a_device_id_that_is_no_id_never_reaches_a_path_nor_the_state(
    board: Agent, fake: FakeServer, device_id: str
) -> None:
    async def odd(request: web.Request) -> web.Response:
        if request.path.startswith("/v1/registrations"):
            return text(200, ready(device_id=device_id))
        return text(202, {"status": "ok"})

    fake.answer = odd
    await board.start()
    try:
        log = await until_logged(board, "register_unexpected device_id=")
    finally:
        assert await board.stop() == 0
    assert board.state("device_id") is None and board.state("secret") is None, log
    assert all(path.startswith("/v1/registrations") for _, path, _ in fake.calls), fake.calls
    assert all(line.startswith("fleetreg-agent: ") for line in log.splitlines()), log
    assert not [line for line in log.splitlines() if line.startswith("fleetreg-agent: forged")], log


HOSTILE = {
    "HARDWARE_ID": "-rf \"q\" 'a' \\x\\ $(touch pwned) `touch pwned2` caf\u00e9\t\u00ff" + "h" * 1000,
    "CPU_ID": '\\"}],"hardware_id":"other"',
    "MAC": "-n\r$HOME",
    "CODE": '"; rm -rf / #',
}


async def test_hostile_configuration_values_reach_the_request_body_exactly(
    board: Agent, fake: FakeServer
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return text(403, {"status": "refused", "reason_code": "unknown_code", "reason": "unknown"})

    fake.answer = refuse
    # The configuration file holds one line a value; the environment may hold any text.
    board.env = {f"FLEETREG_AGENT_{key}": value for key, value in HOSTILE.items()}
    board.env["FLEETREG_AGENT_HARDWARE_ID"] += "\nsecond line"
    refused = await board.boot()
    assert refused.code == EXIT_FINAL, refused.log
    [(method, path, body)] = fake.calls
    assert (method, path) == ("POST", "/v1/registrations?include=files")
    sent = json.loads(body)
    assert sent == {
        "bulk_identification_code": HOSTILE["CODE"],
        "hardware_id": HOSTILE["HARDWARE_ID"] + "\nsecond line",
        "fingerprint": {"cpu_id": HOSTILE["CPU_ID"], "mac": HOSTILE["MAC"]},
    }
    assert not list(board.root.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))
    assert len(refused.log.splitlines()) == 2 and "\r" not in refused.log, refused.log
    assert HOSTILE["CODE"] not in refused.log


@pytest.mark.parametrize(
    "key", ["HEARTBEAT_SECONDS", "BACKOFF_BASE_SECONDS", "BACKOFF_MAX_SECONDS", "TIMEOUT_SECONDS"]
)
async def test_a_zero_wait_or_timeout_is_a_configuration_error_not_a_hot_loop(
    board: Agent, fake: FakeServer, key: str
) -> None:
    board.config[key] = "0.000"
    refused = await board.boot()
    assert refused.code == 64, refused.log
    assert refused.log == f"fleetreg-agent: config: {key} must be above 0\n"
    assert fake.calls == []


async def test_a_file_the_disk_cannot_take_ends_the_boot_with_the_boards_failure(
    board: Agent, fake: FakeServer, tmp_path: Path
) -> None:
    """A full disk (here a ``mv`` that fails into FILES_DIR, as ENOSPC does) is exit 1 with
    the path it could not write, not a file "changed meanwhile" fetched again for ever."""
    content = provisioning_file()

    async def download(request: web.Request) -> web.Response:
        if request.path.startswith("/v1/registrations"):
            lines = ready()
            del lines["manifest.files.0.content"]
            return text(200, lines)
        if request.path.endswith("/files/01-ssh.conf"):
            return web.Response(body=content, content_type="text/plain", charset="ascii")
        return text(202, {"status": "ok"})

    fake.answer = download
    shims = tmp_path / "full-disk"
    shims.mkdir()
    mv = shims / "mv"
    mv.write_text(
        f'#!/bin/sh\ncase "$*" in *{board.files_dir}/*) echo "mv: No space left on device" >&2; exit 1 ;; esac\n'
        'exec /bin/mv "$@"\n'
    )
    mv.chmod(0o755)
    board.extra_path.append(shims)
    failed = await board.boot(timeout_s=30)
    assert failed.code == 1, failed.log
    assert failed.log.endswith(
        f"fleetreg-agent: files: cannot write {board.files_dir}/ssh/.01-ssh.conf.tmp\n"
    ), failed.log
    assert "file_mismatch" not in failed.log and board.state("device_id") is None
