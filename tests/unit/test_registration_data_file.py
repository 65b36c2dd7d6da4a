"""The registration hook's enrichment data file (shared/domain/provisioning.py,
docs/device-api.md "The enrichment data file"): its bytes for any printable data, the same
bytes for the same data, and a frame every device agent accepts. The end-to-end tests are
tests/e2e/test_registration_data_file.py."""

from __future__ import annotations

import json
import uuid

import pytest

from shared.domain.provisioning import (
    REGISTRATION_DATA_FILE,
    REGISTRATION_DATA_NAMESPACE,
    REGISTRATION_DATA_SERVICE,
    canonical_data,
    registration_data_file,
    registration_data_id,
    sha256_hex,
)

DEVICE_ID = "3f0c7a4e-2b1d-4c55-9e61-0a8d2f7b9c10"


def data_line(content: bytes) -> str:
    """The file's ``data`` line's value, checking the frame the agent checks (#begin, the
    provisioning ID, #end) and that every byte is printable ASCII but the newlines."""
    text = content.decode("ascii")
    lines = text.split("\n")
    assert lines[0] == "#begin" and lines[1] == registration_data_id(DEVICE_ID)
    assert lines[2].startswith("data ") and lines[3:] == ["#end", ""]
    assert all(0x20 <= b < 0x7F for line in lines for b in line.encode("ascii"))
    return lines[2].removeprefix("data ")


def test_the_file_is_the_framed_canonical_json_of_the_data() -> None:
    file = registration_data_file(DEVICE_ID, {"site": "Berlin", "floor": "3"})
    assert file.content == (
        f'#begin\n{registration_data_id(DEVICE_ID)}\ndata {{"floor":"3","site":"Berlin"}}\n#end\n'
    ).encode("ascii")
    assert (file.name, file.service) == (REGISTRATION_DATA_FILE, REGISTRATION_DATA_SERVICE)
    assert (file.size, file.sha256) == (len(file.content), sha256_hex(file.content))


@pytest.mark.parametrize(
    "data",
    [
        {"key with spaces": "value with spaces", "a=b": "c=d", "": ""},
        {"quote": 'say "hi"', "'single'": "it's", "back\\slash": "C:\\dir\\"},
        {"newline": "one\ntwo\r\nthree", "tab": "a\tb", "nul-less controls": "\x01\x1b[31m\x7f"},
        {"unicode": "Grüße, 東京, ‮rtl, 😀", "clé": "wert\u2028next"},
        {"looks like the frame": "\n#end\n#begin\nX", "json": '{"allow": false}'},
    ],
    ids=["spaces-and-equals", "quotes", "controls", "unicode", "frame-lookalikes"],
)
def test_every_printable_value_reads_back_exactly_from_one_ascii_line(data: dict[str, str]) -> None:
    content = registration_data_file(DEVICE_ID, data).content
    assert json.loads(data_line(content)) == data


def test_newlines_quotes_and_non_ascii_are_escaped_never_raw() -> None:
    text = canonical_data({"v": 'a"b\nc\\d é 😀 \x7f'})
    assert text == '{"v":"a\\"b\\nc\\\\d \\u00e9 \\ud83d\\ude00 \\u007f"}'


def test_the_same_data_gives_the_same_bytes_whatever_its_order() -> None:
    forward = {f"k{i}": f"v{i}" for i in range(64)}
    backward = dict(reversed(list(forward.items())))
    first = registration_data_file(DEVICE_ID, forward)
    assert registration_data_file(DEVICE_ID, backward) == first
    assert registration_data_file(DEVICE_ID.upper(), forward) == first  # one device, any spelling
    assert registration_data_file(DEVICE_ID, {**forward, "k0": "changed"}).sha256 != first.sha256


def test_keys_are_sorted_by_code_point() -> None:
    text = canonical_data({"b": "", "a": "", "B": "", "\u00e9": "", "_": ""})
    assert list(json.loads(text)) == ["B", "_", "a", "b", "\u00e9"]


def test_an_empty_object_is_a_file_too() -> None:
    file = registration_data_file(DEVICE_ID, {})
    assert data_line(file.content) == "{}"


def test_the_provisioning_id_is_the_devices_own_and_stable() -> None:
    pid = registration_data_id(DEVICE_ID)
    assert pid == str(uuid.uuid5(REGISTRATION_DATA_NAMESPACE, DEVICE_ID)).upper()
    assert len(pid) == 36 and pid == pid.upper() and uuid.UUID(pid).version == 5
    assert registration_data_id(str(uuid.uuid4())) != pid
    assert registration_data_file(DEVICE_ID, {"a": "1"}).provisioning_id == pid
