"""Real device agents for ``fleetreg demo``: ``agent/fleetreg-agent`` (the POSIX sh agent a
device maker bakes into an image) run as processes beside the
simulated fleet, each board with its own configuration file, state folder and files folder.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# The agent ships in the repository, beside the package (an editable install, as make sets up).
AGENT = Path(__file__).resolve().parent.parent / "agent" / "fleetreg-agent"


@dataclass(frozen=True)
class AgentBoot:
    """One board's ``fleetreg-agent boot``: its folder, hardware ID and what it ended with."""

    folder: Path
    hardware_id: str
    code: int  # the agent's exit code: 0 provisioned
    seconds: float
    last_line: str  # the last line of its log (the event it ended on)

    @property
    def device_id(self) -> str:
        """The device ID the agent stored (empty when it did not get one)."""
        path = self.folder / "state" / "device_id"
        return path.read_text(encoding="utf-8").strip() if path.exists() else ""


def shell() -> str | None:
    """The shell to run the agent with: dash or BusyBox ash, as on a device (None: neither)."""
    if shutil.which("dash"):
        return "dash"
    if shutil.which("busybox"):
        return "busybox sh"
    return None


def _board(folder: Path, server_url: str, code: str) -> tuple[Path, str]:
    """A board's folder with its configuration file (the code is a secret: mode 0600)."""
    hardware_id = uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    settings = {
        "SERVER_URL": server_url,
        "CODE": code,
        "HARDWARE_ID": hardware_id,
        "CPU_ID": uuid.uuid4().hex[:16],
        "MAC": ":".join(uuid.uuid4().hex[i : i + 2] for i in range(0, 12, 2)),
        "STATE_DIR": str(folder / "state"),
        "FILES_DIR": str(folder / "files"),
    }
    config = folder / "agent.conf"
    config.touch(mode=0o600)
    config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()), encoding="utf-8")
    return config, hardware_id


async def _boot(
    command: list[str], folder: Path, config: Path, hardware_id: str, within_s: float
) -> AgentBoot:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *command,
        str(AGENT),
        "--config",
        str(config),
        "boot",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": str(folder), "LC_ALL": "C"},
    )
    try:
        _, log = await asyncio.wait_for(process.communicate(), within_s)
    except TimeoutError:  # the agent never gives up: the demo does
        process.kill()
        await process.wait()
        log = f"fleetreg demo: the agent did not finish within {within_s:.0f} s".encode()
    lines = log.decode("utf-8", "replace").strip().splitlines()
    (folder / "agent.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = process.returncode if process.returncode is not None else -1
    return AgentBoot(folder, hardware_id, code, time.monotonic() - started, lines[-1] if lines else "")


async def boot_agents(
    server_url: str, code: str, count: int, folder: Path, within_s: float = 300.0
) -> list[AgentBoot]:
    """Boot ``count`` boards at once, each in ``folder/board-N`` (``folder`` emptied first),
    with ``code`` against the device API at ``server_url``; their boots once all ended (a
    boot still running after ``within_s`` is killed: exit code -9). RuntimeError when the
    agent or a shell for it is missing."""
    command = shell()
    if not AGENT.exists() or command is None:
        raise RuntimeError(f"the device agent needs {AGENT} and dash or busybox")
    shutil.rmtree(folder, ignore_errors=True)
    boards = [_board(folder / f"board-{i + 1}", server_url, code) for i in range(count)]
    return list(
        await asyncio.gather(
            *(
                _boot(command.split(), config.parent, config, hardware_id, within_s)
                for config, hardware_id in boards
            )
        )
    )
