"""The operator API's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.settings import (
    DatabaseSettings,
    Env,
    HttpSettings,
    Secret,
    secret_key,
    webhooks_allow_private_urls,
)
from shared.throttle import ThrottleSettings


@dataclass(frozen=True)
class OperatorSettings:
    http: HttpSettings
    database: DatabaseSettings
    online_ttl_seconds: float
    page_limit_max: int
    log_level: str
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings.off)
    # Webhooks: their signing secrets are sealed with a key derived from this one.
    secret_key: Secret = field(default_factory=lambda: Secret(""))
    webhooks_allow_private_urls: bool = False
    max_webhooks: int = 20  # per account

    @classmethod
    def from_env(cls, env: Env) -> OperatorSettings:
        return cls(
            http=HttpSettings.from_env(env, "FLEETREG_HTTP", 18081),
            database=DatabaseSettings.from_env(env),
            online_ttl_seconds=env.number("FLEETREG_ONLINE_TTL_SECONDS", 300.0, minimum=1.0),
            page_limit_max=env.integer("FLEETREG_PAGE_LIMIT_MAX", 1000, minimum=1),
            log_level=env.text("FLEETREG_LOG_LEVEL", "INFO"),
            throttle=ThrottleSettings.from_env(env),
            secret_key=secret_key(env),
            webhooks_allow_private_urls=webhooks_allow_private_urls(env),
            max_webhooks=env.integer("FLEETREG_WEBHOOKS_MAX_PER_ACCOUNT", 20, minimum=1),
        )
