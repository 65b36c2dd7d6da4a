"""Derived-key attestation's pure rules (shared/domain/derived_keys.py): Azure DPS's
formula, the proof's text and window, and the sealing of group keys."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from services.intake.handlers import MalformedProof, parse_proof, parse_registration
from shared.domain import derived_keys
from shared.domain.derived_keys import GroupKeyBox, KeySlot, Proof

# A fixed group key and hardware ID; the expected key is computed by the formula as Azure
# documents it (base64(HMAC-SHA256(base64decode(group key), registration ID))), here in full.
GROUP_KEY = base64.b64encode(bytes(range(32))).decode()
EXPECTED = base64.b64encode(hmac.digest(bytes(range(32)), b"b827eb8905e5", hashlib.sha256)).decode()


def test_the_device_key_is_dps_formula_over_the_trimmed_hardware_id_case_kept() -> None:
    assert derived_keys.derive_device_key(GROUP_KEY, "b827eb8905e5") == EXPECTED
    assert derived_keys.derive_device_key(GROUP_KEY, " b827eb8905e5\n") == EXPECTED
    assert derived_keys.derive_device_key(GROUP_KEY, "B827EB8905E5") != EXPECTED
    with pytest.raises(ValueError, match="base64"):
        derived_keys.derive_device_key("not base64!", "h")


def test_a_new_group_key_is_256_random_bits() -> None:
    first, second = derived_keys.new_group_key(), derived_keys.new_group_key()
    assert len(base64.b64decode(first)) == 32 and first != second


def test_a_proof_matches_either_group_key_and_nothing_else() -> None:
    other = derived_keys.new_group_key()
    key = derived_keys.derive_device_key(GROUP_KEY, "h1")
    mac = derived_keys.proof_mac(key, "h1", 1000, "00" * 16)
    assert derived_keys.proof_text("h1", 1000, "00" * 16) == b"fleetreg-proof-v1\nh1\n1000\n" + b"00" * 16
    made = Proof(1000, "00" * 16, mac)
    assert derived_keys.proof_matches((other, GROUP_KEY), "h1", made)
    assert not derived_keys.proof_matches((other,), "h1", made)
    assert not derived_keys.proof_matches((GROUP_KEY,), "h2", made)
    assert not derived_keys.proof_matches((GROUP_KEY,), "h1", Proof(1001, "00" * 16, mac))
    assert not derived_keys.proof_matches((GROUP_KEY,), "h1", Proof(1000, "00" * 16, mac[:40]))


def test_the_proof_window() -> None:
    now = 1_000_000.0
    assert derived_keys.proof_time_ok(int(now) + 300, now)
    assert derived_keys.proof_time_ok(int(now) + 660, now)
    assert not derived_keys.proof_time_ok(int(now) + 661, now)
    assert not derived_keys.proof_time_ok(int(now), now)
    assert not derived_keys.proof_time_ok(300, now)


def test_a_sealed_group_key_opens_only_for_its_registration_slot_and_secret_key() -> None:
    box = GroupKeyBox(b"secret-key")
    sealed = box.seal("reg-1", "primary", GROUP_KEY)
    assert GROUP_KEY.encode() not in sealed
    assert box.open("reg-1", "primary", sealed) == GROUP_KEY
    wrong: list[tuple[str, KeySlot, GroupKeyBox]] = [
        ("reg-2", "primary", box),
        ("reg-1", "secondary", box),
        ("reg-1", "primary", GroupKeyBox(b"another-secret-key")),
    ]
    for registration, slot, opener in wrong:
        with pytest.raises(ValueError, match="FLEETREG_SECRET_KEY"):
            opener.open(registration, slot, sealed)


@pytest.mark.parametrize(
    ("mac", "rule"),
    [
        (None, "required"),
        (7, "type=string"),
        ("", "min_length=1"),
        ("a" * 129, "max_length=128"),
        ("zz-zz", "charset=hex"),
    ],
)
def test_a_malformed_mac_is_named_with_the_rule_it_breaks(mac: object, rule: str) -> None:
    proof: dict[str, object] = {"expires": 1000, "nonce": "00" * 16}
    if mac is not None:
        proof["mac"] = mac
    with pytest.raises(MalformedProof) as refused:
        parse_proof(proof)
    assert (refused.value.status, refused.value.field, refused.value.rule) == (400, "proof.mac", rule)


def test_a_null_proof_is_no_proof_as_null_is_for_every_optional_field() -> None:
    """docs/device-identity.md, "The proof": ``"proof": null`` is absent (a derived-key
    registration refuses it 403 "send proof", counted); a non-object is 400."""
    body = b'{"bulk_identification_code": "2513F28C-13AD-BEBE-7329-D70C2F5F34A6", "hardware_id": "h1", "proof": null, "csr": null}'
    assert parse_registration(body, None).proof is None
    for value in ("[]", '"x"', "1", "true"):
        with pytest.raises(MalformedProof) as refused:
            parse_registration(
                f'{{"bulk_identification_code": "2513F28C-13AD-BEBE-7329-D70C2F5F34A6", "hardware_id": "h1", "proof": {value}}}'.encode(),
                None,
            )
        assert (refused.value.field, refused.value.rule) == ("proof", "type=object")
