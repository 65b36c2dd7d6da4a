"""The intake's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import DatabaseSettings, Env, HttpSettings, KafkaSettings, Secret, secret_key


@dataclass(frozen=True)
class IntakeSettings:
    http: HttpSettings
    kafka: KafkaSettings
    database: DatabaseSettings
    secret_key: Secret
    outcome_wait_seconds: float  # how long a registration call waits for its outcome
    retry_after_seconds: int  # what a "pending" answer tells the device
    max_body_bytes: int
    online_ttl_seconds: float  # a heartbeat keeps a device online this long
    pending_forget_seconds: float  # an unknown request older than this is "unknown", not "pending"
    log_level: str

    @classmethod
    def from_env(cls, env: Env) -> IntakeSettings:
        return cls(
            http=HttpSettings.from_env(env, "FLEETREG_HTTP", 18080),
            kafka=KafkaSettings.from_env(env),
            database=DatabaseSettings.from_env(env),
            secret_key=secret_key(env),
            outcome_wait_seconds=env.number("FLEETREG_OUTCOME_WAIT_SECONDS", 5.0),
            retry_after_seconds=env.integer("FLEETREG_RETRY_AFTER_SECONDS", 2, minimum=1),
            max_body_bytes=env.integer("FLEETREG_MAX_BODY_BYTES", 16 * 1024, minimum=1024),
            online_ttl_seconds=env.number("FLEETREG_ONLINE_TTL_SECONDS", 300.0, minimum=1.0),
            pending_forget_seconds=env.number("FLEETREG_PENDING_FORGET_SECONDS", 900.0, minimum=1.0),
            log_level=env.text("FLEETREG_LOG_LEVEL", "INFO"),
        )
