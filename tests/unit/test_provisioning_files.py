"""Provisioning files (docs "Provisioning files") and the secrets in them (credentials)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import Any

import pytest

from shared.domain.credentials import (
    API_KEY_PREFIX,
    Keyring,
    api_key_digest,
    new_api_key,
)
from shared.domain.provisioning import FileSpec, render, service_uid, sha256_hex

UID_FORM = re.compile(r"[0-9A-F]{2}(:[0-9A-F]{2}){7}")
PROVISIONING_ID = "2513F28C-13AD-BEBE-7329-D70C2F5F34A6"
KEYRING = Keyring(b"unit-test-secret-key")
OTHER_KEYRING = Keyring(b"another-deployment-key")


SSH_FILE = FileSpec(
    provisioning_id=PROVISIONING_ID,
    position=1,
    service_name="ssh",
    type_code=28,
    port=22,
    service_uid=service_uid(2),
    hardware_id="b827eb8905e5",
    device_name="Example Device",
)


def ssh_file(**changes: Any) -> FileSpec:
    return replace(SSH_FILE, **changes)


def lines_of(content: bytes) -> list[str]:
    return content.decode("ascii").split("\n")


# ---------------------------------------------------------------- service UIDs


def test_service_uid_has_the_reference_form() -> None:
    assert service_uid(2) == "80:00:00:00:00:00:00:02"
    assert service_uid(0x01000002) == "80:00:00:00:01:00:00:02"
    assert service_uid(0) == "80:00:00:00:00:00:00:00"


@pytest.mark.parametrize("sequence_number", [1, 255, 256, 0xABCDEF, 2**40 + 7])
def test_service_uid_is_8_colon_separated_upper_case_hex_bytes(sequence_number: int) -> None:
    uid = service_uid(sequence_number)
    assert UID_FORM.fullmatch(uid)
    assert uid.startswith("80:")
    assert int(uid.replace(":", ""), 16) == (0x80 << 56) | sequence_number


def test_service_uids_of_distinct_sequence_numbers_are_distinct() -> None:
    assert len({service_uid(n) for n in range(1000)}) == 1000


# ---------------------------------------------------------------- rendering


def test_render_is_deterministic() -> None:
    assert render(ssh_file(), "pw-1") == render(ssh_file(), "pw-1")
    assert sha256_hex(render(ssh_file(), "pw-1")) == sha256_hex(render(ssh_file(), "pw-1"))


def test_render_depends_on_the_password_and_the_spec() -> None:
    assert render(ssh_file(), "pw-1") != render(ssh_file(), "pw-2")
    assert render(ssh_file(), "pw-1") != render(ssh_file(port=2222), "pw-1")


def test_a_rendered_file_is_ascii() -> None:
    assert render(ssh_file(), KEYRING.service_password(service_uid(2), 1)).isascii()


def test_a_rendered_file_starts_with_begin_and_the_provisioning_id() -> None:
    lines = lines_of(render(ssh_file(), "pw"))
    assert lines[0] == "#begin"
    assert lines[1] == PROVISIONING_ID
    assert len(lines[1]) == 36


def test_a_rendered_file_holds_the_keys_the_reference_client_reads() -> None:
    uid = service_uid(2)
    password = KEYRING.service_password(uid, 1)
    lines = lines_of(render(ssh_file(type_code=28, port=22, service_uid=uid), password))
    assert "application_type 28" in lines
    assert "proxy_dest_port 22" in lines
    assert "proxy_dest_ip 127.0.0.1" in lines
    assert f"UID {uid}" in lines
    assert f"password {password}" in lines


def test_a_rendered_file_is_plain_key_value_lines_ending_with_a_newline() -> None:
    content = render(ssh_file(), "pw")
    assert content.endswith(b"\n")
    assert not content.endswith(b"\n\n")
    assert b"\r" not in content
    body = lines_of(content)[2:-1]  # after "#begin" and the ID, before the final newline
    assert all(len(line.split(" ", 1)) == 2 and line.split(" ", 1)[0] for line in body if line != "#end")


def test_the_file_name_is_its_position_and_service_name() -> None:
    assert ssh_file(position=3, service_name="admin").file_name == "03-admin.conf"


def test_sha256_hex_is_the_lower_case_hex_sha256() -> None:
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    content = render(ssh_file(), "pw")
    assert sha256_hex(content) == hashlib.sha256(content).hexdigest()


# ---------------------------------------------------------------- device secrets


def test_a_device_secret_is_deterministic_per_device_and_generation() -> None:
    assert KEYRING.device_secret("dev-1", 1) == Keyring(b"unit-test-secret-key").device_secret("dev-1", 1)
    assert len(KEYRING.device_secret("dev-1", 1)) == 64


def test_a_device_secret_differs_across_generations_devices_and_keys() -> None:
    secret = KEYRING.device_secret("dev-1", 1)
    assert KEYRING.device_secret("dev-1", 2) != secret
    assert KEYRING.device_secret("dev-2", 1) != secret
    assert OTHER_KEYRING.device_secret("dev-1", 1) != secret


def test_the_device_secret_matches_only_as_the_digest_of_the_right_secret() -> None:
    secret = KEYRING.device_secret("dev-1", 1)
    assert KEYRING.device_secret_matches("dev-1", 1, KEYRING.digest(secret))
    assert not KEYRING.device_secret_matches("dev-1", 1, secret)  # undigested
    assert not KEYRING.device_secret_matches("dev-1", 2, KEYRING.digest(secret))  # after a reset
    assert not KEYRING.device_secret_matches("dev-2", 1, KEYRING.digest(secret))  # another device
    assert not KEYRING.device_secret_matches("dev-1", 1, KEYRING.digest(KEYRING.device_secret("dev-1", 2)))
    assert not KEYRING.device_secret_matches("dev-1", 1, OTHER_KEYRING.digest(secret))
    assert not KEYRING.device_secret_matches("dev-1", 1, "")


def test_the_digest_of_nothing_is_nothing() -> None:
    assert KEYRING.digest("") == ""


def test_a_digest_is_keyed_and_deterministic() -> None:
    assert KEYRING.digest("1c1b0dbe190e") == KEYRING.digest("1c1b0dbe190e")
    assert KEYRING.digest("1c1b0dbe190e") != KEYRING.digest("1c1b0dbe190f")
    assert KEYRING.digest("1c1b0dbe190e") != OTHER_KEYRING.digest("1c1b0dbe190e")
    assert KEYRING.digest("1c1b0dbe190e") != hashlib.sha256(b"1c1b0dbe190e").hexdigest()


def test_a_service_password_is_deterministic_per_uid_and_generation() -> None:
    uid = service_uid(2)
    password = KEYRING.service_password(uid, 1)
    assert KEYRING.service_password(uid, 1) == password
    assert len(password) == 32
    assert KEYRING.service_password(uid, 2) != password
    assert KEYRING.service_password(service_uid(3), 1) != password
    assert password not in KEYRING.device_secret(uid, 1)


# ---------------------------------------------------------------- fingerprints


@pytest.mark.parametrize("identifiers", [(), ("",), ("", "  "), (" \t",)])
def test_the_fingerprint_of_no_identifiers_is_empty(identifiers: tuple[str, ...]) -> None:
    assert KEYRING.fingerprint(*identifiers) == ""


def test_the_fingerprint_ignores_case_and_surrounding_whitespace() -> None:
    fingerprint = KEYRING.fingerprint("00000000ABCD1234", "B8:27:EB:89:05:E5")
    assert fingerprint == KEYRING.fingerprint(" 00000000abcd1234\n", "b8:27:eb:89:05:e5 ")
    assert len(fingerprint) == 32


def test_the_fingerprint_tells_devices_apart() -> None:
    assert KEYRING.fingerprint("cpu-1", "mac-1") != KEYRING.fingerprint("cpu-2", "mac-1")
    assert KEYRING.fingerprint("cpu-1", "mac-1") != KEYRING.fingerprint("cpu-1", "mac-2")
    assert KEYRING.fingerprint("cpu-1") != OTHER_KEYRING.fingerprint("cpu-1")


# ---------------------------------------------------------------- operator API keys


def test_a_new_api_key_has_the_prefix_and_is_random() -> None:
    keys = {new_api_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(key.startswith(API_KEY_PREFIX) for key in keys)
    assert API_KEY_PREFIX == "frk_"
    assert all(len(key) >= len("frk_") + 43 for key in keys)  # 32 random bytes, base64url


def test_an_api_key_digest_is_its_32_byte_sha256() -> None:
    key = new_api_key()
    digest = api_key_digest(key)
    assert len(digest) == 32
    assert digest == hashlib.sha256(key.encode()).digest()
    assert api_key_digest(new_api_key()) != digest
