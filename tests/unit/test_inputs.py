"""Misspelt or unknown fields are refused, never ignored (found by an outsider attack:
``{"readonly": true}`` made a full API key)."""

from __future__ import annotations

from typing import Any

import pytest

from services.operator import handlers
from shared.domain.inputs import refuse_unknown_fields
from shared.domain.products import validate_product
from shared.errors import InvalidInput


def test_the_first_unknown_field_is_named_with_its_place() -> None:
    refuse_unknown_fields({"a": 1}, ("a", "b"), what="a thing")
    with pytest.raises(InvalidInput) as caught:
        refuse_unknown_fields({"a": 1, "zz": 2, "c": 3}, ("a", "b"), what="a thing", prefix="x[0].")
    assert (caught.value.field, caught.value.rule) == ("x[0].c", "known_fields")
    assert "a thing takes a, b" in caught.value.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "p", "colour": "red"}, "colour"),
        ({"name": "p", "services": [{"type": "ssh", "port": 22, "prot": 22}]}, "services[0].prot"),
    ],
)
def test_a_product_with_an_unknown_field_is_refused(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_product(body)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"label": "x", "readonly": True}, "readonly"),
        ({"label": "x", "read-only": True}, "read-only"),
        ({"label": "x", "scope": "read-only"}, "scope"),
        ({"label": " "}, "label"),
        ({"label": "a\tb"}, "label"),
        ({"label": "é"}, "label"),
        ({"label": "x" * 101}, "label"),
        ({"label": 123}, "label"),
        ({"label": None}, "label"),
        ({"label": "x", "read_only": "yes"}, "read_only"),
    ],
)
def test_an_api_key_body_that_is_not_exactly_right_is_refused(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        handlers.api_key_request(body)
    assert caught.value.field == field


def test_a_right_api_key_body_is_its_label_and_scope() -> None:
    assert handlers.api_key_request({}) == ("", False)
    assert handlers.api_key_request({"label": "grafana", "read_only": True}) == ("grafana", True)
