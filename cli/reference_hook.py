"""The reference registration hook (examples/registration_hook.py) run as a process beside
the demo, as an operator runs it: its signing secret in FLEETREG_HOOK_SECRET, never on its
command line (docs/registration-hook.md, "The reference hook")."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# How long the process is given to start listening (importing aiohttp on a busy machine).
STARTUP_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def reference_hook(csv: Path, secret: str, port: int) -> AsyncIterator[str]:
    """Run the reference hook allowing the hardware IDs of ``csv`` on 127.0.0.1:``port``;
    yields its URL once it listens, stops it on exit. RuntimeError when it does not start
    (its last error output in the message)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.registration_hook",
        "--csv",
        str(csv),
        "--port",
        str(port),
        cwd=ROOT,
        env={**os.environ, "FLEETREG_HOOK_SECRET": secret, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        try:
            ready = await asyncio.wait_for(process.stdout.readline(), STARTUP_S)
        except TimeoutError:
            ready = b""
        if b"registration hook on" not in ready:
            if process.returncode is None:
                process.terminate()
            problem = await process.stderr.read()
            raise RuntimeError(f"the reference hook did not start: {ready!r} {problem[-2000:]!r}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
