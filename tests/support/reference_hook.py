"""The reference registration hook (examples/registration_hook.py) run as a real process,
as an operator runs it: its secret in FLEETREG_HOOK_SECRET, never on its command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.system import free_port

ROOT = Path(__file__).resolve().parents[2]
# The serials the tests' hooks allow: two enriched rows and one without a batch.
SERIALS = (
    "hardware_id,name,category_a,category_b,site,batch\n"
    "SN-0001,pump-0001,pumps,line-1,Lyon,2026-11\n"
    "SN-0002,pump-0002,pumps,line-2,Lyon,2026-11\n"
    "SN-0003,valve-0003,valves,line-1,Porto,\n"
)
STARTUP_S = 30.0  # the process's start (an import of aiohttp on a busy machine), not a speed check


@contextlib.asynccontextmanager
async def reference_hook(
    folder: Path, secret: str, serials: str = SERIALS, port: int | None = None
) -> AsyncIterator[str]:
    """Start the reference hook on ``port`` (a free one by default) with ``serials`` as its
    CSV (written under ``folder``) and ``secret``; yields its URL once it listens, and
    stops it on exit."""
    csv = folder / "serials.csv"
    csv.write_text(serials, encoding="utf-8")
    port = port or free_port()
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
        ready = await asyncio.wait_for(process.stdout.readline(), STARTUP_S)
        if b"registration hook on" not in ready:
            problem = await process.stderr.read()
            raise RuntimeError(f"the reference hook did not start: {ready!r} {problem[-2000:]!r}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
