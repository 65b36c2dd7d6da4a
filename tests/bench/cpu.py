"""CPU time spent by each process of the local stack (Linux ``/proc``), so that a storm's
cost per device can be told per process: on a shared machine devices/s drifts with other
load, while the CPU one device costs each process drifts much less.

The processes are those ``deploy/local/stack.sh`` started (``var/run/<name>.pid``) and the
Postgres server (its postmaster, ``var/postgres/data/postmaster.pid``, with every backend:
the live ones are read, the ended ones are in the postmaster's children's time).
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_stat(text: str) -> tuple[int, int, int, int, int]:
    """``(ppid, utime, stime, cutime, cstime)`` from a ``/proc/<pid>/stat`` line, times in
    clock ticks (proc(5); the command name, in parentheses, may hold spaces and parentheses)."""
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of proc(5)); ppid is field 4, utime..cstime 14..17.
    return int(fields[1]), int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14])


def _stat(pid: int) -> tuple[int, int, int, int, int] | None:
    try:
        return parse_stat(Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace"))
    except (OSError, ValueError, IndexError):
        return None  # ended meanwhile, or not Linux


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").split()[0])
    except (OSError, ValueError, IndexError):
        return None


def postgres_cpu_s(postmaster: int) -> float:
    """The Postgres server's CPU seconds: the postmaster's own and its ended children's,
    plus every live child's (backends, checkpointer, WAL writer...)."""
    found = _stat(postmaster)
    if found is None:
        return 0.0
    ticks = sum(found[1:])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            child = _stat(int(entry.name))
            if child is not None and child[0] == postmaster:
                ticks += child[1] + child[2]
    return ticks / CLOCK_TICKS


def stack_cpu_s(var: Path = Path("var")) -> dict[str, float]:
    """CPU seconds so far of each process of the local stack in ``var``, by name (the
    services, ``kafka``, ``postgres``); a process not running is left out."""
    out: dict[str, float] = {}
    for pidfile in sorted((var / "run").glob("*.pid")):
        pid = _pid(pidfile)
        found = _stat(pid) if pid is not None else None
        if found is not None:
            out[pidfile.stem] = (found[1] + found[2]) / CLOCK_TICKS
    postmaster = _pid(var / "postgres" / "data" / "postmaster.pid")
    if postmaster is not None and _stat(postmaster) is not None:
        out["postgres"] = postgres_cpu_s(postmaster)
    return out


def per_device_ms(before: dict[str, float], after: dict[str, float], devices: int) -> dict[str, float]:
    """CPU milliseconds per device of each process present before and after, and ``total``."""
    spent = {name: after[name] - before[name] for name in before if name in after}
    spent["total"] = sum(spent.values())
    return {name: round(seconds * 1000 / max(devices, 1), 3) for name, seconds in spent.items()}
