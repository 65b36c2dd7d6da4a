"""Misspelt or unknown fields are refused, never ignored (found by an outsider attack:
``{"readonly": true}`` made a full API key)."""

from __future__ import annotations

from typing import Any

import pytest

from services.operator.handlers import access as handlers
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
    assert handlers.api_key_request({}) == ("", False, None)
    assert handlers.api_key_request({"label": "grafana", "read_only": True}) == ("grafana", True, None)
    assert handlers.api_key_request({"label": "ci", "role": "operator"}) == ("ci", False, "operator")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"product_id": "A", "product_id": "B"}', "product_id"),  # the move the attack made
        (b'{"name": "p", "services": [{"name": "s", "name": "t"}]}', "name"),  # at any depth
        (b'{"fingerprint": {"cpu_id": "a", "cpu_id" :"b"}}', "cpu_id"),
        (b'{"a": 1, "\\u0061": 2}', "a"),  # one name however it is spelt
    ],
)
def test_a_name_given_twice_in_one_object_is_refused(body: bytes, field: str) -> None:
    """orjson keeps the last of repeated names, so {"product_id": C, "product_id": A}
    moved the device to A: every JSON API decodes its body here and refuses it instead."""
    from shared.http import decode_json_object

    with pytest.raises(InvalidInput) as caught:
        decode_json_object(body)
    assert (caught.value.field, caught.value.rule) == (field, "unique_fields")
    assert "given twice" in caught.value.message


def test_objects_with_distinct_names_and_deep_bodies_are_answered_not_crashed() -> None:
    from shared.http import decode_json_object

    assert decode_json_object(b'{"a": [{"k": 1}, {"k": 2}], "b": {"k": 3}}') == {
        "a": [{"k": 1}, {"k": 2}],
        "b": {"k": 3},
    }
    with pytest.raises(InvalidInput) as caught:  # deeper than the interpreter reads: a 400
        decode_json_object(b'{"a": ' + b"[" * 1020 + b"]" * 1020 + b"}")
    assert caught.value.rule == "json"


def test_echoed_values_are_shortened() -> None:
    """A 404 echoed a 5,000-character path ID whole; messages quote 64 characters at most."""
    from aiohttp.test_utils import make_mocked_request

    from shared.errors import NotFound, shortened
    from shared.http import decode_json_object, path_id

    assert shortened("x" * 64) == "x" * 64 and shortened("x" * 65) == "x" * 64 + "…"
    long_id = "7" * 5000
    request = make_mocked_request("POST", f"/v1/devices/{long_id}/move", match_info={"device_id": long_id})
    with pytest.raises(NotFound) as caught:
        path_id(request, "device_id")
    assert len(caught.value.message) < 120 and "7" * 64 + "…" in caught.value.message
    with pytest.raises(InvalidInput) as repeated:
        decode_json_object(b'{"' + b"n" * 5000 + b'": 1, "' + b"n" * 5000 + b'": 2}')
    assert len(repeated.value.message) < 120 and repeated.value.field == "n" * 64 + "…"
    with pytest.raises(InvalidInput) as unknown:
        refuse_unknown_fields({"z" * 5000: 1}, ("a",), what="a thing")
    assert len(unknown.value.message) < 120
