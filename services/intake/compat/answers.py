"""Answers the reference device client can read (apv/v27).

The client does not parse JSON: it strips ``{``, ``}`` and ``"``, splits on ``,`` and
picks the part whose key matches as a whole word. So an answer is one flat, compact
object (no space after ``:`` or ``,``), its values hold none of ``, { } " [ ]``, and
no value contains a key word as a whole word. ``projects`` is a comma-separated list
and therefore always the last field: the parts after it are its items.
"""

from __future__ import annotations

import re

# Every key the client looks for in any answer.
KEY_WORDS = (
    "status",
    "uid",
    "secret",
    "projects",
    "reason",
    "HardwareId",
    "timestamp",
    "enabled",
    "content_type",
    "content_port",
    "content_ip",
    "content_test",
)
_FORBIDDEN = re.compile(r'[,{}"\[\]\\]')
_KEY_WORD = re.compile(r"\b(" + "|".join(re.escape(k) for k in KEY_WORDS) + r")\b", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
VALUE_MAX = 200


def safe_value(text: str) -> str:
    """A value the client reads back unchanged: forbidden characters and key words replaced,
    printable ASCII only, bounded length."""
    ascii_text = text.encode("ascii", "replace").decode("ascii")
    cleaned = _FORBIDDEN.sub(" ", ascii_text)
    cleaned = "".join(c if c.isprintable() else " " for c in cleaned)
    cleaned = _KEY_WORD.sub(lambda m: m.group(0)[0] + "-" + m.group(0)[1:], cleaned)
    return _SPACES.sub(" ", cleaned).strip()[:VALUE_MAX]


def answer(status: str, *fields: tuple[str, str], projects: list[str] | None = None) -> str:
    """One compact answer: ``{"status":"...","key":"value",...,"projects":"a,b"}``."""
    parts = [("status", safe_value(status))] + [(key, safe_value(value)) for key, value in fields]
    body = ",".join(f'"{key}":"{value}"' for key, value in parts)
    if projects is not None:
        items = ",".join(safe_value(p) for p in projects)
        body += f',"projects":"{items}"'
    return "{" + body + "}"


def refused(reason: str) -> str:
    return answer("false", ("reason", reason))
