"""How the console's device list words an estimated total (the API's total when
total_exact is false)."""

from __future__ import annotations

import pytest

from services.operator.console.pages.devices import _about


@pytest.mark.parametrize(
    ("total", "shown"),
    [
        (0, "about 0"),
        (9_876, "about 9,876"),
        (12_345, "about 12,000"),
        (987_654, "about 988,000"),
        (1_234_567, "about 1.2 million"),
        (25_432_100, "about 25 million"),
    ],
)
def test_an_estimate_is_rounded_as_an_operator_reads_it(total: int, shown: str) -> None:
    assert _about(total) == shown
