"""The plain-text form of the device API's answers (shared/plain_text.py): every rule of
docs/device-api.md, "Plain-text answers", and the content negotiation that chooses it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.plain_text import flatten, prefers_plain_text


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_fields_one_a_line_in_the_objects_order_ending_with_a_newline() -> None:
    assert flatten({"status": "pending", "request_id": "r-1", "retry_after": 2}) == (
        "status pending\nrequest_id r-1\nretry_after 2\n"
    )


def test_an_empty_object_is_an_empty_body() -> None:
    assert flatten({}) == ""


def test_nested_objects_are_dotted_paths() -> None:
    assert flatten({"certificate": {"serial": "0a1b", "chain": {"depth": 2}}}) == (
        "certificate.serial 0a1b\ncertificate.chain.depth 2\n"
    )


def test_lists_give_their_count_first_then_their_items_by_index() -> None:
    document = {"manifest": {"files": [{"name": "a.conf", "port": 22}, {"name": "b.conf", "port": 80}]}}
    assert flatten(document) == (
        "manifest.files.count 2\n"
        "manifest.files.0.name a.conf\n"
        "manifest.files.0.port 22\n"
        "manifest.files.1.name b.conf\n"
        "manifest.files.1.port 80\n"
    )


def test_an_empty_list_is_its_count() -> None:
    assert flatten({"files": []}) == "files.count 0\n"


def test_lists_of_scalars_and_of_lists() -> None:
    assert flatten({"a": ["x", 1, [True]]}) == "a.count 3\na.0 x\na.1 1\na.2.count 1\na.2.0 true\n"


def test_nulls_are_left_out_a_null_item_keeping_its_index() -> None:
    assert flatten({"a": None, "b": {"c": None}, "d": [None, "y"], "e": 1}) == ("d.count 2\nd.1 y\ne 1\n")


def test_numbers_as_json_writes_them() -> None:
    assert flatten({"i": 42, "n": -7, "z": 0, "f": 0.5, "big": 10**18}) == (
        "i 42\nn -7\nz 0\nf 0.5\nbig 1000000000000000000\n"
    )


def test_booleans_are_true_and_false() -> None:
    assert flatten({"clone": False, "ok": True}) == "clone false\nok true\n"


@pytest.mark.parametrize(
    "value",
    ["auto registration paused by the operator", "x", "~!#$%&'()*+,-./:;<=>?@[\\]^_`{|}", "a  b"],
)
def test_printable_ascii_strings_are_written_as_they_are(value: str) -> None:
    assert flatten({"reason": value}) == f"reason {value}\n"


@pytest.mark.parametrize(
    "value",
    [
        "",  # empty: "KEY " would be ambiguous with a trailing-space-trimming reader
        " leading",
        "trailing ",
        " ",
        "two\nlines",  # a file's content, a PEM
        "tab\there",
        "caf\u00e9",  # not ASCII: its UTF-8 bytes
        "\u2603",
        "del\x7f",
        "nul\x00",
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    ],
)
def test_other_strings_are_base64_of_their_utf8_bytes(value: str) -> None:
    line = flatten({"content": value})
    assert line == f"content:base64 {b64(value)}\n"
    assert base64.b64decode(line.rstrip("\n").split(" ", 1)[1], validate=True).decode() == value


def test_base64_is_one_padded_line_however_long() -> None:
    value = "x\n" * 5000
    key, encoded = flatten({"content": value}).rstrip("\n").split(" ")
    assert key == "content:base64"
    assert "\n" not in encoded and len(encoded) % 4 == 0


def test_a_value_json_has_no_type_for_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        flatten({"when": object()})


def test_a_ready_answer_as_the_interface_shows_it() -> None:
    content = "#begin\nport 22\n"
    document = {
        "status": "ready",
        "request_id": "7c1e",
        "device_id": "3f0c",
        "clone": False,
        "manifest": {
            "generation": 1,
            "files": [{"name": "02-ssh.conf", "port": 22, "content": content}],
        },
    }
    assert flatten(document) == (
        "status ready\nrequest_id 7c1e\ndevice_id 3f0c\nclone false\nmanifest.generation 1\n"
        "manifest.files.count 1\nmanifest.files.0.name 02-ssh.conf\nmanifest.files.0.port 22\n"
        f"manifest.files.0.content:base64 {b64(content)}\n"
    )


def _unflatten(text: str) -> dict[str, Any]:
    """What a device's reader does: each line's KEY and VALUE, base64 decoded."""
    fields: dict[str, Any] = {}
    assert text == "" or text.endswith("\n")
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key.endswith(":base64"):
            fields[key.removesuffix(":base64")] = base64.b64decode(value, validate=True).decode()
        else:
            fields[key] = value
    return fields


def _leaves(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _leaves(f"{prefix}.{key}" if prefix else key, item, out)
    elif isinstance(value, list):
        out[f"{prefix}.count"] = str(len(value))
        for index, item in enumerate(value):
            _leaves(f"{prefix}.{index}", item, out)
    elif value is not None:
        out[prefix] = value if isinstance(value, str) else json.dumps(value)


_KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=12,
)


# Not timed: a machine shared with other work (2 cores) made the generation "too slow".
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _JSON, max_size=6))
def test_every_leaf_reads_back_from_its_one_line(document: dict[str, Any]) -> None:
    text = flatten(document)
    expected: dict[str, Any] = {}
    _leaves("", document, expected)
    assert _unflatten(text) == expected
    assert len(text.splitlines()) == len(expected)  # one line a leaf, no other line
    assert all(" " in line for line in text.splitlines())


@pytest.mark.parametrize(
    "accept",
    [
        "text/plain",
        "TEXT/PLAIN",
        "text/plain; charset=utf-8",
        "text/plain;q=0.1",
        "application/json;q=0.5, text/plain",
        "text/plain, application/json",  # a tie: the device named text/plain itself
        "*/*;q=0.8, text/plain",
        "application/*;q=0.2, text/plain;q=0.3",
        "text/plain;q=1.000",
        "garbage, text/plain",
    ],
)
def test_plain_text_when_accept_names_it_above_json(accept: str) -> None:
    assert prefers_plain_text(accept)


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "",
        "*/*",
        "application/json",
        "text/*",
        "text/html",
        "text/plain;q=0",
        "text/plain;q=0.000",
        "text/plain;q=0.5, application/json",
        "text/plain;q=0.5, */*",
        "text/plain;q=0.5, application/*;q=0.9",
        "text/plain;q=abc",
        "text/plain;q=2",
        "text/plain;q=-1",
        "text/plainx",
        "text/plain+json",
        ",,,;;;===",
        "text/plain;q=0, " * 500,
        "\x00text/plain\x00",
    ],
)
def test_json_otherwise(accept: str | None) -> None:
    assert not prefers_plain_text(accept)


def test_a_huge_accept_header_is_decided() -> None:
    assert prefers_plain_text("x/y;q=0.1, " * 700 + "text/plain")
    assert not prefers_plain_text("x/y;q=0.1, " * 700 + "text/plain;q=0")


def test_the_intake_converts_json_objects_only_keeping_status_and_headers() -> None:
    from aiohttp import web

    from services.intake.views import as_plain_text, is_native
    from shared.http import json_response

    answer = as_plain_text(
        json_response({"status": "pending", "retry_after": 2}, status=202, headers={"Retry-After": "2"})
    )
    assert isinstance(answer, web.Response)
    assert (answer.status, answer.headers["Retry-After"], answer.body) == (
        202,
        "2",
        b"status pending\nretry_after 2\n",
    )
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    listed = json_response([1, 2])
    assert as_plain_text(listed) is listed and listed.content_type == "application/json"
    a_file = web.Response(body=b"#begin\n", content_type="text/plain", charset="ascii")
    assert as_plain_text(a_file) is a_file and a_file.body == b"#begin\n"
    assert is_native("/v1/devices/x/manifest", "/apv/v27/") and is_native(
        "/.well-known/est/a/cacerts", "/apv/v27/"
    )
    assert not is_native("/apv/v27/device/register", "/apv/v27/") and not is_native(
        "/openapi.yaml", "/apv/v27/"
    )
    assert not is_native("/v1/compat/x", "/v1/compat/")  # a reference prefix under /v1 stays its own


@pytest.mark.parametrize("accept", ["text/plain", "application/json", None])
async def test_the_intakes_device_answers_vary_on_accept_and_are_never_stored(accept: str | None) -> None:
    """Either form of a native answer says a cache must key it on Accept and keep none of it
    (a ready answer, a poll's too, carries the device secret); a file and the reference
    protocol's answers are left alone."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from services.intake.views import plain_text_answers
    from shared.http import json_response

    middleware: Any = plain_text_answers("/apv/v27/")
    headers = {"Accept": accept} if accept else {}

    async def ready(request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ready", "device_secret": "s"}, headers={"Vary": "Origin"})

    async def a_file(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"#begin\n", content_type="text/plain", charset="ascii")

    answer = await middleware(make_mocked_request("GET", "/v1/registrations/r", headers=headers), ready)
    assert (answer.headers["Vary"], answer.headers["Cache-Control"]) == ("Origin, Accept", "no-store")
    for path, handler in (("/v1/devices/d/files/f", a_file), ("/apv/v27/device/register", ready)):
        left = await middleware(make_mocked_request("GET", path, headers=headers), handler)
        assert "Cache-Control" not in left.headers and "Accept" not in left.headers.get("Vary", ""), path
