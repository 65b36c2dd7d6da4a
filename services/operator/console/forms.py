"""What every console page reads from a submitted form: the form's type, a field as text,
and the length past which a field is refused before it is parsed."""

from __future__ import annotations

from typing import Any

from multidict import MultiDictProxy

# A form field longer than this is not a port, a name or a type: refused before parsing.
FIELD_MAX = 200

Form = MultiDictProxy[Any]


def text(form: Form, name: str) -> str:
    """A form field as text ("" when missing; a file or a doubled field is the first value)."""
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""
