"""Prometheus metrics, defined once for every service (each process exports its own)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

HTTP_REQUESTS = Counter(
    "fleetreg_http_requests_total", "HTTP requests answered", ["service", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "fleetreg_http_request_seconds",
    "HTTP request latency",
    ["service", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REGISTRATIONS = Counter(
    "fleetreg_registrations_total",
    "Registration decisions by outcome (new, same, clone, refused)",
    ["decision"],
)
PIPELINE_LATENCY = Histogram(
    "fleetreg_pipeline_seconds",
    "Time from a device's request to the end of a pipeline stage",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCHES = Counter("fleetreg_batches_total", "Kafka batches handled", ["service"])
CONSUMER_LAG = Gauge(
    "fleetreg_consumer_lag_records",
    "Records between a consumer's position and the partition end",
    ["service", "topic", "partition"],
)
ERRORS = Counter("fleetreg_errors_total", "Errors by service and kind", ["service", "kind"])


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
