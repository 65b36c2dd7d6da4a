"""Structured JSON logging, one object per line, with secrets redacted by construction.

Every record of every logger of the process (aiohttp's, aiokafka's, asyncpg's and
ours) is written by the one handler ``configure`` installs on the root logger, and
its formatter redacts every text it writes: the message with its arguments, the
exception and its traceback, the stack, and each ``extra`` value. Two rules apply:

* a field passed through ``extra=`` whose *name* says it holds a secret (codes,
  keys, secrets, passwords, tokens) is replaced by ``"[redacted]"`` whatever its value;
* every text is rewritten by :func:`redact`, which removes secrets by their *shape*
  or their *context* (:data:`SECRET_PATTERNS`), so that a secret echoed by a library
  (aiohttp logs the first 100 bytes of an over-long header when it refuses it) never
  reaches the log either.

Two filters bound how much a fault can write: :class:`MalformedRequests` (requests the
HTTP parser refuses) and :class:`RepeatedLines` (the same error of the consume loops,
producers and Kafka client, one line per fault every 10 s with a ``suppressed`` count).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiohttp.http_exceptions import HttpProcessingError
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

from shared.metrics import MALFORMED_REQUESTS

_SECRET_WORDS = ("secret", "password", "token", "registration_key", "code", "api_key", "dsn")
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
REDACTED = "[redacted]"

# Names that, followed by ':' or '=', introduce a secret value in text (JSON bodies,
# form fields, key=value pairs): registration keys, device secrets, passwords, tokens.
_SECRET_NAME = r"[A-Za-z_-]*(?:secret|passw(?:or)?d|registration[ _-]?key|api[ _-]?key|token)[A-Za-z_-]*"  # noqa: S105 (a pattern of names, not a password)

# The one place that says what a secret looks like in a text. Each pattern's
# replacement keeps what says *where* the secret was and drops the secret itself.
SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Python bytes literals are raw wire data: aiohttp quotes the start of a refused
    # header, URL or request line this way (b'Bearer frk_...', bytearray(b'/v1/...')),
    # cut at 100 bytes, so a secret may stand there cut short, past any shape rule.
    (re.compile(r"""\bb(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""), f"b'{REDACTED}'"),
    # The value of an Authorization header, whatever its scheme, to the end of the
    # quoted string or line.
    (re.compile(r"""(?i)(\bauthorization['"]?\s*[:=]\s*['"]?)[^'"\r\n]*"""), rf"\1{REDACTED}"),
    # A bearer token anywhere else (an error message quoting a header value).
    (re.compile(r"""(?i)(\bbearer\s+)[^\s'"]+"""), rf"\1{REDACTED}"),
    # The password of a DSN (postgresql://user:password@host/db).
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]*:)[^\s@'\"]*@"), rf"\1{REDACTED}@"),
    # name=value and "name": "value" pairs whose name says secret.
    (
        re.compile(
            rf"""(?i)(\b{_SECRET_NAME}['"]?\s*[:=]\s*)("(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|[^\s,;&}}\])]+)"""
        ),
        rf'\1"{REDACTED}"',
    ),
    # The password line of a provisioning file ("password <value>", at a line start).
    (re.compile(r"(?im)((?:^|\\n)[ \t]*password[ \t]+)[^\s'\"\\]+"), rf"\1{REDACTED}"),
    # Operator API keys (shared.domain.credentials.new_api_key): "frk_" and 43 URL-safe characters.
    (re.compile(r"\bfrk_[A-Za-z0-9_-]*"), f"frk_{REDACTED}"),
    # Webhook signing secrets (shared.domain.webhooks.new_secret): "whsec_" and base64.
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]*"), f"whsec_{REDACTED}"),
    # Bulk Identification Codes and product codes: upper-case UUIDs. Product, device
    # and request IDs are lower-case UUIDs and stay readable.
    (re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}"), REDACTED),
    # Device secrets (64 hex digits), service passwords (32) and keyed digests: any run
    # of 32 or more hex digits. Hardware IDs (a MAC is 12) and UUIDs stay readable.
    (re.compile(r"[0-9A-Fa-f]{32,}"), REDACTED),
)


