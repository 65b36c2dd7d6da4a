"""Postgres access. asyncpg is imported only in this package; domain errors leave it."""
