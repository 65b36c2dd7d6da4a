"""The device agent (agent/fleetreg-agent) run as a device would run it: a subprocess under a
given shell, with a configuration file, a state folder and a files folder of its own.

Under ``busybox`` the agent also gets BusyBox's tools (awk, sed, od, ...) first on its PATH,
as on a BusyBox image; under ``dash`` it gets the machine's (coreutils, mawk). curl and
openssl are the machine's in both.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.system import ROOT

AGENT = ROOT / "agent" / "fleetreg-agent"
SHELLS = ("dash", "busybox")
SHELL_COMMANDS = {"dash": ["dash"], "busybox": ["busybox", "sh"]}
EXIT_FINAL, EXIT_DISABLED = 2, 3
# Small waits, so that a test crosses retries and disables in seconds (the shipped defaults
# are 2 s and 300 s: the script's header).
FAST = {"BACKOFF_BASE_SECONDS": "0.1", "BACKOFF_MAX_SECONDS": "0.5", "HEARTBEAT_SECONDS": "0.3"}


def install_shells() -> None:
    """busybox, dash and shellcheck present (Debian's packages, installed when missing)."""
    subprocess.run([str(ROOT / "deploy" / "local" / "agent-shells.sh")], cwd=ROOT, check=True)


def busybox_bin(directory: Path) -> Path:
    """A folder of BusyBox applet links (every applet but the ones a device would not take
    from BusyBox here: none shadow curl or openssl, which BusyBox has not)."""
    directory.mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is missing: run deploy/local/agent-shells.sh")
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        link = directory / applet
        if not link.exists():
            link.symlink_to(busybox)
    return directory


@dataclass
class Boot:
    """One run of ``boot``: its exit code and its log (stderr), one line per event."""

    code: int
    log: str

    @property
    def events(self) -> list[str]:
        return [line.removeprefix("fleetreg-agent: ").split(" ", 1)[0] for line in self.log.splitlines()]


@dataclass
class Agent:
    """One board: the agent's configuration, state and files folders under ``root``."""

    root: Path
    shell: str
    config: dict[str, str]
    extra_path: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    config_text: str = ""
    process: asyncio.subprocess.Process | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def files_dir(self) -> Path:
        return self.root / "files"

    @property
    def hooks_dir(self) -> Path:
        return self.root / "hooks"

    @property
    def hook_log(self) -> Path:
        """Where the test's on-change script writes one line per call: its arguments."""
        return self.root / "hook.log"

    def write_config(self) -> Path:
        """The configuration file, from :attr:`config`, with the test's folders and small
        waits; ``config_text`` is appended as is."""
        path = self.root / "agent.conf"
        settings = {
            "STATE_DIR": str(self.state_dir),
            "FILES_DIR": str(self.files_dir),
            "HOOKS_DIR": str(self.hooks_dir),
            **FAST,
            **self.config,
        }
        path.write_text(
            "# written by tests/support/agent.py\n"
            + "".join(f"{k}={v}\n" for k, v in settings.items())
            + self.config_text
        )
        return path

    def _command(self, command: str) -> list[str]:
        return [*SHELL_COMMANDS[self.shell], str(AGENT), "--config", str(self.write_config()), command]

    def _env(self) -> dict[str, str]:
        path = [str(p) for p in self.extra_path]
        if self.shell == "busybox":
            path.append(str(busybox_bin(ROOT / "var" / "agent-busybox-bin")))
        path.append(os.environ.get("PATH", "/usr/bin:/bin"))
        return {"PATH": ":".join(path), "TMPDIR": str(self.root), "LC_ALL": "C", **self.env}

    def install_hook(self) -> None:
        """An on-change script that appends its arguments to :attr:`hook_log`."""
        self.hooks_dir.mkdir(parents=True, exist_ok=True)
        hook = self.hooks_dir / "10-record"
        hook.write_text(f'#!/bin/sh\necho "$*" >> {self.hook_log}\n')
        hook.chmod(0o755)

    def hook_calls(self) -> list[list[str]]:
        if not self.hook_log.exists():
            return []
        return [line.split() for line in self.hook_log.read_text().splitlines()]

    @property
    def boot_log(self) -> Path:
        """The log of the latest (or running) ``boot``."""
        return self.root / "boot.log"

    async def boot(self, timeout_s: float = 90) -> Boot:
        """``fleetreg-agent boot``, to its end."""
        with self.boot_log.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *self._command("boot"), env=self._env(), stdout=asyncio.subprocess.DEVNULL, stderr=log
            )
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(
                f"the agent's boot did not end in {timeout_s} s:\n{self.boot_log.read_text()}"
            ) from None
        assert process.returncode is not None
        return Boot(process.returncode, self.boot_log.read_text())

    async def start(self) -> None:
        """``fleetreg-agent run`` in the background; its log goes to ``root/run.log``."""
        log = (self.root / "run.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *self._command("run"), env=self._env(), stdout=asyncio.subprocess.DEVNULL, stderr=log
        )
        log.close()

    def run_log(self) -> str:
        path = self.root / "run.log"
        return path.read_text() if path.exists() else ""

    async def stop(self, timeout_s: float = 10) -> int:
        """SIGTERM to ``run``; its exit code."""
        if self.process is None:
            raise RuntimeError("the agent is not running")
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout_s)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()

    def state(self, name: str) -> str | None:
        path = self.state_dir / name
        return path.read_text().strip() if path.exists() else None

    def files(self) -> dict[str, bytes]:
        """The provisioning files, by ``service/name``."""
        if not self.files_dir.exists():
            return {}
        return {
            str(p.relative_to(self.files_dir)): p.read_bytes()
            for p in sorted(self.files_dir.glob("*/*"))
            if not p.name.startswith(".")
        }

    def copy_to(self, root: Path, **config: str) -> Agent:
        """Another board with this one's state and files (a copied image): ``config`` on top
        of this one's configuration (another CPU ID and MAC)."""
        root.mkdir(parents=True)
        for folder in ("state", "files", "hooks"):
            if (self.root / folder).exists():
                shutil.copytree(self.root / folder, root / folder, symlinks=True)
        copied = Agent(root, self.shell, {**self.config, **config}, list(self.extra_path))
        if copied.hooks_dir.exists():
            copied.install_hook()  # its own log
        return copied
