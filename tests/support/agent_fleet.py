"""Many device agents (``agent/fleetreg-agent``) as processes, for the fault tests, the storm
and the benchmark: each board in a folder of its own, each boot's exit status, wall time and
CPU (the ``wait4`` rusage of the agent and every program it waited for), a boot cut by
SIGKILL to its whole process group (a power cut: the shell, curl and openssl die together)
at an instant or at a line of its log, and the registry checked against the boards' state
folders.

A board is configured through the environment (``FLEETREG_AGENT_<KEY>``, the contract's
keys); its calls come from a loopback address of its own choosing through curl's own
configuration file (``CURL_HOME/.curlrc``: ``interface``), which the agent reads like any
curl user, so no agent option is needed for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.db.pool import Pool

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent" / "fleetreg-agent"
# The agent's retry waits in tests: a fault is retried within a second or two, not minutes
# (the agent's defaults: 2 s doubling to 300 s).
FAST_BACKOFF = {"BACKOFF_BASE_SECONDS": "0.2", "BACKOFF_MAX_SECONDS": "2"}


@dataclass
class Board:
    """One device: its identity and the folder holding its state, files and logs."""

    folder: Path
    hardware_id: str = field(default_factory=lambda: secrets.token_hex(6))
    cpu_id: str = field(default_factory=lambda: secrets.token_hex(8))
    mac: str = field(default_factory=lambda: ":".join(secrets.token_hex(1) for _ in range(6)))
    source: str = ""  # a loopback address its calls come from; empty: the system's choice
    settings: dict[str, str] = field(default_factory=dict)  # more FLEETREG_AGENT_<KEY> values

    @property
    def state(self) -> Path:
        return self.folder / "state"

    @property
    def files(self) -> Path:
        return self.folder / "files"

    def read(self, name: str) -> str:
        """A state file's first line ("" when absent)."""
        path = self.state / name
        return path.read_text(encoding="utf-8").split("\n", 1)[0] if path.exists() else ""

    def environment(self, server_url: str, code: str) -> dict[str, str]:
        keys = {
            "SERVER_URL": server_url,
            "CODE": code,
            "HARDWARE_ID": self.hardware_id,
            "CPU_ID": self.cpu_id,
            "MAC": self.mac,
            "STATE_DIR": str(self.state),
            "FILES_DIR": str(self.files),
            **FAST_BACKOFF,
            "CONNECT_TIMEOUT_SECONDS": "5",
            "TIMEOUT_SECONDS": "30",
            **self.settings,
        }
        tmp = self.folder / "tmp"  # a boot killed with -9 leaves its work folder here
        curl = self.folder / "curl"
        for made in (tmp, curl):
            made.mkdir(parents=True, exist_ok=True)
        (curl / ".curlrc").write_text(f'interface = "{self.source}"\n' if self.source else "")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FLEETREG_", "CURL_"))}
        return {
            **base,
            "TMPDIR": str(tmp),
            "CURL_HOME": str(curl),
            "FLEETREG_AGENT_CONFIG": os.devnull,  # everything from the environment
            **{f"FLEETREG_AGENT_{k}": v for k, v in keys.items()},
        }


@dataclass(frozen=True)
class Boot:
    """One run of ``fleetreg-agent boot``."""

    returncode: int  # -9: killed
    seconds: float  # wall time, from the start to the exit
    cpu_s: float  # user + system time of the agent and of the programs it waited for
    log: list[tuple[float, str]]  # (seconds since the start, line) of its stderr
    killed_at_s: float | None = None

    @property
    def killed(self) -> bool:
        return self.killed_at_s is not None

    @property
    def events(self) -> list[str]:
        """The event word of each log line ("fleetreg-agent: register_ready device_id=..." -> register_ready)."""
        return [_event(line) for _, line in self.log]

    def text(self) -> str:
        return "\n".join(line for _, line in self.log)


def _event(line: str) -> str:
    words = line.split(": ", 1)[-1].split()
    return words[0] if words else ""


