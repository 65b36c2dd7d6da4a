"""The notifier's settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.webhooks import DEFAULT_DISABLE_AFTER_S, DEFAULT_RETRY_SCHEDULE_TEXT, parse_schedule
from shared.settings import (
    Env,
    OnPipeline,
    PipelineSettings,
    SettingsError,
    online_ttl_s,
    webhooks_allow_private_urls,
)

DEFAULT_PORT = 18085


@dataclass(frozen=True)
class DeliverySettings:
    """How webhooks are delivered (docs/operations.md, "Webhooks")."""

    allow_private_urls: bool  # loopback, link-local and private addresses may be called
    retry_schedule: tuple[float, ...]  # seconds before each retry; then the delivery has failed
    timeout_s: float  # one attempt, connecting included; past it the attempt failed
    per_webhook: int  # attempts in flight at once for one webhook (on one instance)
    concurrency: int  # attempts in flight at once on one instance, all webhooks together
    poll_s: float  # how often due deliveries are looked for when there was nothing to send
    sweep_s: float  # how often closed refusal minutes and offline devices are looked for
    online_ttl_s: float  # a provisioned device not seen for this long is offline
    retention_s: float  # finished deliveries (and their attempts) are pruned past this age; 0: kept
    # A webhook whose every attempt failed for this long is disabled (410 Gone: at once).
    disable_after_s: float = DEFAULT_DISABLE_AFTER_S
    # Calls in flight at once to one registration hook, on one instance; past it a call
    # waits for a slot within the hook's timeout (docs/registration-hook.md).
    hook_concurrency: int = 16

    @property
    def lease_s(self) -> float:
        """How long a claimed delivery is left to its instance: past it (the instance died),
        another one sends it again."""
        return self.timeout_s + 30.0


@dataclass(frozen=True)
class NotifierSettings(OnPipeline):
    pipeline: PipelineSettings
    delivery: DeliverySettings

    @classmethod
    def from_env(cls, env: Env) -> NotifierSettings:
        schedule_text = env.text("FLEETREG_WEBHOOK_RETRY_SCHEDULE", DEFAULT_RETRY_SCHEDULE_TEXT)
        try:
            schedule = parse_schedule(schedule_text)
        except ValueError as exc:
            raise SettingsError(f"FLEETREG_WEBHOOK_RETRY_SCHEDULE={schedule_text!r}: {exc}") from exc
        return cls(
            pipeline=PipelineSettings.from_env(env, "notifier", default_port=DEFAULT_PORT),
            delivery=DeliverySettings(
                allow_private_urls=webhooks_allow_private_urls(env),
                retry_schedule=schedule,
                timeout_s=env.number("FLEETREG_WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1),
                per_webhook=env.integer("FLEETREG_WEBHOOK_CONCURRENCY_PER_WEBHOOK", 10, minimum=1),
                concurrency=env.integer("FLEETREG_WEBHOOK_CONCURRENCY", 200, minimum=1),
                poll_s=env.number("FLEETREG_WEBHOOK_POLL_SECONDS", 0.5, minimum=0.01),
                sweep_s=env.number("FLEETREG_WEBHOOK_SWEEP_SECONDS", 10.0, minimum=0.1),
                online_ttl_s=online_ttl_s(env),
                retention_s=86400.0 * env.number("FLEETREG_WEBHOOK_RETENTION_DAYS", 14.0, minimum=0.0),
                disable_after_s=env.number(
                    "FLEETREG_WEBHOOK_DISABLE_AFTER_SECONDS", DEFAULT_DISABLE_AFTER_S, minimum=1.0
                ),
                hook_concurrency=env.integer("FLEETREG_HOOK_CONCURRENCY", 16, minimum=1),
            ),
        )
