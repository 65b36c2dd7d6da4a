"""The operator API's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.settings import (
    DatabaseSettings,
    Env,
    HttpSettings,
    Secret,
    SettingsError,
    online_ttl_s,
    secret_key,
    webhooks_allow_private_urls,
)
from shared.throttle import ThrottleSettings


@dataclass(frozen=True)
class RetentionSettings:
    """How long records are kept before the background pruning deletes them; 0 days keeps
    them forever. Defaults: registration decisions 90 days (the window the peers keep
    device-level history in, e.g. Azure Monitor activity logs, AWS CloudTrail event
    history), the operator audit trail 365 days (a year of who-did-what for reviews),
    device certificates 30 days past their expiry (``not_after``): an expired certificate
    has already left the CRL (it lists revoked certificates until they expire, RFC 5280
    section 3.3's practice), so its row only lets the device's page show it a while
    longer; the audit trail keeps its serial and revocation."""

    decisions_days: int = 90
    audit_days: int = 365
    expired_certificates_days: int = 30
    interval_seconds: float = 300.0  # between pruning rounds
    batch_rows: int = 1000  # rows per delete transaction: short locks on a busy table

    @classmethod
    def from_env(cls, env: Env) -> RetentionSettings:
        return cls(
            decisions_days=env.integer("FLEETREG_RETAIN_DECISIONS_DAYS", 90),
            audit_days=env.integer("FLEETREG_RETAIN_AUDIT_DAYS", 365),
            expired_certificates_days=env.integer("FLEETREG_RETAIN_EXPIRED_CERTIFICATES_DAYS", 30),
            interval_seconds=env.number("FLEETREG_RETENTION_INTERVAL_SECONDS", 300.0, minimum=1.0),
            batch_rows=env.integer("FLEETREG_RETENTION_BATCH_ROWS", 1000, minimum=1),
        )


@dataclass(frozen=True)
class ConsoleSettings:
    """The web console's settings (docs/console.md).

    A session lasts ``session_seconds`` from sign-in whatever is done with it (8 hours: a
    working day, as the AWS console's default session); its cookie is ``Secure`` on https
    requests (or behind a proxy saying ``X-Forwarded-Proto: https``), always when
    ``secure_cookie`` is "always". Every console answer carries
    ``Strict-Transport-Security: max-age=<hsts_seconds>`` (1 year; 0: none): browsers obey
    it only over https and ignore it over http (RFC 6797 section 8.1), so it is sent
    whatever the scheme, which behind a TLS-terminating proxy the service cannot always
    tell. Bulk uploads, publishes and cancels are forwarded to the
    bulk API at ``ingestion_url`` with the session's key. ``pipeline_health_urls`` are the
    readiness URLs (``/readyz``) of the pipeline's services the live view asks.
    ``console_url`` is the console's address as people reach it (``https://fleet.example.com``),
    which invitation links start with; empty: the address each request came to (the
    operator's own, which behind a proxy that rewrites the host is not the public one)."""

    session_seconds: int = 8 * 3600
    secure_cookie: str = "auto"
    ingestion_url: str = "http://127.0.0.1:18084"
    pipeline_health_urls: tuple[str, ...] = ()
    hsts_seconds: int = 365 * 86400
    console_url: str = ""

    @classmethod
    def from_env(cls, env: Env) -> ConsoleSettings:
        secure = env.text("FLEETREG_CONSOLE_SECURE_COOKIE", "auto")
        if secure not in ("auto", "always"):
            raise SettingsError(f"FLEETREG_CONSOLE_SECURE_COOKIE must be auto or always, not {secure!r}")
        urls = env.text("FLEETREG_PIPELINE_HEALTH_URLS", "")
        console_url = env.text("FLEETREG_CONSOLE_URL", "").strip().rstrip("/")
        if console_url and not console_url.startswith(("http://", "https://")):
            raise SettingsError(f"FLEETREG_CONSOLE_URL must be empty or an http(s) URL, not {console_url!r}")
        return cls(
            session_seconds=env.integer("FLEETREG_CONSOLE_SESSION_SECONDS", 8 * 3600, minimum=60),
            secure_cookie=secure,
            ingestion_url=env.url(
                "FLEETREG_INGESTION_URL", ("http", "https"), "http://127.0.0.1:18084"
            ).rstrip("/"),
            pipeline_health_urls=tuple(u.strip() for u in urls.split(",") if u.strip()),
            hsts_seconds=env.integer("FLEETREG_CONSOLE_HSTS_SECONDS", 31536000),
            console_url=console_url,
        )


@dataclass(frozen=True)
class OperatorSettings:
    http: HttpSettings
    database: DatabaseSettings
    online_ttl_s: float  # shared.settings.online_ttl_s
    page_limit_max: int
    log_level: str
    # Up to this many matching devices a listing's total is exact; above, an estimate
    # flagged total_exact: false (shared/db/devices.py count_devices).
    count_exact_max: int = 10_000
    # Device exports one instance streams at once (each holds a database connection for
    # its length); one more is answered 429 with Retry-After.
    exports_max: int = 2
    # An export whose client takes no byte for this long is ended (its snapshot released);
    # progress, not a rate: a slow but steady reader gets the whole export.
    export_stall_seconds: float = 30.0
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings.off)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    # Webhooks: their signing secrets are sealed with a key derived from this one.
    secret_key: Secret = field(default_factory=lambda: Secret(""))
    webhooks_allow_private_urls: bool = False
    max_webhooks: int = 20  # per account
    # Active API keys per account: each key has its own request rate, so keys without a
    # bound would make the per-key limit an account's to multiply.
    max_api_keys: int = 50
    console: ConsoleSettings = field(default_factory=lambda: ConsoleSettings())

    @classmethod
    def from_env(cls, env: Env) -> OperatorSettings:
        return cls(
            http=HttpSettings.from_env(env, "FLEETREG_HTTP", service="operator", default_port=18081),
            database=DatabaseSettings.from_env(env),
            online_ttl_s=online_ttl_s(env),
            page_limit_max=env.integer("FLEETREG_PAGE_LIMIT_MAX", 1000, minimum=1),
            log_level=env.text("FLEETREG_LOG_LEVEL", "INFO"),
            count_exact_max=env.integer("FLEETREG_COUNT_EXACT_MAX", 10_000, minimum=0),
            exports_max=env.integer("FLEETREG_EXPORTS_MAX", 2, minimum=1),
            export_stall_seconds=env.number("FLEETREG_EXPORT_STALL_SECONDS", 30.0, minimum=1.0),
            throttle=ThrottleSettings.from_env(env),
            retention=RetentionSettings.from_env(env),
            secret_key=secret_key(env),
            webhooks_allow_private_urls=webhooks_allow_private_urls(env),
            max_webhooks=env.integer("FLEETREG_WEBHOOKS_MAX_PER_ACCOUNT", 20, minimum=1),
            max_api_keys=env.integer("FLEETREG_API_KEYS_MAX_PER_ACCOUNT", 50, minimum=1),
            console=ConsoleSettings.from_env(env),
        )
