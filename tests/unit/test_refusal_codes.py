"""The refusal codes of the device API (shared/domain/refusals.py): one closed list, every
refusal sentence fleetreg gives mapped to its code (so that a stored refusal, polled later,
carries the code of its first answer), and the errors' bodies carrying it last."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
import yaml

from shared.domain import derived_keys, x509_attestation
from shared.domain.admission import (
    REASON_NO_REGISTRATION,
    REASON_PAUSED,
    REASON_REVOKED_CODE,
    REASON_UNKNOWN_CODE,
)
from shared.domain.dedup import (
    QUOTAS,
    REASON_BULK_ALREADY_CLAIMED,
    REASON_BULK_NOT_LISTED,
    REASON_DELETED,
    REASON_DISABLED,
    Quota,
    reason_clone_limit,
    reason_clone_rate,
    reason_max_devices,
)
from shared.domain.refusals import TEMPORARY, ReasonCode, reason_code_of, reason_code_of_status
from shared.errors import Forbidden, TooManyRequests, Unauthorized

# The interface's list (issue 26): never renamed, always there.
INTERFACE = {
    "unknown_code": False,
    "revoked_code": False,
    "no_registration": False,
    "paused": True,
    "disabled": True,
    "quota": True,
    "clone_limit": False,
    "not_listed": False,
    "already_registered": False,
    "proof_invalid": False,
    "proof_time": True,
    "certificate_refused": False,
    "hook_denied": False,
    "throttled": True,
    "unauthorized": False,
    "credentials_replaced": False,
    "device_deleted": False,
}


def test_the_interfaces_codes_are_all_there_with_their_kind() -> None:
    for code, temporary in INTERFACE.items():
        assert (ReasonCode(code) in TEMPORARY) is temporary, code


def test_every_code_is_a_lower_case_token() -> None:
    assert all(re.fullmatch(r"[a-z_]+", code.value) for code in ReasonCode)
    assert len({code.value for code in ReasonCode}) == len(ReasonCode)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (REASON_UNKNOWN_CODE, "unknown_code"),
        (REASON_REVOKED_CODE, "revoked_code"),
        (REASON_NO_REGISTRATION, "no_registration"),
        (REASON_PAUSED, "paused"),
        (REASON_DISABLED, "disabled"),
        (REASON_DELETED, "device_deleted"),
        (REASON_BULK_NOT_LISTED, "not_listed"),
        (REASON_BULK_ALREADY_CLAIMED, "already_registered"),
        (reason_max_devices(3), "quota"),
        (reason_clone_limit(2, 60), "clone_limit"),
        (reason_clone_rate(5, 60), "throttled"),
        (derived_keys.REASON_NO_PROOF, "proof_invalid"),
        (derived_keys.REASON_WRONG_PROOF, "proof_invalid"),
        (derived_keys.REASON_REPLAYED_PROOF, "proof_invalid"),
        (derived_keys.REASON_PROOF_TIME, "proof_time"),
        (x509_attestation.REASON_NO_CERTIFICATE, "certificate_refused"),
        (x509_attestation.REASON_CERTIFICATE_PREFIX + "the certificate has expired", "certificate_refused"),
        ("a sentence no release ever wrote", "other"),
    ],
)
def test_a_refusal_reason_has_its_code(reason: str, code: str) -> None:
    assert reason_code_of(reason) == code


def test_every_limit_has_its_code() -> None:
    for quota in get_args(Quota):
        assert reason_code_of(QUOTAS[quota].prefix + " anything") is not ReasonCode.OTHER, quota


def test_the_intakes_own_clone_rate_hold_is_throttled() -> None:
    from services.intake.handlers import HELD_CLONE_RATE

    assert reason_code_of(HELD_CLONE_RATE) is ReasonCode.THROTTLED


def test_a_status_without_a_code_of_its_own() -> None:
    assert reason_code_of_status(429) is ReasonCode.THROTTLED
    assert reason_code_of_status(401) is ReasonCode.UNAUTHORIZED
    assert reason_code_of_status(403) is None
    assert reason_code_of_status(404) is None


def test_an_errors_body_carries_its_code_last_and_none_without_one() -> None:
    wait = TooManyRequests("slow down", retry_after=42, rule="refusals_per_source", reason_code="throttled")
    assert list(wait.to_dict().items()) == [
        ("error", "too_many_requests"),
        ("message", "slow down"),
        ("rule", "refusals_per_source"),
        ("retry_after", "42"),
        ("reason_code", "throttled"),
    ]
    assert "reason_code" not in TooManyRequests("slow down", retry_after=1).to_dict()
    assert Forbidden("no", reason_code=ReasonCode.DISABLED).to_dict()["reason_code"] == "disabled"
    stale = Unauthorized("again", code="device_deleted", reason_code=ReasonCode.DEVICE_DELETED)
    assert stale.to_dict() == {"error": "device_deleted", "message": "again", "reason_code": "device_deleted"}


def test_the_openapi_document_and_the_docs_list_every_code() -> None:
    root = Path(__file__).resolve().parents[2]
    document = yaml.safe_load((root / "services" / "intake" / "openapi.yaml").read_text(encoding="utf-8"))
    schemas = document["components"]["schemas"]
    assert schemas["ReasonCode"]["enum"] == [code.value for code in ReasonCode]
    for shape in ("Answer", "Error"):
        assert schemas[shape]["properties"]["reason_code"] == {"$ref": "#/components/schemas/ReasonCode"}
    docs = (root / "docs" / "device-api.md").read_text(encoding="utf-8")
    table = docs.split("## Refusal codes (`reason_code`)", 1)[1].split("\n## ", 1)[0]
    listed = [c for c in re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE) if c != "reason_code"]
    assert listed == [code.value for code in ReasonCode]
    for code in ReasonCode:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{code.value}` |"))
        assert ("| temporary |" in row) is (code in TEMPORARY), row
