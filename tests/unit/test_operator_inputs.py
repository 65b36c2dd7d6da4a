from __future__ import annotations

import uuid

import pytest

from services.operator.handlers.auto_inputs import max_devices_of as _max_devices
from shared.errors import InvalidInput
from shared.hook_settings import hook_change
from shared.settings import Secret


@pytest.mark.parametrize("value", [0, -3, 2**31, 99999999999999999999.0])
def test_max_devices_out_of_range_says_range(value: object) -> None:
    """A whole number too large for the JSON parser's integers arrives as a float: it is
    still reported as out of range, not as "not a whole number"."""
    with pytest.raises(InvalidInput) as raised:
        _max_devices(value)
    assert raised.value.rule == "range=1..2147483647"


@pytest.mark.parametrize("value", ["5", 5.5, True, [5]])
def test_max_devices_of_another_type_says_type(value: object) -> None:
    with pytest.raises(InvalidInput) as raised:
        _max_devices(value)
    assert raised.value.rule == "type=integer"


def test_max_devices_null_is_no_quota() -> None:
    assert _max_devices(None) is None
    assert _max_devices(7) == 7


@pytest.mark.parametrize(
    "body",
    [
        {"hook_url": "https://hooks.example.com/approve"},
        {"hook_timeout_ms": 500},
        {"hook_failure": "open"},
    ],
)
async def test_a_hook_is_refused_while_no_registration_consults_one(body: dict[str, object]) -> None:
    """Issue 27 lands in slices: until dedup consults the hook, an operator who set one would
    believe each registration approved by it. Refused (400, rule ``preview``, naming the
    field) unless FLEETREG_REGISTRATION_HOOKS_PREVIEW is on; removing one is always allowed."""
    with pytest.raises(InvalidInput) as raised:
        await hook_change(
            body, str(uuid.uuid4()), secret_key=Secret("k" * 40), allow_private=False, preview=False
        )
    assert (raised.value.field, raised.value.rule) == (next(iter(body)), "preview")
    assert "FLEETREG_REGISTRATION_HOOKS_PREVIEW" in raised.value.message
    removed = await hook_change(
        {"hook_url": None}, str(uuid.uuid4()), secret_key=Secret("k" * 40), allow_private=False, preview=False
    )
    assert removed.url_changes and removed.hook is None
