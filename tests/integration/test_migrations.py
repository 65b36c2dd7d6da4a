"""Migrations: applied in order, once; a second run changes nothing; an edited
migration is refused rather than silently skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.db.migrations import Migration, MigrationError, available_migrations, migrate
from shared.db.pool import Connection, single_connection

SCHEMA_QUERY = """
SELECT table_name, column_name, data_type, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT tablename, indexname, indexdef, '', '' FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), '', ''
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
ORDER BY 1, 2, 3
"""


@pytest.fixture
async def empty_database(database_url: str, unique: str) -> AsyncIterator[str]:
    name = f"mig_{unique}"
    async with single_connection(database_url) as admin:
        await admin.execute(f"CREATE DATABASE {name}")
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    yield url
    async with single_connection(database_url) as admin:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def _schema(conn: Connection) -> list[tuple[str, ...]]:
    return [tuple(r) for r in await conn.fetch(SCHEMA_QUERY)]


async def test_a_second_migration_run_changes_nothing(empty_database: str) -> None:
    async with single_connection(empty_database) as conn:
        first = await migrate(conn)
        schema_after_first = await _schema(conn)
        second = await migrate(conn)
        schema_after_second = await _schema(conn)
        recorded = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")

    assert [m.version for m in first] == [m.version for m in available_migrations()]
    assert second == []
    assert schema_after_second == schema_after_first
    assert [r["version"] for r in recorded] == [m.version for m in available_migrations()]


async def test_an_edited_migration_is_refused(empty_database: str) -> None:
    async with single_connection(empty_database) as conn:
        await migrate(conn)
        first = available_migrations()[0]
        await conn.execute(
            "UPDATE schema_migrations SET checksum = $1 WHERE version = $2",
            Migration(first.version, first.name, first.sql + "-- edited").checksum,
            first.version,
        )
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            await migrate(conn)


async def test_the_registry_refuses_two_devices_with_one_hardware_id(empty_database: str) -> None:
    """The database itself, not only the services, keeps hardware IDs unique per account."""
    import asyncpg

    async with single_connection(empty_database) as conn:
        await migrate(conn)
        await conn.execute(
            """
            INSERT INTO accounts VALUES ('00000000-0000-0000-0000-000000000001', 'a');
            INSERT INTO products (id, account_id, name)
                VALUES ('00000000-0000-0000-0000-000000000002', '00000000-0000-0000-0000-000000000001', 'p');
            INSERT INTO registrations (id, account_id, product_id, kind, status)
                VALUES ('00000000-0000-0000-0000-000000000003', '00000000-0000-0000-0000-000000000001',
                        '00000000-0000-0000-0000-000000000002', 'auto', 'active');
            """
        )
        insert = """INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id,
                        claimed_hardware_id, name, lifecycle)
                    VALUES (gen_random_uuid(), '00000000-0000-0000-0000-000000000001',
                            '00000000-0000-0000-0000-000000000002',
                            '00000000-0000-0000-0000-000000000003', 'b827eb8905e5',
                            'b827eb8905e5', 'n', 'registered')"""
        await conn.execute(insert)
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(insert)


async def test_the_case_insensitive_migration_refuses_a_registry_with_two_cases_of_an_id(
    empty_database: str,
) -> None:
    """0008 makes hardware IDs unique case-insensitively; a registry that already holds
    B827EB8905E5 and b827eb8905e5 is refused with both named, and nothing changes."""
    import asyncpg

    files = sorted(available_migrations(), key=lambda m: m.version)
    before = [m for m in files if m.version < 8]
    case_migration = next(m for m in files if m.version == 8)
    async with single_connection(empty_database) as conn:
        for migration in before:
            await conn.execute(migration.sql)
        await conn.execute(
            """INSERT INTO accounts (id, name) VALUES ('00000000-0000-4000-8000-000000000001', 'a');
               INSERT INTO products (id, account_id, name)
                    VALUES ('00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000001', 'p');
               INSERT INTO registrations (id, account_id, product_id, kind, status)
                    VALUES ('00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000001',
                            '00000000-0000-4000-8000-000000000002', 'auto', 'active');
               INSERT INTO devices (id, account_id, product_id, registration_id, hardware_id,
                                    claimed_hardware_id, name, lifecycle)
               SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001',
                      '00000000-0000-4000-8000-000000000002', '00000000-0000-4000-8000-000000000003',
                      h, h, h, 'registered'
               FROM unnest(ARRAY['B827EB8905E5', 'b827eb8905e5', 'other']) AS h"""
        )
        with pytest.raises(asyncpg.RaiseError) as refused:
            await conn.execute(case_migration.sql)
        assert "B827EB8905E5, b827eb8905e5" in str(refused.value)
        assert "other" not in str(refused.value)
        indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'devices'")
        assert "devices_account_hardware_id_ci" not in {r["indexname"] for r in indexes}