def redact(text: str) -> str:
    """``text`` with every secret :data:`SECRET_PATTERNS` recognises replaced."""
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def is_secret_field(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _redact_value(value: Any) -> Any:
    """An ``extra`` value with every text inside it redacted; numbers stay numbers."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): REDACTED if is_secret_field(str(k)) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": redact(_message(record)),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            entry[key] = REDACTED if is_secret_field(key) else _redact_value(value)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(entry, default=str).decode()


def _message(record: logging.LogRecord) -> str:
    """The record's message; a message that cannot be formatted is logged as its template
    alone, since logging's own fallback prints the raw arguments to stderr."""
    try:
        return record.getMessage()
    except Exception:
        return f"{record.msg} (arguments not formatted)"


def exception_summary(exc: BaseException) -> str:
    """Where an exception was raised, and by what, without its message or values:
    ``"ValueError at shared/x.py:12 in parse <- services/y.py:40 in handle"``, then
    the same for its cause. For errors whose message may quote a request (a header,
    a body, a parameter), so that the log says where to look and echoes nothing."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = traceback.extract_tb(current.__traceback__)[::-1][:_SUMMARY_FRAMES]
        where = " <- ".join(f"{_short_path(f.filename)}:{f.lineno} in {f.name}" for f in frames)
        parts.append(
            f"{type(current).__module__}.{type(current).__qualname__}" + (f" at {where}" if where else "")
        )
        current = current.__cause__ or current.__context__
    return "; caused by ".join(parts)


_SUMMARY_FRAMES = 8
_PROJECT_ROOT = f"{Path(__file__).resolve().parents[1]}{os.sep}"


def _short_path(filename: str) -> str:
    """A source path from the package root (``shared/http.py``, ``aiohttp/web_protocol.py``)."""
    if "/site-packages/" in filename:
        return filename.rsplit("/site-packages/", 1)[1]
    return filename.removeprefix(_PROJECT_ROOT)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("fleetreg").critical("uncaught exception", exc_info=(kind, exc, tb))


class MalformedRequests(logging.Filter):
    """aiohttp's server logs every request its parser refuses (an oversized header, a raw
    control character in the URL) at error level with a full traceback, before any
    middleware, so no throttle sees it: anyone could fill the log with tracebacks.
    Such a record becomes one warning line without the traceback, and at most
    ``per_minute`` of them are written (a moving window of the ``limits`` library);
    every one is counted in ``fleetreg_http_malformed_requests_total``."""

    def __init__(self, per_minute: int = 10) -> None:
        super().__init__()
        self._item = RateLimitItemPerMinute(per_minute)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        MALFORMED_REQUESTS.inc()
        if not self._limiter.hit(self._item, "malformed"):
            return False
        record.msg = "refused a malformed request (400): %s"
        record.args = (type(exc).__name__,)
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# The loggers of the consume loops and producers, and of the Kafka client under them: a
# broker restart made each consumer write about 16,800 error lines, one per retry.
REPEATED_LINE_LOGGERS = ("aiokafka", "kafka", "shared.kafka", "shared.pipeline", "services.intake.outcomes")
REPEATED_LINE_EVERY_S = 10


class RepeatedLines(logging.Filter):
    """At most one warning or error line per distinct fault every ``every_s`` seconds
    from the loggers in ``loggers`` (their children included); the first line of a fault
    after a quiet window carries ``suppressed``, the number of its lines left out before.

    A fault is the logger, level and message template (not its arguments: aiokafka puts
    node IDs and addresses there) and the ``error_type`` and ``error`` fields, which these
    loggers fill with an exception's type and place only. Fixed windows of the ``limits``
    library count the lines; every line still counts in the metrics its caller updates."""

    _MAX_KEYS = 1000  # suppressed counts kept; past it they are dropped (errors naming offsets)

    def __init__(
        self, every_s: int = REPEATED_LINE_EVERY_S, loggers: tuple[str, ...] = REPEATED_LINE_LOGGERS
    ) -> None:
        super().__init__()
        self._item = RateLimitItemPerSecond(1, every_s)
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._loggers = loggers
        self._suppressed: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not self._watched(record.name):
            return True
        fault = "\x1f".join(
            (
                record.name,
                record.levelname,
                str(record.msg),
                str(getattr(record, "error_type", "")),
                str(getattr(record, "error", "")),
            )
        )
        if not self._limiter.hit(self._item, fault):
            if fault in self._suppressed or len(self._suppressed) < self._MAX_KEYS:
                self._suppressed[fault] = self._suppressed.get(fault, 0) + 1
            return False
        suppressed = self._suppressed.pop(fault, 0)
        if suppressed:
            record.suppressed = suppressed
        return True

    def _watched(self, name: str) -> bool:
        return any(name == prefix or name.startswith(prefix + ".") for prefix in self._loggers)


def configure(service: str, level: str = "INFO") -> None:
    """Send every log record of the process to stderr as JSON lines, secrets redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(RepeatedLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs connection chatter at INFO; keep it for warnings and worse.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, MalformedRequests)]
    server.addFilter(MalformedRequests())
    # Whatever would otherwise be printed to stderr around the handler goes through it:
    # warnings, and a crash's traceback (which may quote a secret in its message). A
    # record the handler cannot write is dropped, not dumped raw by logging's fallback.
    logging.captureWarnings(True)
    logging.raiseExceptions = False
    sys.excepthook = _log_uncaught


__all__ = [
    "REDACTED",
    "SECRET_PATTERNS",
    "JsonFormatter",
    "MalformedRequests",
    "RepeatedLines",
    "configure",
    "exception_summary",
    "is_secret_field",
    "redact",
]
