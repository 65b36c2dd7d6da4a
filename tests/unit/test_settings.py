from __future__ import annotations

from pathlib import Path

import pytest

from services.dedup.settings import DedupSettings
from services.ingestion.settings import HookOptions, IngestionSettings
from services.intake.settings import IntakeSettings
from services.notifier.settings import NotifierSettings
from services.operator.settings import OperatorSettings
from shared.domain import webhooks
from shared.domain.dedup import Limits, PerWindow
from shared.settings import DatabaseSettings, KafkaSettings, PipelineSettings, Secret, SettingsError, load


def test_a_missing_variable_is_named() -> None:
    with pytest.raises(SettingsError, match="KAFKA_BOOTSTRAP_SERVERS is not set"):
        load(KafkaSettings.from_env, {})


def test_a_malformed_number_is_named_with_its_value() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "FLEETREG_TOPIC_PARTITIONS": "many"}
    with pytest.raises(SettingsError, match="FLEETREG_TOPIC_PARTITIONS='many' is not a whole number"):
        load(KafkaSettings.from_env, env)


def test_a_value_below_its_minimum_is_refused() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "FLEETREG_TOPIC_PARTITIONS": "0"}
    with pytest.raises(SettingsError, match="below its minimum of 1"):
        load(KafkaSettings.from_env, env)


def test_database_url_must_be_a_postgres_url_and_is_kept_secret() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL must be a URL"):
        load(DatabaseSettings.from_env, {"DATABASE_URL": "mysql://x"})
    settings = load(DatabaseSettings.from_env, {"DATABASE_URL": "postgresql://u:pw@h/db"})
    assert settings.url.reveal() == "postgresql://u:pw@h/db"
    assert "pw" not in repr(settings)


def test_secret_never_prints_its_value() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in f"{secret} {secret!r}"


# ------------------------------------------------------------ transport security ----
KAFKA = {"KAFKA_BOOTSTRAP_SERVERS": "k:9093"}
SASL = {**KAFKA, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "fleetreg"}


def test_kafka_defaults_to_plaintext_without_credentials() -> None:
    settings = load(KafkaSettings.from_env, KAFKA)
    assert settings.security_protocol == "PLAINTEXT"
    assert not settings.uses_tls and not settings.uses_sasl


