"""The reference registration hook (examples/registration_hook.py) run as a real process,
as an operator runs it: its secret in FLEETREG_HOOK_SECRET, never on its command line."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from cli.reference_hook import reference_hook as demo_hook
from tests.support.system import free_port

# The serials the tests' hooks allow: two enriched rows and one without a batch.
SERIALS = (
    "hardware_id,name,category_a,category_b,site,batch\n"
    "SN-0001,pump-0001,pumps,line-1,Lyon,2026-11\n"
    "SN-0002,pump-0002,pumps,line-2,Lyon,2026-11\n"
    "SN-0003,valve-0003,valves,line-1,Porto,\n"
)


@contextlib.asynccontextmanager
async def reference_hook(
    folder: Path, secret: str, serials: str = SERIALS, port: int | None = None
) -> AsyncIterator[str]:
    """Start the reference hook on ``port`` (a free one by default) with ``serials`` as its
    CSV (written under ``folder``) and ``secret``; yields its URL once it listens, and
    stops it on exit (the demo's own starter, cli/reference_hook.py)."""
    csv = folder / "serials.csv"
    csv.write_text(serials, encoding="utf-8")
    async with demo_hook(csv, secret, port or free_port()) as url:
        yield url
