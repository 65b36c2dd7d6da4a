"""What throttling and cache invalidation keep in Postgres, shared by every instance.

* :class:`PostgresStorage`: a storage backend of the ``limits`` library
  (https://limits.readthedocs.io, "Custom storage backends"), so that its
  fixed-window strategy counts refused calls per source address across every
  instance of every service. The library has no Postgres backend; this one
  implements the same contract as its in-memory storage (``incr`` starts a window
  of ``expiry`` seconds at the first hit; the count resets when the window ends).
* :class:`Listener`: one dedicated connection that ``LISTEN``s on a channel and
  hands each payload to a callback; it reconnects by itself and tells its owner
  when it was disconnected, since notifications sent meanwhile are lost.
* :func:`notify`: ``pg_notify`` on a channel (delivered when the transaction commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from limits.aio.storage import Storage

from shared.db.pool import TRANSIENT_ERRORS, Connection, Pool

log = logging.getLogger(__name__)

# The listening connection is gone or cannot be made: listen again after a pause.
_LISTEN_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_ERRORS,
    asyncpg.PostgresError,
    OSError,
    TimeoutError,
)

INVALIDATION_CHANNEL = "fleetreg_invalidate"

INCR = """
    INSERT INTO throttle_counters AS t (key, count, expires_at)
    VALUES ($1, $2, now() + make_interval(secs => $3))
    ON CONFLICT (key) DO UPDATE SET
        count = CASE WHEN t.expires_at <= now() THEN excluded.count ELSE t.count + excluded.count END,
        expires_at = CASE WHEN t.expires_at <= now() THEN excluded.expires_at ELSE t.expires_at END
    RETURNING count"""
GET = "SELECT count FROM throttle_counters WHERE key = $1 AND expires_at > now()"
GET_EXPIRY = """SELECT extract(epoch FROM expires_at)::float8 FROM throttle_counters
                WHERE key = $1 AND expires_at > now()"""
SWEEP = "DELETE FROM throttle_counters WHERE expires_at < now() - interval '1 minute'"
CLEAR = "DELETE FROM throttle_counters WHERE key = $1"
RESET = "WITH gone AS (DELETE FROM throttle_counters RETURNING 1) SELECT count(*) FROM gone"
SWEEP_EVERY_S = 60.0


class PostgresStorage(Storage):
    """The ``limits`` storage contract on the ``throttle_counters`` table.

    Only the fixed-window strategy is supported (the moving window needs every hit's
    timestamp). Each call is one statement on the pool; callers use it only on the
    refusal path, so a healthy fleet never touches it.
    """

    STORAGE_SCHEME = ["fleetreg+postgresql"]  # noqa: RUF012 (the base class declares it so)

    def __init__(self, pool: Pool) -> None:
        super().__init__(wrap_exceptions=False)
        self._pool = pool
        self._next_sweep = 0.0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (asyncpg.PostgresError, OSError)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add ``amount`` to the key's count in its current window; the new count."""
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_EVERY_S
            await self._pool.execute(SWEEP)
        count: int = await self._pool.fetchval(INCR, key, amount, float(expiry))
        return count

    async def get(self, key: str) -> int:
        return int(await self._pool.fetchval(GET, key) or 0)

    async def get_expiry(self, key: str) -> float:
        """When the key's window ends (epoch seconds); now when it has none."""
        expiry = await self._pool.fetchval(GET_EXPIRY, key)
        return float(expiry) if expiry is not None else time.time()

    async def check(self) -> bool:
        return bool(await self._pool.fetchval("SELECT 1"))

    async def reset(self) -> int | None:
        return int(await self._pool.fetchval(RESET))

    async def clear(self, key: str) -> None:
        await self._pool.execute(CLEAR, key)


async def notify(conn: Pool | Connection, payload: str, channel: str = INVALIDATION_CHANNEL) -> None:
    """Send ``payload`` to every listener of ``channel`` (at commit, inside a transaction)."""
    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)


class Listener:
    """``LISTEN`` on one channel over a dedicated connection, reconnecting on loss.

    ``on_payload`` gets each notification's payload. ``on_connected(False)`` is called
    when the connection is lost (notifications may be missed from then on) and
    ``on_connected(True)`` once it listens again; an owner that caches registry state
    must drop or stop using its cache in between.
    """

    def __init__(
        self,
        dsn: str,
        on_payload: Callable[[str], None],
        on_connected: Callable[[bool], None],
        channel: str = INVALIDATION_CHANNEL,
        retry_s: float = 1.0,
        connect: Callable[[str], Awaitable[Connection]] | None = None,
    ) -> None:
        self._dsn = dsn
        self._on_payload = on_payload
        self._on_connected = on_connected
        self._channel = channel
        self._retry_s = retry_s
        self._connect = connect or asyncpg.connect
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    async def start(self) -> None:
        """Listen now (raises if the database cannot be reached), then keep listening."""
        conn = await self._listen()
        self._task = asyncio.create_task(self._run(conn), name=f"listen-{self._channel}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> Connection:
        conn = await self._connect(self._dsn)
        self._lost.clear()
        conn.add_termination_listener(lambda _conn: self._lost.set())
        await conn.add_listener(self._channel, self._deliver)
        self._on_connected(True)
        return conn

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            self._on_payload(str(payload))
        except Exception:  # one bad payload must not stop the listener
            log.exception("invalidation payload not applied")

    async def _run(self, conn: Connection) -> None:
        try:
            while True:
                await self._watch(conn)
                self._on_connected(False)
                log.warning("invalidation listener disconnected; reconnecting")
                conn = await self._reconnect()
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _watch(self, conn: Connection) -> None:
        """Return when the connection is gone (a termination, or a failed keep-alive query)."""
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=5.0)
                return
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5.0)
            except _LISTEN_ERRORS:
                return

    async def _reconnect(self) -> Connection:
        while True:
            try:
                return await self._listen()
            except _LISTEN_ERRORS:
                await asyncio.sleep(self._retry_s)