def test_kafka_sasl_ssl_with_scram_and_a_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a certificate")
    env = {**SASL, "KAFKA_SASL_PASSWORD": "s3cr3t-pw", "KAFKA_SSL_CAFILE": str(ca)}
    settings = load(KafkaSettings.from_env, env)
    assert settings.uses_tls and settings.uses_sasl and settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.sasl_password.reveal() == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**KAFKA, "KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS' is not one of"),
        ({**SASL, "KAFKA_SASL_PASSWORD": "pw", "KAFKA_SASL_MECHANISM": "MD5"}, "KAFKA_SASL_MECHANISM='MD5'"),
        (SASL, "KAFKA_SASL_PASSWORD is not set: it is required with KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
        (
            {**KAFKA, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "pw"},
            "KAFKA_SASL_USERNAME is not set",
        ),
        (
            {**KAFKA, "KAFKA_SASL_USERNAME": "fleetreg", "KAFKA_SASL_PASSWORD": "pw"},
            "KAFKA_SASL_USERNAME is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not authenticate",
        ),
        (
            {**KAFKA, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_PASSWORD": "pw"},
            "KAFKA_SASL_PASSWORD is set but KAFKA_SECURITY_PROTOCOL=SSL",
        ),
        (
            {
                **SASL,
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_PASSWORD": "pw",
                "KAFKA_SASL_MECHANISM": "PLAIN",
            },
            "clear text",
        ),
        ({**KAFKA, "KAFKA_SSL_CAFILE": "/etc/ca.pem"}, "KAFKA_SSL_CAFILE is set but .*does not use TLS"),
        (
            {**KAFKA, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "KAFKA_SSL_CAFILE='/nonexistent/ca.pem' is not a readable file",
        ),
    ],
)
def test_kafka_transport_mistakes_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load(KafkaSettings.from_env, env)
    assert "pw" not in str(caught.value).replace("PASSWORD", "")


def test_a_kafka_client_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("a certificate")
    env = {**KAFKA, "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(cert)}
    with pytest.raises(SettingsError, match="KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE are set together"):
        load(KafkaSettings.from_env, env)


def test_postgres_tls_is_read_from_the_database_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a certificate")
    url = f"postgresql://u:pw@db.example.com/fleetreg?sslmode=verify-full&sslrootcert={ca}"
    settings = load(DatabaseSettings.from_env, {"DATABASE_URL": url})
    assert settings.sslmode == "verify-full"
    assert load(DatabaseSettings.from_env, {"DATABASE_URL": "postgresql://u:pw@h/db"}).sslmode == "prefer"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sslmode=strict", "DATABASE_URL: sslmode='strict' is not one of disable, allow, prefer"),
        ("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem", "DATABASE_URL's sslrootcert='/nonexistent/"),
    ],
)
def test_postgres_tls_mistakes_are_named_without_the_password(query: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        load(DatabaseSettings.from_env, {"DATABASE_URL": f"postgresql://u:hunter2@h/db?{query}"})
    assert "hunter2" not in str(caught.value)


# -------------------------------------------------- one default, one reader ----
SERVICE_REQUIRED = {
    "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
    "DATABASE_URL": "postgresql://u:pw@h/db",
    "FLEETREG_SECRET_KEY": "k" * 40,
}


def test_the_notifier_retries_on_the_domain_default_schedule() -> None:
    delivery = load(NotifierSettings.from_env, SERVICE_REQUIRED).delivery
    assert delivery.retry_schedule == webhooks.DEFAULT_RETRY_SCHEDULE
    assert delivery.retry_schedule == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    assert delivery.disable_after_s == webhooks.DEFAULT_DISABLE_AFTER_S == 5 * 86400


def test_the_online_ttl_is_one_setting_for_the_three_services_that_use_it() -> None:
    def ttls(environ: dict[str, str]) -> set[float]:
        return {
            load(IntakeSettings.from_env, environ).online_ttl_s,
            load(OperatorSettings.from_env, environ).online_ttl_s,
            load(NotifierSettings.from_env, environ).delivery.online_ttl_s,
        }

    assert ttls(SERVICE_REQUIRED) == {300.0}
    assert ttls({**SERVICE_REQUIRED, "FLEETREG_ONLINE_TTL_SECONDS": "42.5"}) == {42.5}
    low = {**SERVICE_REQUIRED, "FLEETREG_ONLINE_TTL_SECONDS": "0.5"}
    for factory in (IntakeSettings.from_env, OperatorSettings.from_env, NotifierSettings.from_env):
        with pytest.raises(SettingsError, match="FLEETREG_ONLINE_TTL_SECONDS=0.5 is below its minimum of 1"):
            load(factory, low)


def test_only_deduplication_reads_and_checks_its_limits() -> None:
    limits = {
        "FLEETREG_BULK_MAX_FAILED_CLAIMS": "5",
        "FLEETREG_BULK_FAILED_CLAIMS_WINDOW_SECONDS": "60",
        "FLEETREG_CLONE_LIMIT": "7",
        "FLEETREG_CLONE_WINDOW_SECONDS": "120",
        "FLEETREG_CLONE_RATE_PER_SOURCE": "3",
        "FLEETREG_CLONE_RATE_WINDOW_SECONDS": "30",
    }
    assert load(DedupSettings.from_env, {**SERVICE_REQUIRED, **limits}).limits == Limits(
        clone_limit=PerWindow(7, 120), clone_rate=PerWindow(3, 30), wrong_keys_alert=PerWindow(5, 60)
    )
    # The defaults, written in the settings alone (docs/security.md, "Limits").
    assert load(DedupSettings.from_env, SERVICE_REQUIRED).limits == Limits(
        clone_limit=PerWindow(100, 3600), clone_rate=PerWindow(20, 60), wrong_keys_alert=PerWindow(10, 900)
    )
    with pytest.raises(SettingsError, match="FLEETREG_CLONE_LIMIT=0 is below its minimum of 1"):
        load(DedupSettings.from_env, {**SERVICE_REQUIRED, "FLEETREG_CLONE_LIMIT": "0"})
    broken = {**SERVICE_REQUIRED, **{name: "not a number" for name in limits}}
    load(lambda e: PipelineSettings.from_env(e, "provisioning", default_port=0), broken)
    load(IngestionSettings.from_env, broken)
    load(NotifierSettings.from_env, broken)


def test_the_bulk_api_reads_the_registration_hooks_settings_as_the_operator_does() -> None:
    """A bulk registration's hook is set on the bulk API: the same variable decides whether
    its URL may be private (off by default)."""
    assert load(IngestionSettings.from_env, SERVICE_REQUIRED).hooks == HookOptions(allow_private=False)
    private = {"FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS": "true"}
    assert load(IngestionSettings.from_env, {**SERVICE_REQUIRED, **private}).hooks == HookOptions(True)
