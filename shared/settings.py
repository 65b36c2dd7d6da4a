"""Typed settings read from the environment in one place.

Every service builds its frozen settings object once at startup through
:func:`load`; a missing or malformed variable raises :class:`SettingsError`
naming the variable, so a misconfigured container fails at once and clearly.
Nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


class SettingsError(Exception):
    """A configuration variable is missing or has a value that cannot be used."""


class Secret:
    """A configuration value that must never be printed or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Env:
    """Reads typed values from an environment mapping, naming the variable on any error."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def _get(self, name: str, default: str | None) -> str:
        value = self._environ.get(name)
        if value is None or value == "":
            if default is None:
                raise SettingsError(f"{name} is not set: it is required")
            return default
        return value

    def _convert(self, name: str, raw: str, convert: Callable[[str], T], what: str) -> T:
        try:
            return convert(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r} is not {what}") from exc

    def text(self, name: str, default: str | None = None) -> str:
        return self._get(name, default)

    def secret(self, name: str, default: str | None = None) -> Secret:
        return Secret(self._get(name, default))

    def integer(self, name: str, default: int | None = None, *, minimum: int = 0) -> int:
        raw = self._get(name, None if default is None else str(default))
        value = self._convert(name, raw, int, "a whole number")
        if value < minimum:
            raise SettingsError(f"{name}={value} is below its minimum of {minimum}")
        return value

    def number(self, name: str, default: float | None = None, *, minimum: float = 0.0) -> float:
        raw = self._get(name, None if default is None else str(default))
        value = self._convert(name, raw, float, "a number")
        if value < minimum:
            raise SettingsError(f"{name}={value} is below its minimum of {minimum}")
        return value

    def url(self, name: str, schemes: tuple[str, ...], default: str | None = None) -> str:
        value = self._get(name, default)
        if not value.startswith(tuple(f"{s}://" for s in schemes)):
            raise SettingsError(f"{name} must be a URL starting with one of {schemes}")
        return value


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    topic_prefix: str
    partitions: int

    @classmethod
    def from_env(cls, env: Env) -> KafkaSettings:
        return cls(
            bootstrap_servers=env.text("KAFKA_BOOTSTRAP_SERVERS"),
            topic_prefix=env.text("FLEETREG_TOPIC_PREFIX", "fleetreg"),
            partitions=env.integer("FLEETREG_TOPIC_PARTITIONS", 6, minimum=1),
        )


@dataclass(frozen=True)
class DatabaseSettings:
    url: Secret
    pool_min: int
    pool_max: int

    @classmethod
    def from_env(cls, env: Env) -> DatabaseSettings:
        env.url("DATABASE_URL", ("postgresql", "postgres"))
        return cls(
            url=env.secret("DATABASE_URL"),
            pool_min=env.integer("FLEETREG_DB_POOL_MIN", 1, minimum=1),
            pool_max=env.integer("FLEETREG_DB_POOL_MAX", 10, minimum=1),
        )


@dataclass(frozen=True)
class HttpSettings:
    host: str
    port: int

    @classmethod
    def from_env(cls, env: Env, prefix: str, default_port: int) -> HttpSettings:
        return cls(
            host=env.text(f"{prefix}_HOST", "127.0.0.1"),
            port=env.integer(f"{prefix}_PORT", default_port, minimum=0),
        )


def load(factory: Callable[[Env], T], environ: Mapping[str, str] | None = None) -> T:
    """Build a settings object from the environment (or the mapping given)."""
    return factory(Env(environ))


def secret_key(env: Env) -> Secret:
    key = env.secret("FLEETREG_SECRET_KEY")
    if len(key.reveal()) < 32:
        raise SettingsError("FLEETREG_SECRET_KEY must be at least 32 characters (use a random value)")
    return key


@dataclass(frozen=True)
class PipelineSettings:
    """A Kafka-consuming service (deduplication, provisioning): health port, broker,
    registry, the deployment's secret key and its consumer group."""

    http: HttpSettings
    kafka: KafkaSettings
    database: DatabaseSettings
    secret_key: Secret
    group_id: str
    batch_size: int
    log_level: str
    # Deduplication's brute-force guard: after this many refused bulk claims of one
    # hardware ID within the window, claims by registration key are refused too.
    max_failed_claims: int = 10
    failed_claims_window_s: float = 900.0

    @classmethod
    def from_env(cls, env: Env, service: str, default_port: int) -> PipelineSettings:
        return cls(
            http=HttpSettings.from_env(env, "FLEETREG_HTTP", default_port),
            kafka=KafkaSettings.from_env(env),
            database=DatabaseSettings.from_env(env),
            secret_key=secret_key(env),
            group_id=env.text("FLEETREG_CONSUMER_GROUP", f"fleetreg-{service}"),
            batch_size=env.integer("FLEETREG_BATCH_SIZE", 500, minimum=1),
            log_level=env.text("FLEETREG_LOG_LEVEL", "INFO"),
            max_failed_claims=env.integer("FLEETREG_BULK_MAX_FAILED_CLAIMS", 10, minimum=1),
            failed_claims_window_s=env.number(
                "FLEETREG_BULK_FAILED_CLAIMS_WINDOW_SECONDS", 900.0, minimum=1.0
            ),
        )
