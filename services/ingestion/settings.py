"""The ingestion service's settings, read once from the environment."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

from shared.settings import (
    Env,
    OnPipeline,
    PipelineSettings,
    SettingsError,
    webhooks_allow_private_urls,
)
from shared.throttle import ThrottleSettings


@dataclass(frozen=True)
class BulkLimits:
    max_bytes: int  # an upload larger than this is refused (413)
    max_rows: int  # a file with more data rows is refused (413)
    max_reported_errors: int  # errors listed in a rejection; the total is always given
    publish_chunk_rows: int  # rows turned into devices per transaction when publishing
    spool_dir: str  # where an upload is spooled while it is checked
    stale_upload_seconds: float  # an upload 'uploading' for longer was abandoned by a crash


@dataclass(frozen=True)
class UploadBounds:
    """What one instance lets uploads hold at once, and how slowly a body may arrive
    (docs/bulk-registration.md, "Bounds on uploads"; docs/security.md).

    Defaults: 2 uploads at once per API key, 8 per instance, 1 GiB of spool reserved per
    instance (an upload reserves its Content-Length, or FLEETREG_BULK_MAX_BYTES when it
    sends none), and a body must keep up 16 KiB/s on average after a 10 s grace and never
    pause for 30 s: a 256 MiB file gets over 4 hours at that rate, a trickle is cut within
    seconds."""

    per_key: int = 2
    per_instance: int = 8
    spool_bytes: int = 1024 * 1024 * 1024
    min_bytes_per_second: int = 16 * 1024
    grace_seconds: float = 10.0
    idle_seconds: float = 30.0

    @classmethod
    def from_env(cls, env: Env, max_bytes: int) -> UploadBounds:
        bounds = cls(
            per_key=env.integer("FLEETREG_INGESTION_UPLOADS_PER_KEY", 2, minimum=1),
            per_instance=env.integer("FLEETREG_INGESTION_UPLOADS_PER_INSTANCE", 8, minimum=1),
            spool_bytes=env.integer(
                "FLEETREG_INGESTION_SPOOL_BYTES_IN_FLIGHT", 1024 * 1024 * 1024, minimum=1
            ),
            min_bytes_per_second=env.integer(
                "FLEETREG_INGESTION_BODY_MIN_BYTES_PER_SECOND", 16 * 1024, minimum=1
            ),
            grace_seconds=env.number("FLEETREG_INGESTION_BODY_GRACE_SECONDS", 10.0, minimum=0.1),
            idle_seconds=env.number("FLEETREG_INGESTION_BODY_IDLE_SECONDS", 30.0, minimum=0.1),
        )
        if bounds.spool_bytes < max_bytes:
            # Else an upload of the largest allowed size could never be admitted.
            raise SettingsError(
                f"FLEETREG_INGESTION_SPOOL_BYTES_IN_FLIGHT={bounds.spool_bytes} is below "
                f"FLEETREG_BULK_MAX_BYTES={max_bytes}: a file of the allowed size could never be taken"
            )
        return bounds


@dataclass(frozen=True)
class HookOptions:
    """What a bulk registration's hook may be set to, as on the operator API:
    ``allow_private`` (FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS: a hook on a loopback, link-local
    or private address; docs/registration-hook.md)."""

    allow_private: bool = False


@dataclass(frozen=True)
class IngestionSettings(OnPipeline):
    pipeline: PipelineSettings
    limits: BulkLimits
    bounds: UploadBounds = field(default_factory=UploadBounds)
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings.off)
    hooks: HookOptions = field(default_factory=HookOptions)

    @classmethod
    def from_env(cls, env: Env) -> IngestionSettings:
        max_bytes = env.integer("FLEETREG_BULK_MAX_BYTES", 256 * 1024 * 1024, minimum=1024)
        return cls(
            pipeline=PipelineSettings.from_env(env, "ingestion", default_port=18084),
            limits=BulkLimits(
                max_bytes=max_bytes,
                max_rows=env.integer("FLEETREG_BULK_MAX_ROWS", 2_000_000, minimum=1),
                max_reported_errors=env.integer("FLEETREG_BULK_MAX_REPORTED_ERRORS", 1000, minimum=1),
                publish_chunk_rows=env.integer("FLEETREG_BULK_PUBLISH_CHUNK_ROWS", 20000, minimum=1),
                spool_dir=env.text("FLEETREG_BULK_SPOOL_DIR", tempfile.gettempdir()),
                stale_upload_seconds=env.number("FLEETREG_BULK_STALE_UPLOAD_SECONDS", 3600.0, minimum=60.0),
            ),
            bounds=UploadBounds.from_env(env, max_bytes),
            throttle=ThrottleSettings.from_env(env),
            hooks=HookOptions(allow_private=webhooks_allow_private_urls(env)),
        )
