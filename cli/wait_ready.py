"""Wait until a local service answers /readyz (used by deploy/local/stack.sh).

``python -m cli.wait_ready NAME PIDFILE SECONDS`` asks the service's operations port
(``FLEETREG_<NAME>_OPS_PORT``, else ``FLEETREG_<NAME>_PORT`` + 100, as the service
itself computes it): exits 0 when ready, 1 when the process died or the time ran out.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import aiohttp

from shared.settings import OPS_PORT_OFFSET

PORTS = {
    "intake": 18080,
    "operator": 18081,
    "dedup": 18082,
    "provisioning": 18083,
    "ingestion": 18084,
    "notifier": 18085,
}


def ops_port(name: str) -> int:
    """The operations port of the local stack's service ``name``."""
    port = int(os.environ.get(f"FLEETREG_{name.upper()}_PORT", PORTS[name]))
    return int(os.environ.get(f"FLEETREG_{name.upper()}_OPS_PORT", port + OPS_PORT_OFFSET))


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


async def wait(name: str, pidfile: Path, seconds: float) -> bool:
    url = f"http://127.0.0.1:{ops_port(name)}/readyz"
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
