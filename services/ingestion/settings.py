"""The ingestion service's settings, read once from the environment."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

from shared.settings import Env, HttpSettings, PipelineSettings
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
class IngestionSettings:
    pipeline: PipelineSettings
    limits: BulkLimits
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings.off)

    @property
    def http(self) -> HttpSettings:
        return self.pipeline.http

    @property
    def log_level(self) -> str:
        return self.pipeline.log_level

    @classmethod
    def from_env(cls, env: Env) -> IngestionSettings:
        return cls(
            pipeline=PipelineSettings.from_env(env, "ingestion", default_port=18084),
            limits=BulkLimits(
                max_bytes=env.integer("FLEETREG_BULK_MAX_BYTES", 256 * 1024 * 1024, minimum=1024),
                max_rows=env.integer("FLEETREG_BULK_MAX_ROWS", 2_000_000, minimum=1),
                max_reported_errors=env.integer("FLEETREG_BULK_MAX_REPORTED_ERRORS", 1000, minimum=1),
                publish_chunk_rows=env.integer("FLEETREG_BULK_PUBLISH_CHUNK_ROWS", 20000, minimum=1),
                spool_dir=env.text("FLEETREG_BULK_SPOOL_DIR", tempfile.gettempdir()),
                stale_upload_seconds=env.number("FLEETREG_BULK_STALE_UPLOAD_SECONDS", 3600.0, minimum=60.0),
            ),
            throttle=ThrottleSettings.from_env(env),
        )
