"""Deduplication's settings, read once from the environment: what every Kafka-consuming
service reads (``PipelineSettings``) and the limits only deduplication applies."""

from __future__ import annotations

from dataclasses import dataclass

from shared.domain.dedup import Limits, PerWindow
from shared.settings import Env, OnPipeline, PipelineSettings

DEFAULT_PORT = 18082


def limits_from_env(env: Env) -> Limits:
    """Deduplication's limits (docs/security.md, "Limits"; each a count per window in seconds),
    the one place their environment variables and defaults are written:

    * ``FLEETREG_BULK_MAX_FAILED_CLAIMS`` (10) wrong registration keys for one bulk hardware
      ID within ``FLEETREG_BULK_FAILED_CLAIMS_WINDOW_SECONDS`` (900) raise a security
      alert; the right key still claims.
    * ``FLEETREG_CLONE_LIMIT`` (100) clones (H-N) of one claimed hardware ID of an account
      created from one source within ``FLEETREG_CLONE_WINDOW_SECONDS`` (3600); past it that
      source's clone claims are refused and nothing is created (other sources' are not).
    * ``FLEETREG_CLONE_RATE_PER_SOURCE`` (20) devices of one claimed hardware ID (the first
      and its clones) created from one source within ``FLEETREG_CLONE_RATE_WINDOW_SECONDS``
      (60); past it the claim is answered "try again later" (429 + Retry-After), so a
      squatter pays in time.

    Raises SettingsError naming a variable that is malformed or below its minimum."""
    return Limits(
        clone_limit=PerWindow(
            env.integer("FLEETREG_CLONE_LIMIT", 100, minimum=1),
            env.number("FLEETREG_CLONE_WINDOW_SECONDS", 3600.0, minimum=1.0),
        ),
        clone_rate=PerWindow(
            env.integer("FLEETREG_CLONE_RATE_PER_SOURCE", 20, minimum=1),
            env.number("FLEETREG_CLONE_RATE_WINDOW_SECONDS", 60.0, minimum=1.0),
        ),
        wrong_keys_alert=PerWindow(
            env.integer("FLEETREG_BULK_MAX_FAILED_CLAIMS", 10, minimum=1),
            env.number("FLEETREG_BULK_FAILED_CLAIMS_WINDOW_SECONDS", 900.0, minimum=1.0),
        ),
    )


@dataclass(frozen=True)
class DedupSettings(OnPipeline):
    pipeline: PipelineSettings
    limits: Limits

    @classmethod
    def from_env(cls, env: Env) -> DedupSettings:
        return cls(
            pipeline=PipelineSettings.from_env(env, "dedup", default_port=DEFAULT_PORT),
            limits=limits_from_env(env),
        )
