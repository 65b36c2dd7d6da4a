from __future__ import annotations

import logging
import sys
import uuid

import orjson
import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from shared.domain.credentials import Keyring, new_api_key
from shared.domain.identifiers import new_code, new_request_id
from shared.domain.provisioning import FileSpec, render
from shared.logging import REDACTED, JsonFormatter, exception_summary, redact

KEYRING = Keyring(b"unit-test-secret-key-that-is-long-enough")
DEVICE_ID = str(uuid.uuid4())


def _format_record(record: logging.LogRecord) -> dict[str, object]:
    parsed = orjson.loads(JsonFormatter("svc").format(record))
    assert isinstance(parsed, dict)
    return parsed


def _format(**extra: object) -> dict[str, object]:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.__dict__.update(extra)
    return _format_record(record)


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


# Each secret the system holds, as a text in which it may reach a log line: (name,
# the secret itself, the text around it). The text is what a library or a careless
# message would write; the secret must not survive in it, nor its first 16 characters.
API_KEY = new_api_key()
DEVICE_SECRET = KEYRING.device_secret(DEVICE_ID, 0)
SERVICE_PASSWORD = KEYRING.service_password(str(uuid.uuid4()), 3)
CODE = new_code()
REGISTRATION_KEY = "rk-" + uuid.uuid4().hex[:12] + "-Q9"
DSN_PASSWORD = "Pw" + uuid.uuid4().hex[:14]
PROVISIONING_FILE = render(
    FileSpec(
        provisioning_id=str(uuid.uuid4()),
        position=1,
        service_name="ssh",
        type_code=28,
        port=22,
        service_uid="80:00:00:00:01:02:03:04",
        hardware_id="b827eb8905e5",
        device_name="d",
    ),
    SERVICE_PASSWORD,
).decode()

CASES = [
    ("api key as bearer", API_KEY, f"Authorization: Bearer {API_KEY}"),
    ("api key alone", API_KEY, f"unknown key {API_KEY} given"),
    ("api key in a header dict", API_KEY, f"{{'Authorization': 'Bearer {API_KEY}', 'Host': 'x'}}"),
    ("device secret as bearer", DEVICE_SECRET, f"Bearer {DEVICE_SECRET}"),
    ("device secret alone", DEVICE_SECRET, f"secret={DEVICE_SECRET[:40]}... cut short"),
    ("device secret in JSON", DEVICE_SECRET, f'{{"device_secret": "{DEVICE_SECRET}", "x": 1}}'),
    ("compat device secret", DEVICE_SECRET, f'{{"DeviceSecret":"{DEVICE_SECRET}"}}'),
    ("service password", SERVICE_PASSWORD, f"password {SERVICE_PASSWORD}"),
    ("provisioning file repr", SERVICE_PASSWORD, repr(PROVISIONING_FILE)),
    ("provisioning file text", SERVICE_PASSWORD, PROVISIONING_FILE),
    ("code", CODE, f"unknown code {CODE}"),
    ("code with a tail", CODE, f"/v1/devices/{CODE}AAAAAAAAAAAA/manifest"),
    ("registration key in JSON", REGISTRATION_KEY, f'{{"registration_key": "{REGISTRATION_KEY}"}}'),
    ("registration key, broken JSON", REGISTRATION_KEY, f'{{"registration_key": "{REGISTRATION_KEY}'),
    ("registration key as a field", REGISTRATION_KEY, f"registration_key={REGISTRATION_KEY}&hardware_id=h"),
    (
        "dsn password",
        DSN_PASSWORD,
        f"cannot connect to postgresql://fleetreg:{DSN_PASSWORD}@db:5432/fleetreg",
    ),
    (
        "aiohttp: oversized authorization header",
        API_KEY,
        str(LineTooLong(f"Bearer {API_KEY}{'A' * 60}...".encode(), 8190)),
    ),
    (
        "aiohttp: oversized other header, registration key",
        REGISTRATION_KEY,
        str(LineTooLong(f"{REGISTRATION_KEY}{'x' * 90}...".encode(), 8190)),
    ),
    (
        "aiohttp: oversized URL",
        CODE,
        str(LineTooLong(bytes(f"/v1/devices/{CODE}{'A' * 50}...".encode()), 8190)),
    ),
    (
        "aiohttp: NUL in a header",
        DEVICE_SECRET,
        str(BadHttpMessage("Invalid header value char:\n\n  " + repr(f"Bearer {DEVICE_SECRET}\0".encode()))),
    ),
]
IDS = [case[0] for case in CASES]


