"""Many device agents at once, for the fault tests, the storm and the benchmark: boards of
:mod:`tests.support.agent` (each in a folder of its own), each boot's exit status, wall time
and CPU (the ``wait4`` rusage of the agent and of every program it waited for), a boot cut
by SIGKILL to its whole process group (a power cut: the shell, curl and openssl die
together) at an instant or just after a line of its log, and the registry checked against
the boards' state folders.

A board's calls can come from a loopback address of its own: curl's own configuration file
(``CURL_HOME/.curlrc``, ``interface``), which the agent's curl reads like any curl's, so the
agent needs no option for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from shared.db.pool import Pool
from tests.support.agent import Agent

T = TypeVar("T")


def board(
    root: Path, server_url: str, code: str, *, shell: str = "dash", source: str = "", **config: str
) -> Agent:
    """One board in ``root`` (made), a hardware ID and fingerprint of its own, booting
    against ``server_url`` with ``code``; its calls from the loopback ``source`` when given."""
    root.mkdir(parents=True, exist_ok=True)
    settings = {
        "SERVER_URL": server_url,
        "CODE": code,
        "HARDWARE_ID": uuid.uuid4().hex[:12],
        "CPU_ID": uuid.uuid4().hex[:16],
        "MAC": ":".join(uuid.uuid4().hex[i : i + 2] for i in range(0, 12, 2)),
        **config,
    }
    agent = Agent(root, shell, settings)
    if source:
        (root / ".curlrc").write_text(f'interface = "{source}"\n')
        agent.env["CURL_HOME"] = str(root)
    return agent


def fleet(
    base: Path,
    count: int,
    server_url: str,
    code: str,
    *,
    shells: Sequence[str] = ("dash",),
    sources: Sequence[str] = ("",),
    prefix: str = "board",
    **config: str,
) -> list[Agent]:
    """``count`` boards under ``base``, taking the ``shells`` and loopback ``sources`` in turn."""
    return [
        board(
            base / f"{prefix}{i:04d}",
            server_url,
            code,
            shell=shells[i % len(shells)],
            source=sources[i % len(sources)],
            **config,
        )
        for i in range(count)
    ]


def hardware_id(agent: Agent) -> str:
    """The hardware ID the board claims (its configuration's)."""
    return agent.config["HARDWARE_ID"]


@dataclass(frozen=True)
class Run:
    """One run of ``fleetreg-agent boot``."""

    code: int  # -9: killed
    seconds: float  # wall time, from the start to the exit
    cpu_s: float  # user + system time of the agent and of the programs it waited for
    log: list[tuple[float, str]]  # (seconds since the start, line) of its stderr

    @property
    def cut(self) -> bool:
        return self.code == -signal.SIGKILL

    @property
    def events(self) -> list[str]:
        """The event of each line ("fleetreg-agent: register_ready device_id=..." -> register_ready)."""
        return [_event(line) for _, line in self.log]

    def text(self) -> str:
        return "\n".join(line for _, line in self.log)


def _event(line: str) -> str:
    words = line.removeprefix("fleetreg-agent: ").split(" ", 1)
    return words[0]


async def run_boot(
    agent: Agent, *, kill_after_s: float | None = None, kill_on: str | None = None, within_s: float = 120.0
) -> Run:
    """Run ``fleetreg-agent boot`` for ``agent`` until it exits.

    ``kill_after_s``: SIGKILL to its process group that many seconds after the start, if it
    still runs; ``kill_on``: SIGKILL as soon as it logs a line of that event (an instant just
    after it, as a reader of its log sees it). Raises TimeoutError (after killing it) when it
    runs longer than ``within_s``."""
    started = time.monotonic()
    # Popen, not asyncio's subprocess: asyncio's child watcher reaps without the rusage.
    # Starting it does not block (fork and exec); its end is awaited through a pidfd. The
    # command and environment are tests/support/agent.py's, as its own boots use.
    process = subprocess.Popen(  # noqa: ASYNC220
        agent._command("boot"),
        env=agent._env(),
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

    def kill() -> None:
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    loop.add_reader(pidfd, on_exit)
    log: list[tuple[float, str]] = []

    async def read_log() -> None:
        if process.stderr is None:
            raise RuntimeError("no stderr pipe")
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
        kill()
        await exited
        raise TimeoutError(f"the agent in {agent.root} ran over {within_s} s") from None
    finally:
        if timer is not None:
            timer.cancel()
        kill()  # cancelled meanwhile: the agent must not outlive its test (a no-op once it ended)
        loop.remove_reader(pidfd)
        os.close(pidfd)
        # The pidfd said it ended, or SIGKILL was just sent: this reaps a zombie at once.
        _, status, usage = os.wait4(process.pid, 0)  # noqa: ASYNC222
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        # The pipe ends with the last process holding it (a killed group: at once).
        await asyncio.wait_for(reading, 30)
    return Run(process.returncode, seconds, usage.ru_utime + usage.ru_stime, log)


async def limited(jobs: Iterable[Awaitable[T]], at_once: int) -> list[T]:
    """Await ``jobs``, at most ``at_once`` at a time; the results in order."""
    gate = asyncio.Semaphore(at_once)

    async def one(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


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


INDEXED = re.compile(r"-\d+$")


def _board_problem(agent: Agent, row: dict[str, str] | None) -> str | None:
    claimed = hardware_id(agent)
    device_id, held = agent.state("device_id"), agent.state("hardware_id")
    if not device_id or not agent.state("secret"):
        return f"{claimed}: no device ID or secret in its state"
    if row is None:
        return f"{claimed}: its device {device_id} is not in the registry"
    if row["hardware_id"] != claimed or held != claimed:
        return f"{claimed}: {row['hardware_id']} in the registry, {held!r} in its state (a clone of itself)"
    if row["lifecycle"] != "provisioned":
        return f"{claimed}: {row['lifecycle']}, not provisioned"
    return None


async def registry_against_boards(
    pool: Pool, account_id: str, boards: Sequence[Agent], *, settle_s: float = 60.0
) -> RegistryCheck:
    """Every board holds one provisioned device of its own under the hardware ID it claimed
    (no ``H-N``: the boards are all distinct), its state folder names that device, and the
    account holds no other device (no ghost of a boot cut short), no hardware ID twice and
    no device decided new twice. A ``ready`` reaches the registry asynchronously: it is
    given ``settle_s`` to show."""
    deadline = time.monotonic() + settle_s
    while True:
        rows = await pool.fetch(
            "SELECT id::text AS id, hardware_id, lifecycle FROM devices WHERE account_id = $1",
            uuid.UUID(account_id),
        )
        by_id = {r["id"]: dict(r) for r in rows}
        problems = [
            p
            for p in (_board_problem(agent, by_id.get(agent.state("device_id") or "")) for agent in boards)
            if p is not None
        ]
        if not problems or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    claimed = {agent.state("device_id") for agent in boards}
    problems += [
        f"ghost device {r['id']} ({r['hardware_id']}, {r['lifecycle']})"
        for r in rows
        if r["id"] not in claimed
    ]
    held = collections.Counter(r["hardware_id"].lower() for r in rows)
    problems += [f"hardware ID {h} held {n} times" for h, n in sorted(held.items()) if n > 1]
    problems += [f"indexed hardware ID {r['hardware_id']}" for r in rows if INDEXED.search(r["hardware_id"])]
    twice = await pool.fetch(
        """SELECT device_id::text AS id FROM registration_decisions
           WHERE account_id = $1 AND decision IN ('new', 'clone') AND device_id IS NOT NULL
           GROUP BY device_id HAVING count(*) > 1""",
        uuid.UUID(account_id),
    )
    problems += [f"device {r['id']} decided new twice" for r in twice]
    return RegistryCheck(
        boards=len(boards),
        devices=len(rows),
        provisioned=sum(1 for r in rows if r["lifecycle"] == "provisioned"),
        problems=problems,
    )
