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
RECORDS = Counter("fleetreg_records_total", "Kafka records handled", ["service"])
CONSUMER_LAG = Gauge(
    "fleetreg_consumer_lag_records",
    "Records between a consumer's position and the partition end",
    ["service", "topic", "partition"],
)
READINESS_PROBES = Counter(
    "fleetreg_readiness_probes_total",
    "Database queries made for /readyz (its answer is kept a second: shared/http.py)",
    ["service"],
)
PIPELINE_HEALTH_CHECKS = Counter(
    "fleetreg_pipeline_health_checks_total",
    "Pipeline health computations for the console's live view (kept a second, shared by every tab)",
)
ERRORS = Counter("fleetreg_errors_total", "Errors by service and kind", ["service", "kind"])
PERIODIC_JOB_FAILURES = Counter(
    "fleetreg_periodic_job_failures_total",
    "Rounds of periodic work that failed (logged; the job goes on at its next round:"
    " shared/periodic.py), by service and job",
    ["service", "job"],
)
DEAD_LETTERED = Counter(
    "fleetreg_dead_lettered_total",
    "Records copied to the dead-letter topic, by consumer and stage (decode: no schema took it;"
    " handle: its handler failed on it alone)",
    ["service", "stage"],
)
PRODUCER_REPLACED = Counter(
    "fleetreg_kafka_producer_replaced_total",
    "Kafka producers replaced after a fatal idempotence error (shared.kafka.Producer)",
)
QUOTA_REFUSALS = Counter(
    "fleetreg_quota_refusals_total",
    "Registration claims refused by a limit on device creation, by the limit (shared.domain.dedup.Quota)",
    ["quota"],
)
SECURITY_ALERTS = Counter(
    "fleetreg_security_alerts_total",
    "Security alerts raised (a threshold crossed within its window), by kind",
    ["kind"],
)
SECURITY_ALERT_EVENTS = Counter(
    "fleetreg_security_alert_events_total",
    "Occurrences at or past an alert's threshold (each wrong key once alerted), by kind",
    ["kind"],
)
THROTTLED = Counter(
    "fleetreg_throttled_total",
    "Calls answered 429 (or the reference protocol's pending/refusal) by a limit",
    ["service", "limit"],
)
THROTTLE_REFUSALS = Counter(
    "fleetreg_throttle_refusals_total",
    "Refused calls counted against their source address (unknown code, wrong key or secret)",
    ["service"],
)
THROTTLE_BLOCKED_SOURCES = Gauge(
    "fleetreg_throttle_blocked_sources",
    "Source addresses this instance currently answers 429 for refused calls",
    ["service"],
)
CONSOLE_SESSION_READS = Counter(
    "fleetreg_console_session_reads_total",
    "Console session rows looked up in the registry (cookies carrying this deployment's tag only)",
)
MALFORMED_REQUESTS = Counter(
    "fleetreg_http_malformed_requests_total",
    "Requests refused by the HTTP parser (oversized headers, bad request lines) before any route",
)
UNKNOWN_CODE_REFUSALS = Counter(
    "fleetreg_unknown_code_refusals_total",
    "Calls with an unknown Bulk Identification Code refused by the intake (nothing published or written)",
    ["protocol"],
)
COMPAT_NEW_HARDWARE_IDS_REFUSED = Counter(
    "fleetreg_compat_new_hardware_ids_refused_total",
    "Reference step-1 reports of a new hardware ID refused: the source's cap a minute was reached",
)
HTTP_CONNECTIONS_OPEN = Gauge(
    "fleetreg_http_connections_open",
    "Client connections open on the HTTP listeners (shared/connections.py)",
    ["service"],
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "fleetreg_http_connections_refused_total",
    "Connections answered 503 past a connection cap: source (per address) or process",
    ["service", "limit"],
)
HTTP_CONNECTIONS_CLOSED = Counter(
    "fleetreg_http_connections_closed_total",
    "Connections closed past a bound: header_bytes (431), header_timeout (408), body_rate, send_timeout",
    ["service", "reason"],
)
CACHE_INVALIDATIONS = Counter(
    "fleetreg_device_cache_invalidations_total",
    "Invalidation signals applied by the intake's device cache",
    ["kind"],
)

WEBHOOK_DELIVERIES = Counter(
    "fleetreg_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered, retrying (failed, tried again later), failed (gave up)",
    ["outcome"],
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "fleetreg_webhook_attempt_seconds",
    "Duration of one webhook attempt, from sending to the answer (or the failure)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HOOK_CALLS = Counter(
    "fleetreg_hook_calls_total",
    "Registration hook calls by outcome: allow, deny, timeout, error (connection), http_error "
    "(a non-2xx status), redirect, malformed, refused (a forbidden address), breaker_open, busy",
    ["outcome"],
)
HOOK_CALL_SECONDS = Histogram(
    "fleetreg_hook_call_seconds",
    "Duration of one registration hook call, from sending to the answer (or the failure)",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HOOK_BREAKERS_OPEN = Gauge(
    "fleetreg_hook_breakers_open",
    "Registration hooks whose circuit breaker is open (their calls fail at once) in this process",
)
WEBHOOK_DELIVERY_LAG = Histogram(
    "fleetreg_webhook_delivery_lag_seconds",
    "Time from a delivery being queued to its successful attempt",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000),
)
WEBHOOK_PENDING = Gauge(
    "fleetreg_webhook_pending_deliveries", "Webhook deliveries not yet delivered or failed"
)
WEBHOOK_LAG = Gauge(
    "fleetreg_webhook_lag_seconds", "How long the oldest due webhook delivery has waited (0 when none is due)"
)
WEBHOOKS_DISABLED = Counter(
    "fleetreg_webhooks_disabled_total",
    "Webhooks the notifier disabled: their endpoint answered 410 Gone, or failed for the disable period",
)

DEVICE_CERTIFICATES_ISSUED = Counter(
    "fleetreg_device_certificates_issued_total",
    "Device certificates signed by an account's issuing CA, by how the device asked"
    " (registration, native, est_enroll, est_reenroll)",
    ["via"],
)
CERTIFICATE_LIMIT_REFUSALS = Counter(
    "fleetreg_certificate_limit_refusals_total",
    "Certificates not issued because the device holds FLEETREG_MAX_CERTIFICATES_PER_DEVICE"
    " unexpired ones, by how the device asked (registration, native, est_enroll, est_reenroll)",
    ["via"],
)
CSR_REFUSALS = Counter(
    "fleetreg_csr_refusals_total",
    "CSRs refused, by reason (too_large, malformed, bad_signature, weak_key, unsupported_key)",
    ["reason"],
)
TLS_CLIENT_ANCHORS = Gauge(
    "fleetreg_tls_client_anchors",
    "CA certificates a client certificate on the https listener may chain to (each account's"
    " issuing CA, the verified attestation CAs), as of the last refresh (shared/tls.py)",
)
CLIENT_CERTIFICATE_REFUSALS = Counter(
    "fleetreg_client_certificate_refusals_total",
    "Client certificates refused by the application after the handshake, by reason (unknown_issuer,"
    " unknown_serial, revoked, expired, not_yet_valid, disabled, other_registration, malformed_header)",
    ["reason"],
)

X509_REFUSALS = Counter(
    "fleetreg_x509_refusals_total",
    "Claims of x509 auto registrations refused for their device certificate, by rule (no_certificate,"
    " malformed, expired, not_yet_valid, unknown_issuer, ca_not_verified, self_signed, ca_certificate,"
    " key_usage, extended_key_usage, revoked, no_hardware_id, hardware_id_mismatch)",
    ["rule"],
)


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
