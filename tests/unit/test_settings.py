from __future__ import annotations

import pytest

from shared.settings import DatabaseSettings, KafkaSettings, Secret, SettingsError, load


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
