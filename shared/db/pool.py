"""The asyncpg connection pool, opened and closed in one place.

TLS towards Postgres is configured in the URL itself with libpq's parameters
(``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey``), which asyncpg honours; a
TLS failure (the server refuses TLS, its certificate does not verify) is reported as
:class:`DatabaseUnavailable` naming the cause, never the URL (it holds the password).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
from asyncpg import Record

from shared.settings import DatabaseSettings

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # The registry's only driver types (typed by asyncpg-stubs). Repositories take these
    # and hand back records of their own: no Record leaves shared/db.
    Pool: TypeAlias = asyncpg.Pool[Record]
    # A connection of the pool (``async with pool.acquire()``) or one opened alone.
    Connection: TypeAlias = asyncpg.Connection[Record] | PoolConnectionProxy[Record]
else:
    Pool = asyncpg.Pool
    Connection = asyncpg.Connection

__all__ = [
    "BATCH_RETRY_ERRORS",
    "TRANSIENT_ERRORS",
    "Connection",
    "DatabaseUnavailable",
    "Pool",
    "answers",
    "open_pool",
    "pool_context",
    "single_connection",
]


class DatabaseUnavailable(Exception):
    """The registry database cannot be reached."""


# Errors that mean "the database is not there right now" (restarting, failing over), as
# opposed to a bug or bad data: callers answer "try again" instead of failing.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.InterfaceError,
    DatabaseUnavailable,
    # asyncpg's own timeouts (command_timeout, connect timeout): a registry that stopped
    # answering (dropped packets, a partition) rather than refusing; a 500 before.
    TimeoutError,
    # asyncpg's protocol state machine raises this ("cannot switch to state N; another
    # operation is in progress") when the server ends a session mid-statement, as a fast
    # restart does (MagicStack/asyncpg#784, #1069; sqlalchemy/sqlalchemy#13241). Seen here
    # as six 500s in a storm across `pg_ctl restart -m fast`. Its subclasses are transient
    # too: a stale statement cache after a migration, a standby reached during failover.
    asyncpg.InternalClientError,
)

# What a consumer's batch may meet from a registry that is busy, failing over or being
# operated on, beyond TRANSIENT_ERRORS: the batch is retried whole later, never split and
# dead-lettered record by record (shared.kafka.BatchConsumer). SQLSTATE classes 08
# (connection), 40 (serialization failure, deadlock), 53 (insufficient resources: too
# many connections, disk full), 57 (operator intervention: shutdown, statement timeout)
# and 25006 (a read-only transaction: a replica promoted late).
BATCH_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    *TRANSIENT_ERRORS,
    asyncpg.PostgresConnectionError,
    asyncpg.TransactionRollbackError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
    asyncpg.ReadOnlySQLTransactionError,
)


# Connecting failed: the server is unreachable or refused us (OSError, which includes
# ssl.SSLError), rejected the login, or the URL's TLS parameters cannot be used.
_CONNECT_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.ClientConfigurationError)


async def _keep_session(conn: asyncpg.Connection[Record]) -> None:
    return None


async def open_pool(settings: DatabaseSettings) -> Pool:
    try:
        pool = await asyncpg.create_pool(
            settings.url.reveal(),
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            command_timeout=30,
            # asyncpg resets session state on every release (a round trip each time). The
            # services keep no session state on pooled connections (no SET, LISTEN or
            # advisory locks there), so the reset is skipped.
            reset=_keep_session,
        )
    except _CONNECT_ERRORS as exc:
        raise DatabaseUnavailable(f"cannot connect to DATABASE_URL: {_describe(exc)}") from exc
    return pool


@contextlib.asynccontextmanager
async def pool_context(settings: DatabaseSettings) -> AsyncIterator[Pool]:
    pool = await open_pool(settings)
    try:
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def single_connection(url: str) -> AsyncIterator[asyncpg.Connection[Record]]:
    """One connection for a short command (migrations, bootstrap)."""
    try:
        conn = await asyncpg.connect(url)
    except _CONNECT_ERRORS as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {_describe(exc)}") from exc
    try:
        yield conn
    finally:
        await conn.close()


def _describe(error: BaseException) -> str:
    """The error's type and message: "rejected SSL upgrade" alone hides that TLS is the cause."""
    return f"{type(error).__name__}: {error}"


async def answers(pool: Pool) -> bool:
    """The database answers a trivial query (for readiness probes)."""
    return bool(await pool.fetchval("SELECT 1"))
