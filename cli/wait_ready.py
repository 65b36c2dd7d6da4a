"""Wait until a local service answers /readyz (used by deploy/local/stack.sh).

``python -m cli.wait_ready NAME PIDFILE SECONDS`` with FLEETREG_HTTP_PORT-style
ports known from the stack: exits 0 when ready, 1 when the process died or the
time ran out.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp

PORTS = {
    "intake": 18080,
    "operator": 18081,
    "dedup": 18082,
    "provisioning": 18083,
    "ingestion": 18084,
    "notifier": 18085,
}


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


async def wait(name: str, pidfile: Path, seconds: float) -> bool:
    port = int(os.environ.get(f"FLEETREG_{name.upper()}_PORT", PORTS[name]))
    url = f"http://127.0.0.1:{port}/readyz"
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if not _alive(pidfile):
                return False
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.3)
    return False


if __name__ == "__main__":
    ok = asyncio.run(wait(sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])))
    sys.exit(0 if ok else 1)