async def boot(
    board: Board,
    server_url: str,
    code: str,
    *,
    shell: str = "dash",
    kill_after_s: float | None = None,
    kill_on: str | None = None,
    within_s: float = 120.0,
) -> Boot:
    """Run ``fleetreg-agent boot`` for ``board`` under ``shell`` until it exits.

    ``kill_after_s``: SIGKILL to its process group that many seconds after the start (if it
    still runs); ``kill_on``: SIGKILL as soon as it logs a line whose event is that word
    (an instant just after the event, as a reader of its log sees it). Raises TimeoutError
    (after killing it) when it runs longer than ``within_s``."""
    environment = board.environment(server_url, code)
    started = time.monotonic()
    # Popen, not asyncio's subprocess: its child watcher reaps without the rusage. Starting
    # it does not block (fork and exec); its end is awaited through a pidfd.
    process = subprocess.Popen(  # noqa: ASYNC220
        [shell, str(AGENT), "boot"],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: a kill reaches curl and openssl too
    )
    loop = asyncio.get_running_loop()
    exited = loop.create_future()
    pidfd = os.pidfd_open(process.pid)

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    log: list[tuple[float, str]] = []
    killed_at: float | None = None

    def kill() -> None:
        nonlocal killed_at
        if killed_at is None and not exited.done():
            killed_at = time.monotonic() - started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    async def read_log() -> None:
        assert process.stderr is not None
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), process.stderr
        )
        try:
            async for raw in reader:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                log.append((time.monotonic() - started, line))
                if kill_on is not None and _event(line) == kill_on:
                    kill()
        finally:
            transport.close()

    reading = asyncio.create_task(read_log())
    timer = loop.call_later(kill_after_s, kill) if kill_after_s is not None else None
    try:
        await asyncio.wait_for(asyncio.shield(exited), within_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await exited
        raise TimeoutError(f"the agent of {board.hardware_id} ran over {within_s} s") from None
    finally:
        if timer is not None:
            timer.cancel()
        if not exited.done():  # cancelled: the agent must not outlive its test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        loop.remove_reader(pidfd)
        os.close(pidfd)
        # The pidfd said it ended (or SIGKILL was just sent): this reaps a zombie at once.
        _, status, usage = os.wait4(process.pid, 0)  # noqa: ASYNC222
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        # The pipe ends when the last process holding it does (a killed group: at once).
        await asyncio.wait_for(reading, 30)
    return Boot(process.returncode, seconds, usage.ru_utime + usage.ru_stime, log, killed_at)


async def gather_limited(jobs: Iterable[Any], limit: int) -> list[Any]:
    """Await the coroutines of ``jobs``, at most ``limit`` at once, results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


def boards(base: Path, count: int, sources: Sequence[str] = ("",), prefix: str = "b") -> list[Board]:
    """``count`` boards in folders under ``base``, spread over the loopback ``sources``."""
    return [Board(base / f"{prefix}{i:04d}", source=sources[i % len(sources)]) for i in range(count)]


@dataclass(frozen=True)
class RegistryCheck:
    """The registry's devices of one account against the boards' state folders."""

    boards: int
    devices: int
    provisioned: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


SUFFIX = re.compile(r"-\d+$")


async def registry_against_boards(
    pool: Pool, account_id: str, fleet: Sequence[Board], *, settle_s: float = 60.0
) -> RegistryCheck:
    """Every board holds one provisioned device of its own under the hardware ID it claimed
    (no ``H-N``: these boards are all distinct), its state folder names that device, and the
    account holds no other device (no ghost of a boot cut short) and no device decided new
    twice. A ``ready`` reaches the registry asynchronously: given ``settle_s`` to show."""
    deadline = time.monotonic() + settle_s
    while True:
        rows = await pool.fetch(
            "SELECT id::text AS id, hardware_id, lifecycle FROM devices WHERE account_id = $1",
            uuid.UUID(account_id),
        )
        by_id = {r["id"]: r for r in rows}
        problems: list[str] = []
        for board in fleet:
            device_id, held = board.read("device_id"), board.read("hardware_id")
            row = by_id.get(device_id)
            if not device_id or not board.read("secret"):
                problems.append(f"{board.hardware_id}: no device ID or secret in its state")
            elif row is None:
                problems.append(f"{board.hardware_id}: its device {device_id} is not in the registry")
            elif row["hardware_id"] != board.hardware_id or held != board.hardware_id:
                problems.append(
                    f"{board.hardware_id}: registry {row['hardware_id']}, state {held!r} (a clone of itself?)"
                )
            elif row["lifecycle"] != "provisioned":
                problems.append(f"{board.hardware_id}: {row['lifecycle']}, not provisioned")
        if not problems or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    claimed = {b.read("device_id") for b in fleet}
    ghosts = [r for r in rows if r["id"] not in claimed]
    problems += [f"ghost device {r['id']} ({r['hardware_id']}, {r['lifecycle']})" for r in ghosts]
    lowered = [r["hardware_id"].lower() for r in rows]
    problems += [f"hardware ID {h} held twice" for h in sorted({h for h in lowered if lowered.count(h) > 1})]
    problems += [f"indexed hardware ID {r['hardware_id']}" for r in rows if SUFFIX.search(r["hardware_id"])]
    twice = await pool.fetch(
        """SELECT device_id::text AS id FROM registration_decisions
           WHERE account_id = $1 AND decision IN ('new', 'clone') AND device_id IS NOT NULL
           GROUP BY device_id HAVING count(*) > 1""",
        uuid.UUID(account_id),
    )
    problems += [f"device {r['id']} decided new twice" for r in twice]
    return RegistryCheck(
        boards=len(fleet),
        devices=len(rows),
        provisioned=sum(1 for r in rows if r["lifecycle"] == "provisioned"),
        problems=problems,
    )
