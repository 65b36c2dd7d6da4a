"""Typed settings read from the environment in one place.

Every service builds its frozen settings object once at startup through
:func:`load`; a missing or malformed variable raises :class:`SettingsError`
naming the variable, so a misconfigured container fails at once and clearly.
Nothing here runs at import time.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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


# Transport security towards the broker (Kafka's own protocol names, as aiokafka takes them).
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
# libpq's sslmode values, which asyncpg honours in DATABASE_URL's query string.
POSTGRES_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# DATABASE_URL parameters naming a file the services must be able to read.
_POSTGRES_SSL_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


def _readable_file(name: str, path: str) -> None:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise SettingsError(f"{name}={path!r} is not a readable file")


@dataclass(frozen=True)
class KafkaSettings:
    """The broker and how to reach it: TLS (SSL, SASL_SSL) and SASL authentication
    (SASL_PLAINTEXT, SASL_SSL); managed Kafka services require SASL_SSL."""

    bootstrap_servers: str
    topic_prefix: str
    partitions: int
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: Secret = field(default_factory=lambda: Secret(""))
    # Empty: the system's trust store (what a managed service's public certificate needs).
    ssl_cafile: str = ""
    # A client certificate and its key, for brokers that authenticate clients by TLS.
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    def __post_init__(self) -> None:
        protocol = self.security_protocol
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise SettingsError(
                f"KAFKA_SECURITY_PROTOCOL={protocol!r} is not one of {', '.join(KAFKA_SECURITY_PROTOCOLS)}"
            )
        if self.sasl_mechanism not in KAFKA_SASL_MECHANISMS:
            raise SettingsError(
                f"KAFKA_SASL_MECHANISM={self.sasl_mechanism!r} is not one of"
                f" {', '.join(KAFKA_SASL_MECHANISMS)}"
            )
        credentials = {
            "KAFKA_SASL_USERNAME": self.sasl_username,
            "KAFKA_SASL_PASSWORD": self.sasl_password.reveal(),
        }
        for name, value in credentials.items():
            if self.uses_sasl and not value:
                raise SettingsError(
                    f"{name} is not set: it is required with KAFKA_SECURITY_PROTOCOL={protocol}"
                )
            if not self.uses_sasl and value:
                # Most likely a forgotten protocol: refuse rather than connect unauthenticated.
                raise SettingsError(
                    f"{name} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not authenticate with SASL"
                    " (use SASL_SSL)"
                )
        if protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN":
            raise SettingsError(
                "KAFKA_SASL_MECHANISM=PLAIN with KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT would send"
                " the password in clear text: use SASL_SSL"
            )
        files = {
            "KAFKA_SSL_CAFILE": self.ssl_cafile,
            "KAFKA_SSL_CERTFILE": self.ssl_certfile,
            "KAFKA_SSL_KEYFILE": self.ssl_keyfile,
        }
        for name, path in files.items():
            if path and not self.uses_tls:
                raise SettingsError(f"{name} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS")
            if path:
                _readable_file(name, path)
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise SettingsError("KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE are set together or not at all")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @classmethod
    def from_env(cls, env: Env) -> KafkaSettings:
        return cls(
            bootstrap_servers=env.text("KAFKA_BOOTSTRAP_SERVERS"),
            topic_prefix=env.text("FLEETREG_TOPIC_PREFIX", "fleetreg"),
            partitions=env.integer("FLEETREG_TOPIC_PARTITIONS", 6, minimum=1),
            security_protocol=env.text("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            sasl_mechanism=env.text("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            sasl_username=env.text("KAFKA_SASL_USERNAME", ""),
            sasl_password=env.secret("KAFKA_SASL_PASSWORD", ""),
            ssl_cafile=env.text("KAFKA_SSL_CAFILE", ""),
            ssl_certfile=env.text("KAFKA_SSL_CERTFILE", ""),
            ssl_keyfile=env.text("KAFKA_SSL_KEYFILE", ""),
        )


@dataclass(frozen=True)
class DatabaseSettings:
    """The registry. TLS is set in DATABASE_URL with libpq's own parameters
    (``?sslmode=verify-full&sslrootcert=/path/ca.pem``), so the migration command and every
    service read it from the same place; see docs/operations.md, "Transport security"."""

    url: Secret
    pool_min: int
    pool_max: int

    @property
    def sslmode(self) -> str:
        """The URL's sslmode; asyncpg's default, "prefer", when it names none."""
        return postgres_tls_parameters(self.url).get("sslmode", "prefer")

    @classmethod
    def from_env(cls, env: Env) -> DatabaseSettings:
        env.url("DATABASE_URL", ("postgresql", "postgres"))
        url = env.secret("DATABASE_URL")
        parameters = postgres_tls_parameters(url)
        sslmode = parameters.get("sslmode")
        if sslmode is not None and sslmode not in POSTGRES_SSLMODES:
            raise SettingsError(
                f"DATABASE_URL: sslmode={sslmode!r} is not one of {', '.join(POSTGRES_SSLMODES)}"
            )
        for parameter in _POSTGRES_SSL_FILES:
            if parameter in parameters:
                _readable_file(f"DATABASE_URL's {parameter}", parameters[parameter])
        return cls(
            url=url,
            pool_min=env.integer("FLEETREG_DB_POOL_MIN", 1, minimum=1),
            pool_max=env.integer("FLEETREG_DB_POOL_MAX", 10, minimum=1),
        )


def postgres_tls_parameters(url: Secret) -> dict[str, str]:
    """The TLS parameters (sslmode, sslrootcert, ...) of a Postgres URL; never its credentials."""
    query = urllib.parse.urlsplit(url.reveal()).query
    return {name: value for name, value in urllib.parse.parse_qsl(query) if name.startswith("ssl")}


SERVICES = ("intake", "operator", "dedup", "provisioning", "ingestion", "notifier")
# The operations port is the service's own port plus this, unless set.
OPS_PORT_OFFSET = 100


@dataclass(frozen=True)
class ConnectionBounds:
    """What one client may hold of an HTTP listener (shared/connections.py enforces them;
    docs/security.md, "Bounded connections", gives the reasons for each default).

    * ``max_header_bytes``: the request line and headers of one request, in total (bytes).
    * ``header_timeout_s``: from a request's first byte to the end of its headers; also
      the TLS handshake's and TLS shutdown's limit.
    * ``body_timeout_s`` and ``body_min_bytes_per_s``: while a body is unfinished, every
      window of ``body_timeout_s`` seconds must bring ``body_min_bytes_per_s`` times as
      many bytes (a window in which the service itself stopped reading is not counted).
    * ``keepalive_s``: how long a connection may wait for its next request.
    * ``send_timeout_s``: how long an answer may wait for a client that takes no byte of
      it (the connection's writing paused); every byte taken restarts the wait, so a
      reader however slow still gets a large answer.
    * ``max_connections_per_source``: open connections of one IPv4 address or IPv6 /64.
    * ``max_connections``: open connections of the process, all listeners together;
      0 derives it from the file-descriptor limit at start (``process_connection_cap``).
    """

    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 15.0
    body_timeout_s: float = 15.0
    body_min_bytes_per_s: int = 500
    keepalive_s: float = 30.0
    send_timeout_s: float = 30.0
    max_connections_per_source: int = 1000
    max_connections: int = 0

    @classmethod
    def from_env(cls, env: Env, prefix: str) -> ConnectionBounds:
        return cls(
            max_header_bytes=env.integer(f"{prefix}_MAX_HEADER_BYTES", 16 * 1024, minimum=1024),
            header_timeout_s=env.number(f"{prefix}_HEADER_TIMEOUT_SECONDS", 15.0, minimum=0.1),
            body_timeout_s=env.number(f"{prefix}_BODY_TIMEOUT_SECONDS", 15.0, minimum=0.1),
            body_min_bytes_per_s=env.integer(f"{prefix}_BODY_MIN_BYTES_PER_SECOND", 500, minimum=1),
            keepalive_s=env.number(f"{prefix}_KEEPALIVE_SECONDS", 30.0, minimum=0.1),
            send_timeout_s=env.number(f"{prefix}_SEND_TIMEOUT_SECONDS", 30.0, minimum=0.1),
            max_connections_per_source=env.integer(f"{prefix}_MAX_CONNECTIONS_PER_SOURCE", 1000, minimum=1),
            max_connections=env.integer(f"{prefix}_MAX_CONNECTIONS", 0, minimum=0),
        )


@dataclass(frozen=True)
class HttpSettings:
    """Where a service listens: ``port`` for its API (``FLEETREG_HTTP_PORT``) and
    ``ops_port`` for /healthz, /readyz and /metrics (``FLEETREG_<SERVICE>_OPS_PORT``,
    default ``port`` + 100; 0 with port 0), both on ``host`` (``FLEETREG_HTTP_HOST``)."""

    host: str
    port: int
    ops_port: int = 0
    connections: ConnectionBounds = field(default_factory=ConnectionBounds)

    @classmethod
    def from_env(cls, env: Env, prefix: str, default_port: int, *, service: str) -> HttpSettings:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}")
        port = env.integer(f"{prefix}_PORT", default_port, minimum=0)
        ops_port = env.integer(
            f"FLEETREG_{service.upper()}_OPS_PORT", port + OPS_PORT_OFFSET if port else 0, minimum=0
        )
        name = f"FLEETREG_{service.upper()}_OPS_PORT"
        if ops_port > 65535:
            raise SettingsError(f"{name}={ops_port} is not a TCP port (set it below 65536)")
        if ops_port and ops_port == port:
            raise SettingsError(f"{name}={ops_port} is the service's own port; give it a port of its own")
        return cls(
            host=env.text(f"{prefix}_HOST", "127.0.0.1"),
            port=port,
            ops_port=ops_port,
            connections=ConnectionBounds.from_env(env, prefix),
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
    """What every Kafka-consuming service reads (deduplication, provisioning, ingestion,
    the notifier): health port, broker, registry, the deployment's secret key, its consumer
    group and batch size. A service's own settings live in its settings module
    (services/dedup/settings.py, ...)."""

    http: HttpSettings
    kafka: KafkaSettings
    database: DatabaseSettings
    secret_key: Secret
    group_id: str
    batch_size: int
    log_level: str

    @classmethod
    def from_env(cls, env: Env, service: str, default_port: int) -> PipelineSettings:
        return cls(
            http=HttpSettings.from_env(env, "FLEETREG_HTTP", default_port, service=service),
            kafka=KafkaSettings.from_env(env),
            database=DatabaseSettings.from_env(env),
            secret_key=secret_key(env),
            group_id=env.text("FLEETREG_CONSUMER_GROUP", f"fleetreg-{service}"),
            batch_size=env.integer("FLEETREG_BATCH_SIZE", 500, minimum=1),
            log_level=env.text("FLEETREG_LOG_LEVEL", "INFO"),
        )


class OnPipeline:
    """What a consumer's own settings (services/<name>/settings.py, a frozen dataclass
    holding :class:`PipelineSettings` as its field ``pipeline``) inherit: their HTTP
    listener and log level are the pipeline's (what shared.service.main reads)."""

    pipeline: PipelineSettings

    @property
    def http(self) -> HttpSettings:
        return self.pipeline.http

    @property
    def log_level(self) -> str:
        return self.pipeline.log_level


def online_ttl_s(env: Env) -> float:
    """FLEETREG_ONLINE_TTL_SECONDS (seconds, default 300, at least 1): how long a device's last
    heartbeat or confirmation keeps it online. One setting for the three services that use
    it: the intake tells devices, the operator shows ``online``/``offline``, the notifier
    sends ``device.offline``; read here so they cannot disagree on its default or bound."""
    return env.number("FLEETREG_ONLINE_TTL_SECONDS", 300.0, minimum=1.0)


def webhooks_allow_private_urls(env: Env) -> bool:
    """FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS (``true`` or ``false``, default false): whether a
    webhook may point at a loopback, link-local or private address. The local stack, the
    demo and the tests turn it on; a deployment facing the internet leaves it off."""
    value = env.text("FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS", "false").lower()
    if value not in ("true", "false"):
        raise SettingsError(f"FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS={value!r} is not true or false")
    return value == "true"
