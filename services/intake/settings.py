"""The intake's settings, read once from the environment."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shared.domain.certificates import (
    DEVICE_CERT_DAYS_DEFAULT,
    DEVICE_CERT_DAYS_MAX,
    DEVICE_CERT_DAYS_MIN,
    MAX_CERTIFICATES_PER_DEVICE_DEFAULT,
    MAX_CERTIFICATES_PER_DEVICE_MAX,
    MAX_CERTIFICATES_PER_DEVICE_MIN,
)
from shared.http import TlsSite
from shared.settings import (
    DatabaseSettings,
    Env,
    HttpSettings,
    KafkaSettings,
    Secret,
    SettingsError,
    online_ttl_s,
    secret_key,
)
from shared.throttle import ThrottleSettings
from shared.tls import REFRESH_DEFAULT_S, REFRESH_MAX_S, REFRESH_MIN_S


@dataclass(frozen=True)
class CompatSettings:
    """The reference-compatible device API (apv/v27), served over https."""

    prefix: str
    information_retention_seconds: float  # step-1 records older than this are deleted
    wait_seconds: float  # its calls cannot answer "pending" at every step: they wait longer
    tls: TlsSite | None  # None: no https listener (the routes still answer on the http port)
    # Step-1 records of hardware IDs a source reports for the first time, at most this many
    # a minute (a 2,000-device NAT boot passes the default); overwrites are never capped.
    new_hardware_ids_per_minute: int = 3000
    # How often the https listener re-reads the CAs a client certificate may chain to
    # (shared/tls.py): a new account's CA or a newly verified one is accepted within it.
    client_ca_refresh_seconds: float = REFRESH_DEFAULT_S

    @classmethod
    def from_env(cls, env: Env) -> CompatSettings:
        prefix = env.text("FLEETREG_COMPAT_PREFIX", "/apv/v27").rstrip("/")
        if not prefix.startswith("/"):
            raise SettingsError(f"FLEETREG_COMPAT_PREFIX={prefix!r} must start with '/'")
        cert, key = env.text("FLEETREG_TLS_CERT", "-"), env.text("FLEETREG_TLS_KEY", "-")
        if (cert == "-") != (key == "-"):
            raise SettingsError("FLEETREG_TLS_CERT and FLEETREG_TLS_KEY must be set together")
        tls = None
        if cert != "-":
            tls = TlsSite(
                host=env.text("FLEETREG_COMPAT_HOST", env.text("FLEETREG_HTTP_HOST", "127.0.0.1")),
                port=env.integer("FLEETREG_COMPAT_PORT", 18443),
                cert_file=cert,
                key_file=key,
            )
        return cls(
            prefix=prefix,
            information_retention_seconds=env.number(
                "FLEETREG_COMPAT_INFORMATION_RETENTION_SECONDS", 86400.0, minimum=600.0
            ),
            wait_seconds=env.number("FLEETREG_COMPAT_WAIT_SECONDS", 20.0),
            tls=tls,
            new_hardware_ids_per_minute=env.integer(
                "FLEETREG_COMPAT_NEW_HARDWARE_IDS_PER_MINUTE", 3000, minimum=1
            ),
            client_ca_refresh_seconds=client_ca_refresh_seconds(env),
        )


@dataclass(frozen=True)
class IntakeSettings:
    http: HttpSettings
    kafka: KafkaSettings
    database: DatabaseSettings
    secret_key: Secret
    outcome_wait_seconds: float  # how long a registration call waits for its outcome
    retry_after_seconds: int  # what a "pending" answer tells the device
    max_body_bytes: int
    online_ttl_s: float  # a heartbeat keeps a device online this long (shared.settings.online_ttl_s)
    pending_forget_seconds: float  # an unknown request older than this is "unknown", not "pending"
    log_level: str
    compat: CompatSettings
    device_cache_seconds: float = 2.0  # see services/intake/device_cache.py
    code_cache_seconds: float = 10.0  # see services/intake/code_cache.py
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings.off)
    device_cert_days: int = DEVICE_CERT_DAYS_DEFAULT  # validity of a device certificate
    # The header a trusted proxy forwards a client certificate in; None: none is read.
    client_cert_header: str | None = None
    # unexpired certificates (revoked or not) a device may hold: services/intake/certificates.py
    max_certificates_per_device: int = MAX_CERTIFICATES_PER_DEVICE_DEFAULT

    def __post_init__(self) -> None:
        tls = self.compat.tls
        if tls is not None and self.http.ops_port and tls.port == self.http.ops_port:
            raise SettingsError(
                f"FLEETREG_INTAKE_OPS_PORT={self.http.ops_port} is also FLEETREG_COMPAT_PORT; "
                "the operations port must not be the https device port"
            )

    @classmethod
    def from_env(cls, env: Env) -> IntakeSettings:
        return cls(
            http=HttpSettings.from_env(env, "FLEETREG_HTTP", service="intake", default_port=18080),
            kafka=KafkaSettings.from_env(env),
            database=DatabaseSettings.from_env(env),
            secret_key=secret_key(env),
            outcome_wait_seconds=env.number("FLEETREG_OUTCOME_WAIT_SECONDS", 5.0),
            retry_after_seconds=env.integer("FLEETREG_RETRY_AFTER_SECONDS", 2, minimum=1),
            max_body_bytes=env.integer("FLEETREG_MAX_BODY_BYTES", 16 * 1024, minimum=1024),
            online_ttl_s=online_ttl_s(env),
            pending_forget_seconds=env.number("FLEETREG_PENDING_FORGET_SECONDS", 900.0, minimum=1.0),
            log_level=env.text("FLEETREG_LOG_LEVEL", "INFO"),
            compat=CompatSettings.from_env(env),
            device_cache_seconds=env.number("FLEETREG_DEVICE_CACHE_SECONDS", 2.0),
            code_cache_seconds=env.number("FLEETREG_CODE_CACHE_SECONDS", 10.0, minimum=0.0),
            throttle=ThrottleSettings.from_env(env),
            device_cert_days=device_cert_days(env),
            client_cert_header=client_cert_header(env),
            max_certificates_per_device=max_certificates_per_device(env),
        )


def device_cert_days(env: Env) -> int:
    """FLEETREG_DEVICE_CERT_DAYS: how long a device certificate is valid, in days
    (DEVICE_CERT_DAYS_MIN..DEVICE_CERT_DAYS_MAX, default DEVICE_CERT_DAYS_DEFAULT)."""
    days = env.integer("FLEETREG_DEVICE_CERT_DAYS", DEVICE_CERT_DAYS_DEFAULT, minimum=DEVICE_CERT_DAYS_MIN)
    if days > DEVICE_CERT_DAYS_MAX:
        raise SettingsError(
            f"FLEETREG_DEVICE_CERT_DAYS={days} is above its maximum of {DEVICE_CERT_DAYS_MAX}"
        )
    return days


def client_ca_refresh_seconds(env: Env) -> float:
    """FLEETREG_TLS_CLIENT_CA_REFRESH_SECONDS: how often, in seconds, the https listener
    re-reads the CAs a client certificate may chain to (REFRESH_MIN_S..REFRESH_MAX_S,
    default REFRESH_DEFAULT_S; shared/tls.py)."""
    seconds = env.number("FLEETREG_TLS_CLIENT_CA_REFRESH_SECONDS", REFRESH_DEFAULT_S, minimum=REFRESH_MIN_S)
    if seconds > REFRESH_MAX_S:
        raise SettingsError(
            f"FLEETREG_TLS_CLIENT_CA_REFRESH_SECONDS={seconds:g} is above its maximum of {REFRESH_MAX_S:g}"
        )
    return seconds


# RFC 9110 section 5.6.2: a field name is a token.
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def client_cert_header(env: Env) -> str | None:
    """FLEETREG_CLIENT_CERT_HEADER: the header in which a proxy listed in
    FLEETREG_TRUSTED_PROXIES forwards a client's certificate (``X-Client-Cert``;
    ``X-Amzn-Mtls-Clientcert`` for AWS ALB), or ``-`` (the default) for none: the header is
    then never read (shared/client_certs.py says why it is off by default)."""
    value = env.text("FLEETREG_CLIENT_CERT_HEADER", "-").strip()
    if value == "-":
        return None
    if not _FIELD_NAME.fullmatch(value):
        raise SettingsError(f"FLEETREG_CLIENT_CERT_HEADER={value!r} is not a header name (or -)")
    return value


def max_certificates_per_device(env: Env) -> int:
    """FLEETREG_MAX_CERTIFICATES_PER_DEVICE: how many unexpired certificates, revoked or
    not, one device may hold (MAX_CERTIFICATES_PER_DEVICE_MIN..MAX_CERTIFICATES_PER_DEVICE_MAX,
    default MAX_CERTIFICATES_PER_DEVICE_DEFAULT)."""
    limit = env.integer(
        "FLEETREG_MAX_CERTIFICATES_PER_DEVICE",
        MAX_CERTIFICATES_PER_DEVICE_DEFAULT,
        minimum=MAX_CERTIFICATES_PER_DEVICE_MIN,
    )
    if limit > MAX_CERTIFICATES_PER_DEVICE_MAX:
        raise SettingsError(
            f"FLEETREG_MAX_CERTIFICATES_PER_DEVICE={limit} is above its maximum of "
            f"{MAX_CERTIFICATES_PER_DEVICE_MAX}"
        )
    return limit