def _assert_clean(output: str, secret: str) -> None:
    assert secret not in output
    assert secret[:16] not in output


@pytest.mark.parametrize(("name", "secret", "text"), CASES, ids=IDS)
def test_a_secret_in_the_message_is_redacted(name: str, secret: str, text: str) -> None:
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, text, None, None)
    _assert_clean(JsonFormatter("svc").format(record), secret)


@pytest.mark.parametrize(("name", "secret", "text"), CASES, ids=IDS)
def test_a_secret_in_the_arguments_is_redacted(name: str, secret: str, text: str) -> None:
    record = logging.LogRecord("asyncpg", logging.WARNING, __file__, 1, "failed: %s (%r)", (text, text), None)
    _assert_clean(JsonFormatter("svc").format(record), secret)


@pytest.mark.parametrize(("name", "secret", "text"), CASES, ids=IDS)
def test_a_secret_in_an_exception_and_its_traceback_is_redacted(name: str, secret: str, text: str) -> None:
    def fail() -> None:
        try:
            raise KeyError(text)
        except KeyError as inner:
            raise ValueError(text) from inner

    try:
        fail()
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("root", logging.ERROR, __file__, 1, "Error handling request", None, exc_info)
    entry = _format_record(record)
    assert "ValueError" in str(entry["exc"])
    assert "Traceback" in str(entry["exc"])
    _assert_clean(orjson.dumps(entry).decode(), secret)


@pytest.mark.parametrize(("name", "secret", "text"), CASES, ids=IDS)
def test_a_secret_in_an_innocent_looking_extra_field_is_redacted(name: str, secret: str, text: str) -> None:
    entry = _format(error=text, detail={"body": text, "lines": [text]}, route=("/x", text))
    _assert_clean(orjson.dumps(entry).decode(), secret)


def test_what_is_not_secret_stays_readable() -> None:
    product_id, request_id = str(uuid.uuid4()), new_request_id()
    text = (
        f"product {product_id} request {request_id} device {DEVICE_ID} hardware b827eb8905e5 "
        f"uid 80:00:00:00:01:02:03:04 at 127.0.0.1:15432 status 400 password authentication failed"
    )
    assert redact(text) == text
    entry = _format(product_id=product_id, count=3, ratio=0.5, ok=True, nothing=None)
    assert (entry["product_id"], entry["count"], entry["ratio"], entry["ok"], entry["nothing"]) == (
        product_id,
        3,
        0.5,
        True,
        None,
    )


def test_a_message_that_cannot_be_formatted_is_written_without_its_arguments() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "two %s %s", (API_KEY,), None)
    entry = _format_record(record)
    assert "two" in str(entry["msg"])
    _assert_clean(orjson.dumps(entry).decode(), API_KEY)


def test_every_logger_reaches_the_redacting_handler() -> None:
    """aiohttp's, aiokafka's and asyncpg's loggers have no handler of their own and
    propagate to the root, where ``configure`` installs the one redacting handler."""
    for name in ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiokafka", "asyncpg"):
        logger = logging.getLogger(name)
        assert logger.propagate
        assert logger.handlers == []


def test_an_exception_summary_says_where_and_what_but_not_the_message() -> None:
    def parse(text: str) -> None:
        try:
            int(text)
        except ValueError as exc:
            raise RuntimeError(f"cannot read {text}") from exc

    try:
        parse(API_KEY)
    except RuntimeError as exc:
        summary = exception_summary(exc)
    assert summary.startswith("builtins.RuntimeError at tests/unit/test_logging.py:")
    assert "in parse" in summary
    assert "caused by builtins.ValueError" in summary
    _assert_clean(summary, API_KEY)


def test_parser_refusals_become_one_bounded_warning_line() -> None:
    """aiohttp logs each request its parser refuses with a traceback quoting the request;
    an attacker could fill the log with them: one short line each, at most 10 a minute."""
    from aiohttp.http_exceptions import LineTooLong

    from shared.logging import MalformedRequests

    guard = MalformedRequests(per_minute=10)

    def refused() -> logging.LogRecord:
        try:
            raise LineTooLong(b"Bearer frk_" + b"A" * 90, "8190")
        except LineTooLong:
            import sys

            return logging.LogRecord(
                "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", None, sys.exc_info()
            )

    kept = [record for record in (refused() for _ in range(25)) if guard.filter(record)]
    assert len(kept) == 10
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in kept)
    assert kept[0].getMessage() == "refused a malformed request (400): LineTooLong"
    other = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "something else", None, None)
    assert guard.filter(other) and other.levelno == logging.ERROR
