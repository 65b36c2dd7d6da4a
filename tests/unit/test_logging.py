from __future__ import annotations

import logging

import orjson

from shared.logging import REDACTED, JsonFormatter


def _format(**extra: object) -> dict[str, object]:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.__dict__.update(extra)
    parsed = orjson.loads(JsonFormatter("svc").format(record))
    assert isinstance(parsed, dict)
    return parsed


def test_log_lines_are_json_with_extra_fields() -> None:
    entry = _format(hardware_id="b827eb8905e5")
    assert entry["msg"] == "hello you"
    assert entry["service"] == "svc"
    assert entry["hardware_id"] == "b827eb8905e5"


def test_fields_that_hold_secrets_are_redacted() -> None:
    entry = _format(
        bulk_identification_code="2513F28C-13AD-BEBE-7329-D70C2F5F34A6",
        device_secret="s3cr3t",
        registration_key="k",
        api_key="fr_abc",
    )
    for name in ("bulk_identification_code", "device_secret", "registration_key", "api_key"):
        assert entry[name] == REDACTED
    assert "s3cr3t" not in orjson.dumps(entry).decode()
