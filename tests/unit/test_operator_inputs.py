from __future__ import annotations

import pytest

from services.operator.handlers.auto_inputs import max_devices_of as _max_devices
from shared.errors import InvalidInput


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
