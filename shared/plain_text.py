"""The plain-text form of a JSON object (docs/device-api.md, "Plain-text answers"): one
field a line, so that a device's POSIX shell agent reads an answer with ``read`` or awk,
no JSON parser. And the content negotiation that chooses it (``Accept: text/plain``).

The form, for an object (the answer's top level):

* ``KEY VALUE`` a line; KEY is the field's dotted path (``manifest.files.0.name``), a
  list's items by their 0-based index, and every list also gives ``KEY.count N`` (before
  its items);
* a string is written as is when it is not empty, neither starts nor ends with a space
  and every character is printable ASCII (0x20-0x7E); otherwise the line is
  ``KEY:base64 VALUE``, VALUE the standard base64 (RFC 4648, padded, one line) of its
  UTF-8 bytes;
* numbers as JSON writes them, booleans ``true``/``false``; null fields are left out
  (a null item of a list too, though it keeps its index and counts);
* lines in the object's order, each ending with a newline; nothing else.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from aiohttp.helpers import parse_mimetype

PLAIN_TEXT = "text/plain"

# Printable ASCII, neither empty nor starting or ending with a space: written as is.
_AS_IS = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
# RFC 9110 section 12.4.2's qvalue: 0 to 1, at most three decimals.
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


def flatten(document: Mapping[str, Any]) -> str:
    """``document`` (a JSON object, as ``orjson.loads`` or ``json.loads`` gives it) in the
    plain-text form: one ``KEY VALUE`` line a field (the module's docstring). TypeError for
    a value JSON has no type for."""
    return "".join(f"{line}\n" for line in _lines("", document))


def _lines(prefix: str, value: Any) -> Iterator[str]:
    if value is None:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _lines(f"{prefix}.{key}" if prefix else str(key), item)
        return
    if isinstance(value, list | tuple):
        yield f"{prefix}.count {len(value)}"
        for index, item in enumerate(value):
            yield from _lines(f"{prefix}.{index}", item)
        return
    if isinstance(value, str):
        if _AS_IS.fullmatch(value):
            yield f"{prefix} {value}"
        else:
            yield f"{prefix}:base64 {base64.b64encode(value.encode()).decode('ascii')}"
        return
    if isinstance(value, bool | int | float):
        # As JSON writes them: true/false, 42, 0.5 (the standard library's encoder, which
        # writes any integer; an answer read back from JSON holds no NaN or infinity).
        yield f"{prefix} {json.dumps(value)}"
        return
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def prefers_plain_text(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for the plain-text form rather than JSON: it names
    ``text/plain`` itself (not only ``text/*`` or ``*/*``) with a q-value above 0 and no
    lower than the one ``application/json`` gets (by its most specific range:
    ``application/json``, ``application/*``, ``*/*``; none: 0). A range with a malformed
    q-value is ignored; no header, or any header that does not parse, means JSON (RFC 9110
    section 12.5.1)."""
    if not accept or "text/plain" not in accept.lower():
        return False  # the usual answer: decided without parsing
    text: float | None = None
    json_q: dict[int, float] = {}  # the q of application/json's matching ranges, by specificity
    for item in accept.split(","):
        media = parse_mimetype(item)
        quality = media.parameters.get("q", "1")
        if not _QVALUE.fullmatch(quality):
            continue
        q = float(quality)
        kind = (media.type, media.subtype, media.suffix)
        if kind == ("text", "plain", ""):
            text = q if text is None else max(text, q)
        elif kind == ("application", "json", ""):
            json_q[2] = max(json_q.get(2, 0.0), q)
        elif kind == ("application", "*", ""):
            json_q[1] = max(json_q.get(1, 0.0), q)
        elif kind == ("*", "*", ""):
            json_q[0] = max(json_q.get(0, 0.0), q)
    if text is None or text <= 0:
        return False
    return text >= (json_q[max(json_q)] if json_q else 0.0)
