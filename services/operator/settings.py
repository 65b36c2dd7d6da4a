"""The operator API's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import DatabaseSettings, Env, HttpSettings


@dataclass(frozen=True)
class OperatorSettings:
    http: HttpSettings
    database: DatabaseSettings
    online_ttl_seconds: float
    page_limit_max: int
    log_level: str

    @classmethod
    def from_env(cls, env: Env) -> OperatorSettings:
        return cls(
            http=HttpSettings.from_env(env, "FLEETREG_HTTP", 18081),
            database=DatabaseSettings.from_env(env),
            online_ttl_seconds=env.number("FLEETREG_ONLINE_TTL_SECONDS", 300.0, minimum=1.0),
            page_limit_max=env.integer("FLEETREG_PAGE_LIMIT_MAX", 1000, minimum=1),
            log_level=env.text("FLEETREG_LOG_LEVEL", "INFO"),
        )
