"""The deduplication rules of docs "Auto registration" and "Bulk registration", one per test.

Every claim is decided and then recorded with ``Family.apply``, as the dedup service does
for the claims of one batch; device IDs come from a counter so verdicts are reproducible.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

import pytest

from shared.db import devices
from shared.domain.credentials import Keyring
from shared.domain.dedup import (
    NO_LIMITS,
    QUOTAS,
    REASON_BULK_ALREADY_CLAIMED,
    REASON_BULK_NOT_LISTED,
    REASON_DISABLED,
    REFERENCE_PROTOCOL,
    Claim,
    Context,
    Creation,
    Family,
    KnownDevice,
    Lifecycle,
    Limits,
    PerWindow,
    Quota,
    Reached,
    Verdict,
    decide,
    is_clone_rate_refusal,
    is_quota_refusal,
    limit_reached,
    quota_of_reason,
    reason_clone_limit,
    reason_clone_rate,
    reason_max_devices,
)
from shared.domain.identifiers import ROOT_SQL, hardware_id_ancestors, hardware_id_root, is_spelling_of

KEYRING = Keyring(b"unit-test-secret-key")
H = "b827eb8905e5"
REGISTRATION = "registration-1"
FP_A = KEYRING.fingerprint("cpu-a", "b8:27:eb:00:00:0a")
FP_B = KEYRING.fingerprint("cpu-b", "b8:27:eb:00:00:0b")
KEY = "1c1b0dbe190e"


def secret_matches(device: KnownDevice, digest: str) -> bool:
    """What the dedup service passes to ``decide``."""
    return KEYRING.device_secret_matches(device.id, device.credential_generation, digest)


def presented_secret(device: KnownDevice) -> str:
    """The digest of the device secret issued to ``device``, as it travels in a claim."""
    return KEYRING.digest(KEYRING.device_secret(device.id, device.credential_generation))


def preregistered(
    hardware_id: str = H, *, key: str = KEY, disabled: bool = False, device_id: str = "pre-1"
) -> KnownDevice:
    return KnownDevice(
        id=device_id,
        hardware_id=hardware_id,
        claimed_hardware_id=hardware_id,
        name=f"Device {hardware_id}",
        fingerprint="",
        lifecycle="preregistered",
        disabled=disabled,
        credential_generation=1,
        registration_id=REGISTRATION,
        registration_key_digest=KEYRING.digest(key) if key else "",
    )


def registered(
    hardware_id: str, *, claimed: str | None = None, device_id: str, fingerprint: str
) -> KnownDevice:
    return KnownDevice(
        id=device_id,
        hardware_id=hardware_id,
        claimed_hardware_id=claimed if claimed is not None else hardware_id,
        name=hardware_id,
        fingerprint=fingerprint,
        lifecycle="provisioned",
        disabled=False,
        credential_generation=1,
        registration_id=REGISTRATION,
    )


@dataclass
class Fleet:
    """One account's family of devices, and the claims of its devices decided one by one."""

    family: Family = field(default_factory=Family)
    kind: Literal["auto", "bulk"] = "auto"
    limits: Limits = NO_LIMITS
    max_devices: int | None = None  # the registration's quota
    now: float = 0.0
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _requests: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self) -> str:
        return f"dev-{next(self._ids)}"

    def context(self, kind: Literal["auto", "bulk"] | None = None, product: str = "") -> Context:
        """What a claim presenting the code of ``product`` is decided under, as the dedup service builds it."""
        return Context(
            kind=kind or self.kind,
            registration_id=f"{REGISTRATION}{product}",
            secret_matches=secret_matches,
            product_id=product,
            limits=self.limits,
            max_devices=self.max_devices,
            now=self.now,
            new_id=self.new_id,
        )

    def claim(
        self,
        hardware_id: str = H,
        fingerprint: str = "",
        *,
        secret: str = "",
        key: str = "",
        idempotency_key: str = "",
        source: str = "",
        protocol: str = "native",
        product: str = "",
        kind: Literal["auto", "bulk"] | None = None,
        attested: bool = False,
    ) -> Verdict:
        """A claim presenting the code of ``product`` ("": the fleet's one product), of
        ``kind`` (default: the fleet's), from ``source``; ``attested``: proven by the
        device's X.509 certificate of ``hardware_id``."""
        claim = Claim(
            request_id=f"req-{next(self._requests)}",
            hardware_id=hardware_id,
            fingerprint=fingerprint,
            secret_digest=secret,
            registration_key_digest=KEYRING.digest(key),
            idempotency_key=idempotency_key,
            source=source,
            protocol=protocol,
            attested=attested,
        )
        verdict = decide(claim, self.family, self.context(kind, product))
        self.family.apply(claim, verdict)
        return verdict

    def confirm(self, hardware_id: str) -> KnownDevice:
        """The device sent "ready": its provisioning is confirmed."""
        device = self.family.devices[hardware_id]
        device.lifecycle = "provisioned"
        return device

    def device(self, hardware_id: str) -> KnownDevice:
        return self.family.devices[hardware_id]

    @property
    def hardware_ids(self) -> list[str]:
        return sorted(self.family.devices)


def device_of(verdict: Verdict) -> KnownDevice:
    assert verdict.device is not None, verdict
    return verdict.device


# ---------------------------------------------------------------- auto registration


def test_first_claimant_of_a_hardware_id_is_new_and_named_after_it() -> None:
    fleet = Fleet()
    verdict = fleet.claim(H, FP_A)
    device = device_of(verdict)
    assert verdict.decision == "new"
    assert verdict.created and not verdict.claimed_preregistered
    assert verdict.hardware_id == H
    assert (device.id, device.hardware_id, device.claimed_hardware_id, device.name) == ("dev-1", H, H, H)
    assert (device.lifecycle, device.fingerprint, device.disabled) == ("registered", FP_A, False)
    assert device.credential_generation == 1
    assert device.registration_id == REGISTRATION


def test_second_and_third_distinct_claimants_become_clones_h_1_then_h_2() -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A)
    second = fleet.claim(H, FP_B)
    third = fleet.claim(H, KEYRING.fingerprint("cpu-c"))
    assert (second.decision, third.decision) == ("clone", "clone")
    assert second.created and third.created
    assert (device_of(second).hardware_id, device_of(third).hardware_id) == (f"{H}-1", f"{H}-2")
    assert device_of(second).name == f"{H}-1"
    assert device_of(second).claimed_hardware_id == H
    assert device_of(second).lifecycle == "registered"
    assert f"{H}-1" in second.reason
    assert len({device_of(second).id, device_of(third).id, fleet.device(H).id}) == 3
    assert fleet.hardware_ids == [H, f"{H}-1", f"{H}-2"]


def test_a_clone_gets_the_smallest_free_index() -> None:
    fleet = Fleet(
        Family.of(
            [
                registered(H, device_id="d-h", fingerprint=FP_A),
                registered(f"{H}-2", claimed=H, device_id="d-h2", fingerprint=FP_B),
            ]
        )
    )
    verdict = fleet.claim(H, KEYRING.fingerprint("cpu-c"))
    assert verdict.decision == "clone"
    assert verdict.hardware_id == f"{H}-1"


def test_a_literal_h_1_owned_by_another_device_is_skipped() -> None:
    own_h_1 = registered(f"{H}-1", device_id="d-literal", fingerprint=FP_B)  # its own hardware ID is H-1
    fleet = Fleet(Family.of([registered(H, device_id="d-h", fingerprint=FP_A), own_h_1]))
    first_clone = fleet.claim(H, KEYRING.fingerprint("cpu-c"))
    second_clone = fleet.claim(H, KEYRING.fingerprint("cpu-d"))
    assert (first_clone.hardware_id, second_clone.hardware_id) == (f"{H}-2", f"{H}-3")
    assert fleet.device(f"{H}-1") is own_h_1


def test_same_fingerprint_before_confirmation_is_the_same_device() -> None:
    fleet = Fleet()
    first = fleet.claim(H, FP_A)
    retry = fleet.claim(H, FP_A)
    assert retry.decision == "same"
    assert not retry.created
    assert device_of(retry).id == device_of(first).id
    assert fleet.hardware_ids == [H]


def test_same_fingerprint_after_confirmation_without_secret_is_a_clone() -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A)
    fleet.confirm(H)
    again = fleet.claim(H, FP_A)
    assert again.decision == "clone"
    assert again.hardware_id == f"{H}-1"


@pytest.mark.parametrize("fingerprint", [FP_A, ""], ids=["same-fp", "no-fp"])
def test_the_device_secret_identifies_the_device_even_after_confirmation(fingerprint: str) -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A)
    device = fleet.confirm(H)
    verdict = fleet.claim(H, fingerprint, secret=presented_secret(device))
    assert verdict.decision == "same"
    assert not verdict.created
    assert device_of(verdict).id == device.id
    assert fleet.hardware_ids == [H]


def test_the_secret_on_a_cloned_sd_card_does_not_make_the_clone_the_same_device() -> None:
    """The copied card carries H's secret, but the system identifiers are another board's."""
    fleet = Fleet()
    fleet.claim(H, FP_A)
    device = fleet.confirm(H)
    verdict = fleet.claim(H, FP_B, secret=presented_secret(device))
    assert verdict.decision == "clone"
    assert verdict.hardware_id == f"{H}-1"
    assert fleet.hardware_ids == [H, f"{H}-1"]


def test_a_clone_starting_over_with_its_new_hardware_id_is_the_same_device() -> None:
    """The reference client stores the H-1 it was told and registers again with it."""
    fleet = Fleet()
    fleet.claim(H, FP_A)
    clone = fleet.claim(H, FP_B)
    assert clone.hardware_id == f"{H}-1"
    again = fleet.claim(f"{H}-1", FP_B)
    assert again.decision == "same"
    assert device_of(again).id == device_of(clone).id
    assert fleet.hardware_ids == [H, f"{H}-1"]


@pytest.mark.parametrize(
    "wrong_secret",
    [
        pytest.param(KEYRING.digest("not the secret"), id="other-value"),
        pytest.param(KEYRING.digest(KEYRING.device_secret("dev-1", 2)), id="other-generation"),
        pytest.param(KEYRING.device_secret("dev-1", 1), id="undigested"),
        pytest.param(
            Keyring(b"other key").digest(Keyring(b"other key").device_secret("dev-1", 1)), id="other-key"
        ),
    ],
)
def test_a_wrong_secret_is_treated_as_no_secret(wrong_secret: str) -> None:
    fleet = Fleet()
    assert device_of(fleet.claim(H, FP_A)).id == "dev-1"
    fleet.confirm(H)
    verdict = fleet.claim(H, FP_A, secret=wrong_secret)
    assert verdict.decision == "clone"
    assert verdict.hardware_id == f"{H}-1"


def test_a_wrong_secret_does_not_spoil_a_retry_before_confirmation() -> None:
    fleet = Fleet()
    first = fleet.claim(H, FP_A)
    retry = fleet.claim(H, FP_A, secret=KEYRING.digest("garbage"))
    assert retry.decision == "same"
    assert device_of(retry).id == device_of(first).id


def test_an_idempotency_key_retry_is_the_same_device_while_registered() -> None:
    fleet = Fleet()
    first = fleet.claim(H, FP_A, idempotency_key="boot-1")
    # The retry lost its fingerprint: the idempotency key alone identifies it.
    retry = fleet.claim(H, "", idempotency_key="boot-1")
    assert retry.decision == "same"
    assert not retry.created
    assert device_of(retry).id == device_of(first).id
    assert fleet.hardware_ids == [H]


def test_an_idempotency_key_no_longer_identifies_the_device_after_confirmation() -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A, idempotency_key="boot-1")
    fleet.confirm(H)
    verdict = fleet.claim(H, FP_B, idempotency_key="boot-1")
    assert verdict.decision == "clone"
    assert verdict.hardware_id == f"{H}-1"


def test_a_clone_retrying_with_its_fingerprint_gets_its_indexed_id_back() -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A)
    clone = fleet.claim(H, FP_B)
    retry = fleet.claim(H, FP_B)
    assert retry.decision == "same"
    assert not retry.created
    assert device_of(retry).id == device_of(clone).id
    assert retry.hardware_id == f"{H}-1"
    assert fleet.hardware_ids == [H, f"{H}-1"]


def test_a_confirmed_clone_presenting_its_secret_under_its_new_id_is_the_same_device() -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A)
    fleet.claim(H, FP_B)
    clone = fleet.confirm(f"{H}-1")
    verdict = fleet.claim(f"{H}-1", FP_B, secret=presented_secret(clone))
    assert verdict.decision == "same"
    assert device_of(verdict).id == clone.id


def test_a_confirmed_clone_presenting_the_id_it_claimed_and_its_own_secret_is_itself() -> None:
    """A copied image's board proves only H's derived key (docs/device-identity.md): it
    claims H with its own secret, issued to H-1, and is H-1, never a further clone."""
    fleet = Fleet()
    fleet.claim(H, FP_A)
    fleet.confirm(H)
    fleet.claim(H, FP_B)
    clone = fleet.confirm(f"{H}-1")
    verdict = fleet.claim(H, FP_B, secret=presented_secret(clone))
    assert (verdict.decision, device_of(verdict).id, verdict.hardware_id) == ("same", clone.id, f"{H}-1")
    assert fleet.hardware_ids == [H, f"{H}-1"]
    # Its secret on yet another board (a copied card) is no proof of H-1: a clone H-2.
    assert (
        fleet.claim(H, KEYRING.fingerprint("cpu-c"), secret=presented_secret(clone)).hardware_id == f"{H}-2"
    )


@pytest.mark.parametrize("confirmed", [False, True], ids=["registered", "provisioned"])
def test_a_disabled_device_presenting_its_secret_is_refused(confirmed: bool) -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A)
    device = fleet.confirm(H) if confirmed else fleet.device(H)
    device.disabled = True
    verdict = fleet.claim(H, FP_A, secret=presented_secret(device))
    assert verdict.decision == "refused"
    assert verdict.reason == REASON_DISABLED
    assert not verdict.created
    assert fleet.hardware_ids == [H]


def test_a_preregistered_device_reset_for_reprovisioning_is_taken_over() -> None:
    fleet = Fleet(Family.of([preregistered(key="")]))
    verdict = fleet.claim(H, FP_A)
    device = device_of(verdict)
    assert verdict.decision == "new"
    assert verdict.claimed_preregistered
    assert not verdict.created  # the existing row is taken over, none is inserted
    assert (device.id, device.hardware_id) == ("pre-1", H)
    assert (device.lifecycle, device.fingerprint) == ("registered", FP_A)
    # Whoever comes next with another fingerprint is a clone of the device that took it over.
    assert fleet.claim(H, FP_B).hardware_id == f"{H}-1"


def test_a_disabled_preregistered_device_is_not_taken_over() -> None:
    fleet = Fleet(Family.of([preregistered(key="", disabled=True)]))
    verdict = fleet.claim(H, FP_A)
    assert verdict.decision == "refused"
    assert verdict.reason == REASON_DISABLED
    assert fleet.device(H).lifecycle == "preregistered"


def test_an_empty_fingerprint_never_matches() -> None:
    fleet = Fleet()
    fleet.claim(H, "")
    verdicts = [fleet.claim(H, "") for _ in range(3)]
    assert [v.decision for v in verdicts] == ["clone"] * 3
    assert [v.hardware_id for v in verdicts] == [f"{H}-1", f"{H}-2", f"{H}-3"]


def test_200_clones_of_one_image_get_h_to_h_199_each_exactly_once() -> None:
    fleet = Fleet()
    verdicts = [fleet.claim(H, KEYRING.fingerprint(f"cpu-{n}")) for n in range(200)]
    assigned = [v.hardware_id for v in verdicts]
    assert assigned == [H] + [f"{H}-{n}" for n in range(1, 200)]
    assert [v.decision for v in verdicts] == ["new"] + ["clone"] * 199
    assert len({device_of(v).id for v in verdicts}) == 200
    assert len(fleet.family.devices) == 200


# ---------------------------------------------------------------- bulk registration


def bulk_fleet(*devices: KnownDevice) -> Fleet:
    return Fleet(Family.of(devices), kind="bulk")


def test_bulk_unknown_hardware_id_and_wrong_key_get_the_same_refusal() -> None:
    unknown = bulk_fleet(preregistered()).claim("f0038c1be545", FP_A, key=KEY)
    wrong_key = bulk_fleet(preregistered()).claim(H, FP_A, key="000000000000")
    no_key = bulk_fleet(preregistered()).claim(H, FP_A)
    assert unknown.decision == "refused"
    assert unknown.reason == REASON_BULK_NOT_LISTED
    # Equal verdicts, no device attached: nothing tells which of the two was wrong.
    assert wrong_key == unknown
    assert no_key == unknown
    assert unknown.device is None
    assert unknown.hardware_id == ""


def test_bulk_right_key_claims_the_preregistered_device() -> None:
    fleet = bulk_fleet(preregistered())
    verdict = fleet.claim(H, FP_A, key=KEY)
    device = device_of(verdict)
    assert verdict.decision == "new"
    assert verdict.claimed_preregistered
    assert not verdict.created
    assert (device.id, device.hardware_id, device.name) == ("pre-1", H, f"Device {H}")
    assert (device.lifecycle, device.fingerprint) == ("registered", FP_A)


def test_bulk_retry_before_confirmation_is_the_same_device() -> None:
    fleet = bulk_fleet(preregistered())
    fleet.claim(H, FP_A, key=KEY)
    retry = fleet.claim(H, FP_A, key=KEY)
    assert retry.decision == "same"
    assert device_of(retry).id == "pre-1"


def test_bulk_never_makes_an_indexed_clone() -> None:
    fleet = bulk_fleet(preregistered())
    fleet.claim(H, FP_A, key=KEY)
    other = fleet.claim(H, FP_B, key=KEY)
    assert other.decision == "refused"
    assert other.reason == REASON_BULK_ALREADY_CLAIMED
    assert fleet.hardware_ids == [H]


def test_bulk_after_confirmation_a_claim_without_secret_is_refused_as_already_claimed() -> None:
    fleet = bulk_fleet(preregistered())
    fleet.claim(H, FP_A, key=KEY)
    fleet.confirm(H)
    verdict = fleet.claim(H, FP_A, key=KEY)
    assert verdict.decision == "refused"
    assert verdict.reason == REASON_BULK_ALREADY_CLAIMED
    assert not verdict.created
    assert fleet.hardware_ids == [H]


def test_bulk_after_confirmation_a_claim_with_the_device_secret_is_the_same_device() -> None:
    fleet = bulk_fleet(preregistered())
    fleet.claim(H, FP_A, key=KEY)
    device = fleet.confirm(H)
    verdict = fleet.claim(H, FP_A, key=KEY, secret=presented_secret(device))
    assert verdict.decision == "same"
    assert device_of(verdict).id == "pre-1"


def test_bulk_disabled_device_with_the_right_key_is_refused_as_disabled() -> None:
    verdict = bulk_fleet(preregistered(disabled=True)).claim(H, FP_A, key=KEY)
    assert verdict.decision == "refused"
    assert verdict.reason == REASON_DISABLED


@pytest.mark.parametrize(
    "reason",
    [
        REASON_DISABLED,
        REASON_BULK_NOT_LISTED,
        REASON_BULK_ALREADY_CLAIMED,
        reason_max_devices(1000),
        reason_clone_limit(100, 3600.0),
        reason_clone_limit(5, 0.5),
        reason_clone_rate(20, 60.0),
    ],
)
def test_refusal_reasons_are_plain_text_for_the_reference_client(reason: str) -> None:
    assert reason.isascii()
    assert not set(reason) & set(",{}\"'\n")


# ---------------------------------------------------------------- limits on device creation


def test_every_limit_has_one_rule_that_its_reason_starts_with() -> None:
    """shared.domain.dedup.QUOTAS is the one entry a new limit adds for every reader of its
    refusal (the registry's reason, the intake, webhooks' summaries)."""
    assert set(QUOTAS) == set(get_args(Quota))
    reasons: dict[Quota, str] = {
        "max_devices": reason_max_devices(5),
        "clone_limit": reason_clone_limit(3, 3600),
        "clone_rate": reason_clone_rate(3, 60),
    }
    assert set(reasons) == set(QUOTAS)
    for quota, reason in reasons.items():
        assert reason.startswith(QUOTAS[quota].prefix)
        assert quota_of_reason(reason) == quota
        assert is_quota_refusal(reason) is QUOTAS[quota].final
    assert quota_of_reason(REASON_BULK_NOT_LISTED) is None and not is_quota_refusal(REASON_BULK_NOT_LISTED)


NOW = 1_800_000_000.0


def test_a_registration_quota_refuses_the_device_past_it_naming_the_quota() -> None:
    fleet = Fleet(max_devices=3, now=NOW)
    fleet.family.registration_devices[REGISTRATION] = 1  # one device registered before
    verdicts = [fleet.claim(f"hw{n}", KEYRING.fingerprint(f"cpu-{n}")) for n in range(4)]
    assert [v.decision for v in verdicts] == ["new", "new", "refused", "refused"]
    refused = verdicts[2]
    assert (refused.reason, refused.quota) == (reason_max_devices(3), "max_devices")
    assert refused.reason == "quota reached: auto registration max_devices=3"
    assert (refused.device, refused.created) == (None, False)
    assert fleet.hardware_ids == ["hw0", "hw1"]
    assert fleet.family.registration_devices == {REGISTRATION: 3}


def test_clones_count_against_the_quota() -> None:
    fleet = Fleet(max_devices=2, now=NOW)
    verdicts = [fleet.claim(H, KEYRING.fingerprint(f"cpu-{n}")) for n in range(3)]
    assert [v.decision for v in verdicts] == ["new", "clone", "refused"]
    assert verdicts[2].quota == "max_devices"


def test_retries_and_the_same_device_never_count_against_the_quota() -> None:
    fleet = Fleet(max_devices=1, now=NOW)
    first = fleet.claim(H, FP_A, idempotency_key="k1")
    assert first.decision == "new"
    # At the quota: a retry by idempotency key and by secret are still the device.
    assert fleet.claim(H, FP_A, idempotency_key="k1").decision == "same"
    assert fleet.claim(H, "", idempotency_key="k1").decision == "same"
    device = fleet.confirm(H)
    assert fleet.claim(H, FP_A, secret=presented_secret(device)).decision == "same"
    # ...and a different device is refused, creating nothing.
    assert fleet.claim("other", FP_B).quota == "max_devices"
    assert fleet.family.registration_devices == {REGISTRATION: 1}
    assert fleet.hardware_ids == [H]


def test_a_reset_device_taken_over_is_not_a_new_device_for_the_quota() -> None:
    reset = preregistered(key="")
    fleet = Fleet(Family.of([reset], registration_devices={REGISTRATION: 1}), max_devices=1)
    verdict = fleet.claim(H, FP_A)
    assert (verdict.decision, verdict.claimed_preregistered, verdict.created) == ("new", True, False)


def test_no_quota_means_no_limit() -> None:
    fleet = Fleet(now=NOW)
    assert all(fleet.claim(f"hw{n}", FP_A).decision == "new" for n in range(50))


def test_the_clone_limit_refuses_clones_past_it_within_the_window() -> None:
    fleet = Fleet(limits=Limits(clone_limit=PerWindow(3, 3600)), now=NOW)
    verdicts = [fleet.claim(H, KEYRING.fingerprint(f"cpu-{n}")) for n in range(6)]
    assert [v.decision for v in verdicts] == ["new", "clone", "clone", "clone", "refused", "refused"]
    assert verdicts[4].reason == reason_clone_limit(3, 3600)
    assert verdicts[4].reason == (
        "clone limit reached: at most 3 clones of one hardware ID per 3600 seconds from one address"
        " (FLEETREG_CLONE_LIMIT)"
    )
    assert (verdicts[4].quota, verdicts[4].device) == ("clone_limit", None)
    assert fleet.hardware_ids == [H, f"{H}-1", f"{H}-2", f"{H}-3"]


def test_clones_older_than_the_window_do_not_count() -> None:
    old = [
        replace(
            registered(f"{H}-{n}", claimed=H, device_id=f"old-{n}", fingerprint=f"fp{n}"),
            created_at=NOW - 7200,
        )
        for n in range(1, 4)
    ]
    family = Family.of([registered(H, device_id="first", fingerprint=FP_A), *old])
    fleet = Fleet(family, limits=Limits(clone_limit=PerWindow(3, 3600)), now=NOW)
    verdicts = [fleet.claim(H, KEYRING.fingerprint(f"cpu-{n}")) for n in range(4)]
    assert [v.decision for v in verdicts] == ["clone", "clone", "clone", "refused"]
    assert [v.hardware_id for v in verdicts[:3]] == [f"{H}-4", f"{H}-5", f"{H}-6"]


def test_the_clone_limit_is_per_claimed_hardware_id_and_spares_new_devices_and_retries() -> None:
    fleet = Fleet(limits=Limits(clone_limit=PerWindow(1, 3600)), now=NOW)
    assert [fleet.claim(H, fp).decision for fp in (FP_A, FP_B)] == ["new", "clone"]
    assert fleet.claim(H, "fp-c").quota == "clone_limit"
    # The clone retrying before confirmation is still itself...
    assert fleet.claim(H, FP_B).decision == "same"
    # ...and another hardware ID has a limit of its own.
    assert [fleet.claim("other", fp).decision for fp in (FP_A, FP_B)] == ["new", "clone"]


# ---------------------------------------------------------------- what one source creates

SQUATTER, BOARD = "192.0.2.66", "198.51.100.7"


def fingerprints(count: int, tag: str = "cpu") -> list[str]:
    return [KEYRING.fingerprint(f"{tag}-{n}") for n in range(count)]


def test_the_clone_limit_counts_what_one_source_created_and_spares_the_others() -> None:
    """docs/security.md, "Creation bounded where the attacker pays": a squatter that claims a
    real device's hardware ID first and then clones it exhausts its own clone limit only;
    the real board, from another address, is answered at once (as H-N)."""
    fleet = Fleet(limits=Limits(clone_limit=PerWindow(3, 3600)), now=NOW)
    squat = [fleet.claim(H, fp, source=SQUATTER) for fp in fingerprints(6)]
    assert [v.decision for v in squat] == ["new", "clone", "clone", "clone", "refused", "refused"]
    assert squat[4].quota == "clone_limit"
    board = fleet.claim(H, FP_A, source=BOARD)
    assert (board.decision, board.hardware_id) == ("clone", f"{H}-4")
    # The board's own address has a limit of its own, untouched by the squatter's.
    assert [fleet.claim(H, fp, source=BOARD).decision for fp in fingerprints(3, "b")] == [
        "clone",
        "clone",
        "refused",
    ]


def test_the_clone_rate_asks_one_source_to_try_again_when_its_window_frees() -> None:
    fleet = Fleet(limits=Limits(clone_rate=PerWindow(3, 60)), now=NOW)
    older = replace(
        registered(f"{H}-9", claimed=H, device_id="older", fingerprint="fp-old"),
        created_at=NOW - 50,  # leaves the window 10 s from now
        created_source=SQUATTER,
    )
    fleet.family = Family.of([older])
    verdicts = [fleet.claim(H, fp, source=SQUATTER) for fp in fingerprints(4)]
    # The first device and the clones count alike: what the source created for H.
    assert [v.decision for v in verdicts] == ["new", "clone", "refused", "refused"]
    refused = verdicts[2]
    assert (refused.quota, refused.device, refused.created) == ("clone_rate", None, False)
    assert refused.reason == reason_clone_rate(3, 60)
    assert refused.reason == (
        "too many new devices with this hardware ID from this address: at most 3 per 60 seconds"
        " (FLEETREG_CLONE_RATE_PER_SOURCE): try again later"
    )
    assert refused.retry_after == pytest.approx(10.0)
    assert is_clone_rate_refusal(refused.reason) and not is_quota_refusal(refused.reason)
    # Another source is not slowed; nor is this one once the window frees.
    assert fleet.claim(H, FP_A, source=BOARD).decision == "clone"
    fleet.now = NOW + 11
    assert fleet.claim(H, KEYRING.fingerprint("cpu-late"), source=SQUATTER).decision == "clone"


def test_a_factory_sharing_one_serial_behind_one_address_gets_through_at_the_rate() -> None:
    """Boards that all claim one placeholder serial from one NAT address: every one gets a
    device, the rate's worth per window, each told when to try again."""
    fleet = Fleet(limits=Limits(clone_rate=PerWindow(10, 60), clone_limit=PerWindow(100, 3600)), now=NOW)
    waiting = fingerprints(30, "board")
    rounds = 0
    while waiting:
        answers = {fp: fleet.claim("SERIAL0", fp, source=BOARD) for fp in waiting}
        waiting = [fp for fp, v in answers.items() if v.decision == "refused"]
        assert all(answers[fp].quota == "clone_rate" for fp in waiting)
        fleet.now += max(v.retry_after for v in answers.values())
        rounds += 1
    assert rounds == 3
    assert len(fleet.hardware_ids) == 30


def test_retries_of_a_device_are_never_refused_by_the_clone_rate() -> None:
    fleet = Fleet(limits=Limits(clone_rate=PerWindow(1, 60)), now=NOW)
    assert fleet.claim(H, FP_A, idempotency_key="k1", source=SQUATTER).decision == "new"
    assert fleet.claim(H, FP_B, source=SQUATTER).quota == "clone_rate"
    assert fleet.claim(H, FP_A, idempotency_key="k1", source=SQUATTER).decision == "same"
    device = fleet.confirm(H)
    assert fleet.claim(H, FP_A, secret=presented_secret(device), source=SQUATTER).decision == "same"
    # A retry from the same fingerprint before confirmation (no key) too.
    other = Fleet(limits=Limits(clone_rate=PerWindow(1, 60)), now=NOW)
    assert other.claim(H, FP_A, source=SQUATTER).decision == "new"
    assert other.claim(H, FP_A, source=SQUATTER).decision == "same"


def test_a_source_reaching_its_clone_rate_or_limit_is_noticed_once_then_on_each_refusal() -> None:
    fleet = Fleet(limits=Limits(clone_rate=PerWindow(3, 60), clone_limit=PerWindow(4, 3600)), now=NOW)

    def claim(fp: str, source: str = SQUATTER) -> Reached | None:
        claimed = Claim(request_id=fp, hardware_id=H, fingerprint=fp, source=source)
        context = fleet.context()
        verdict = decide(claimed, fleet.family, context)
        fleet.family.apply(claimed, verdict)
        return limit_reached(claimed, verdict, fleet.family, context)

    assert [claim(f"fp{n}") for n in range(2)] == [None, None]
    assert claim("fp2") == Reached("clone_rate", 3, 60, just_now=True)  # the third device fills it
    assert claim("fp3") == Reached("clone_rate", 3, 60, just_now=False)  # refused: try again later
    assert claim("fp4", BOARD) is None  # another source: nothing to notice
    fleet.now = NOW + 61
    assert claim("fp5") is None
    assert claim("fp6") == Reached("clone_limit", 4, 3600, just_now=True)  # H-1 ... H-4 from one source
    assert claim("fp7") == Reached("clone_limit", 4, 3600, just_now=False)


@pytest.mark.parametrize(
    ("hardware_id", "root"),
    [
        ("H", "h"),
        ("H-1", "h"),
        ("H-01", "h"),
        ("h-1-1", "h"),
        ("H-200-3-4", "h"),
        ("b8-27-eb", "b8-27-eb"),
        ("b8-27-eb-12-34-56", "b8-27-eb"),
        ("H-1a", "h-1a"),
        ("-1", ""),
    ],
)
def test_the_root_of_a_hardware_id_strips_every_index_suffix_in_lower_case(
    hardware_id: str, root: str
) -> None:
    assert hardware_id_root(hardware_id) == root


def test_the_root_keeps_the_claimed_case_when_asked() -> None:
    assert hardware_id_root("Board-01-2", lower=False) == "Board"


def test_the_creations_query_spells_the_root_as_its_index_does() -> None:
    """The index devices_created_root (migration 0026) serves only the very same expression."""
    migration = (Path(__file__).parents[2] / "shared/migrations/0026_clone_roots.sql").read_text()
    assert ROOT_SQL in devices.SELECT_CREATIONS
    assert f"({ROOT_SQL})" in migration


def test_suffixed_spellings_from_one_source_share_the_clone_rate_and_the_limit_of_their_head() -> None:
    """attack2 F1: H, then the literal IDs H-1, H-01, h-1-1... each "new" under its own
    claimed ID, buy no fresh allowance: while H exists, the rate and the clone limit count
    them with H (their family head)."""
    fleet = Fleet(limits=Limits(clone_rate=PerWindow(3, 60), clone_limit=PerWindow(4, 3600)), now=NOW)
    spellings = ["H", "H-1", "H-01", "h-1-1", "H-2"]
    verdicts = [fleet.claim(h, fp, source=SQUATTER) for h, fp in zip(spellings, fingerprints(5), strict=True)]
    assert [v.decision for v in verdicts] == ["new", "new", "new", "refused", "refused"]
    assert {v.quota for v in verdicts[3:]} == {"clone_rate"}
    assert all(v.retry_after == pytest.approx(60.0) for v in verdicts[3:])
    # The real board, from another address, is answered at once (H is the squatter's).
    board = fleet.claim("H", FP_A, source=BOARD)
    assert (board.decision, board.hardware_id) == ("clone", "H-2")
    # Clones of any spelling count against the one clone limit of the head, and so do the
    # spellings themselves (H-1, H-01: two of the four).
    fleet.now = NOW + 61
    clones = [
        fleet.claim(h, fp, source=SQUATTER)
        for h, fp in zip(["H", "h-1", "H-01"], fingerprints(3, "c"), strict=True)
    ]
    assert [v.decision for v in clones] == ["clone", "clone", "refused"]
    assert clones[2].quota == "clone_limit"
    # Another head is another allowance.
    assert fleet.claim("G-1", FP_B, source=SQUATTER).decision == "new"


def test_creations_loaded_for_other_stems_count_with_the_family_and_the_batch_once_each() -> None:
    """The family holds the claims' stems; what the source created under other spellings of
    the family head comes in ``Family.created`` (a device in both is counted once)."""
    head = replace(registered("H", device_id="head", fingerprint="fp-h"), created_at=NOW - 5000)
    in_family = replace(
        registered("H-2-1", device_id="in-both", fingerprint="fp0"),
        created_at=NOW - 10,
        created_source=SQUATTER,
    )
    loaded = [
        Creation("in-both", "h-2-1", SQUATTER, NOW - 10, clone=False),
        Creation("elsewhere", "h-01", SQUATTER, NOW - 5, clone=False),
        Creation("old", "h-3", SQUATTER, NOW - 4000, clone=True),  # outside both windows
    ]
    fleet = Fleet(
        Family.of([head, in_family], created=loaded),
        limits=Limits(clone_rate=PerWindow(4, 60), clone_limit=PerWindow(100, 3600)),
        now=NOW,
    )
    assert fleet.family.created_by("H-7", SQUATTER, NOW - 60, clones=False) == [NOW - 10, NOW - 5]
    assert [fleet.claim("H-7", fp, source=SQUATTER).decision for fp in fingerprints(3)] == [
        "new",
        "clone",
        "refused",
    ]
    # For the clone limit the spellings count as clones of the head: h-2-1, h-01, H-7 and
    # H-7's clone.
    assert fleet.family.created_by("H-7", SQUATTER, NOW - 3600, clones=True) == [NOW - 10, NOW - 5, NOW, NOW]
    assert fleet.family.created_by("H-7", BOARD, NOW - 3600, clones=False) == []
    # A claim of H itself meets the spellings its source made under it (attack3 G2).
    assert fleet.family.created_by("h", SQUATTER, NOW - 3600, clones=False) == [NOW - 10, NOW - 5, NOW, NOW]
    # H-2-2's parent H-2 is no device: it is its own head, another allowance.
    assert fleet.family.created_by("H-2-2", SQUATTER, NOW - 60, clones=False) == []


@pytest.mark.parametrize(
    ("hardware_id", "ancestors"),
    [
        ("H", []),
        ("b827eb8905e5", []),
        ("H-1", ["h"]),
        ("H-1-01", ["h-1", "h"]),
        ("b8-27-EB-00-00-02", ["b8-27-eb-00-00", "b8-27-eb-00", "b8-27-eb"]),
        ("H-1a-2", ["h-1a"]),
        ("-1", []),
    ],
)
def test_the_ancestors_of_a_hardware_id_are_one_index_suffix_up_each_nearest_first(
    hardware_id: str, ancestors: list[str]
) -> None:
    assert hardware_id_ancestors(hardware_id) == ancestors


@pytest.mark.parametrize(
    ("claimed", "key", "spelling"),
    [
        ("H", "h", True),
        ("h-1", "H", True),
        ("H-01-1", "h", True),
        ("H-1-1", "h-1", True),
        ("H-2-1", "h-1", False),
        ("H1", "h", False),
        ("H-1a", "h", False),
        ("G-1", "h", False),
    ],
)
def test_a_spelling_of_a_head_is_the_head_or_the_head_with_index_suffixes(
    claimed: str, key: str, spelling: bool
) -> None:
    assert is_spelling_of(claimed, key) is spelling


def _family_of(*hardware_ids: str) -> Family:
    return Family.of(registered(h, device_id=f"dev-{h}", fingerprint=f"fp-{h}") for h in hardware_ids)


@pytest.mark.parametrize(
    ("existing", "claimed", "head"),
    [
        ((), "H-1", "h-1"),  # no ancestor: the claim is its own head
        (("H",), "H", "h"),
        (("H",), "H-1", "h"),  # one level
        (("H",), "h-01", "h"),
        (("H", "H-1"), "H-1-1", "h"),  # several levels
        (("Board", "board-1-1"), "BOARD-1-1-1", "board-1-1"),  # stops at the first gap (board-1)
        (("h", "H-1"), "H-1-7", "h"),  # any case
        (("b8-27-eb-00-00-01",), "b8-27-eb-00-00-02", "b8-27-eb-00-00-02"),  # a sibling is no ancestor
        (("b8-27-eb-00-00-01",), "B8-27-EB-00-00-01-1", "b8-27-eb-00-00-01"),
    ],
)
def test_the_family_head_of_a_claim_is_its_highest_existing_ancestor(
    existing: tuple[str, ...], claimed: str, head: str
) -> None:
    assert _family_of(*existing).head(claimed) == head


def test_sequential_dashed_macs_from_one_source_are_each_a_distinct_id_never_slowed() -> None:
    """Devices named by dashed MACs from a factory behind one NAT: they share a root but no
    family head, so each has the rate of its own ID (unlike a squatter's spellings of H)."""
    fleet = Fleet(limits=Limits(clone_rate=PerWindow(3, 60), clone_limit=PerWindow(2, 3600)), now=NOW)
    macs = [f"aa-bb-cc-00-{n // 100:02d}-{n % 100:02d}" for n in range(100)]
    verdicts = [fleet.claim(mac, fp, source=BOARD) for mac, fp in zip(macs, fingerprints(100), strict=True)]
    assert [v.decision for v in verdicts] == ["new"] * 100
    # A copied SD card of one of them is still counted against that MAC alone.
    assert [fleet.claim(macs[5], fp, source=BOARD).decision for fp in fingerprints(3, "copy")] == [
        "clone",
        "clone",
        "refused",
    ]


def test_a_squatting_alert_counts_under_the_family_head() -> None:
    """The spellings of an existing H reach the rate together; the claim that fills it is
    reported with the count of the head's creations."""
    fleet = Fleet(limits=Limits(clone_rate=PerWindow(3, 60)), now=NOW)
    reached = []
    for h, fp in zip(["H", "H-1", "H-1-1", "H-01"], fingerprints(4), strict=True):
        claimed = Claim(request_id=fp, hardware_id=h, fingerprint=fp, source=SQUATTER)
        context = fleet.context()
        verdict = decide(claimed, fleet.family, context)
        fleet.family.apply(claimed, verdict)
        reached.append(limit_reached(claimed, verdict, fleet.family, context))
    assert reached == [
        None,
        None,
        Reached("clone_rate", 3, 60, just_now=True),
        Reached("clone_rate", 3, 60, just_now=False),
    ]


def test_before_ready_a_new_or_no_idempotency_key_from_the_fingerprint_is_the_device_with_new_credentials() -> (
    None
):
    """docs/security.md, "The window before ready": a board that lost power (or its answer)
    before "ready" and claims again with a new Idempotency-Key, or none, from its
    fingerprint is the device: never H-1 (a ghost H left behind), and with a new credential
    generation, so that whoever holds the earlier answer holds nothing any more. The same
    key is the same answer (the same credentials)."""
    fleet = Fleet()
    first = fleet.claim(H, FP_A, idempotency_key="k1")
    assert (first.decision, device_of(first).credential_generation) == ("new", 1)
    same_key = fleet.claim(H, FP_A, idempotency_key="k1")
    assert (same_key.decision, same_key.regenerated, device_of(same_key).credential_generation) == (
        "same",
        False,
        1,
    )
    new_key = fleet.claim(H, FP_A, idempotency_key="k2")
    assert (new_key.decision, new_key.regenerated) == ("same", True)
    assert (device_of(new_key).id, device_of(new_key).credential_generation) == (device_of(first).id, 2)
    no_key = fleet.claim(H, FP_A)
    assert (no_key.decision, no_key.regenerated, device_of(no_key).credential_generation) == ("same", True, 3)
    # The first key now answers the device as it is: its current credentials, none revoked.
    again = fleet.claim(H, FP_A, idempotency_key="k1")
    assert (again.regenerated, device_of(again).credential_generation) == (False, 3)
    assert fleet.hardware_ids == [H]


def test_without_a_key_the_fingerprint_retry_still_is_the_device() -> None:
    """The domain rule (a lost response never creates H-1) for devices that send no key,
    such as the reference client: the device, with new credentials."""
    fleet = Fleet()
    first = fleet.claim(H, FP_A)
    retry = fleet.claim(H, FP_A)
    assert first.decision == "new"
    assert (retry.decision, retry.regenerated, device_of(retry).id) == ("same", True, device_of(first).id)


def test_on_the_reference_protocol_a_reclaim_before_ready_keeps_the_credentials_the_device_has() -> None:
    """Its client keeps each service's credentials across boots and asks only for those it
    lacks: new ones at each boot would leave it with two generations and its "ready"
    refused. Two sources are still noticed."""
    fleet = Fleet()
    fleet.claim(H, FP_A, protocol=REFERENCE_PROTOCOL, source="10.0.0.1")
    retry = fleet.claim(H, FP_A, protocol=REFERENCE_PROTOCOL, source="10.0.0.1")
    assert (retry.decision, retry.regenerated, device_of(retry).credential_generation) == ("same", False, 1)
    elsewhere = fleet.claim(H, FP_A, protocol=REFERENCE_PROTOCOL, source="10.0.0.2")
    assert (elsewhere.regenerated, elsewhere.two_sources) == (False, True)
    bulk = bulk_fleet(preregistered())
    bulk.claim(H, FP_A, key=KEY, protocol=REFERENCE_PROTOCOL)
    again = bulk.claim(H, FP_A, key=KEY, protocol=REFERENCE_PROTOCOL)
    assert (again.decision, again.regenerated) == ("same", False)


def test_after_ready_a_look_alike_without_the_secret_is_a_clone_and_a_bulk_one_refused() -> None:
    """Once confirmed, only the device secret is the device (today's rule stands)."""
    fleet = Fleet()
    fleet.claim(H, FP_A, idempotency_key="k1")
    fleet.confirm(H)
    assert fleet.claim(H, FP_A, idempotency_key="k1").decision == "clone"
    bulk = bulk_fleet(preregistered())
    bulk.claim(H, FP_A, key=KEY, idempotency_key="k1")
    bulk.confirm(H)
    for idempotency_key in ("k1", "k2", ""):
        verdict = bulk.claim(H, FP_A, key=KEY, idempotency_key=idempotency_key)
        assert verdict.reason == REASON_BULK_ALREADY_CLAIMED


def test_a_device_without_a_fingerprint_is_recognised_before_ready_only_by_its_key() -> None:
    """No fingerprint, nothing to recognise a power-cut board by: it must keep its key."""
    fleet = Fleet()
    fleet.claim(H, "", idempotency_key="k1")
    assert fleet.claim(H, "", idempotency_key="k1").decision == "same"
    assert fleet.claim(H, "", idempotency_key="k2").decision == "clone"


def test_bulk_power_cut_before_ready_gets_the_device_back_with_new_credentials_never_a_lockout() -> None:
    fleet = bulk_fleet(preregistered())
    fleet.claim(H, FP_A, key=KEY, idempotency_key="k1")
    for idempotency_key, generation in (("k2", 2), ("", 3)):
        verdict = fleet.claim(H, FP_A, key=KEY, idempotency_key=idempotency_key)
        assert (verdict.decision, verdict.regenerated) == ("same", True)
        assert (device_of(verdict).id, device_of(verdict).credential_generation) == ("pre-1", generation)
    # The row's key is still needed, and another board is still refused.
    assert fleet.claim(H, FP_A, key="000000000000", idempotency_key="k3").reason == REASON_BULK_NOT_LISTED
    assert fleet.claim(H, FP_A, idempotency_key="k1").reason == REASON_BULK_NOT_LISTED
    assert fleet.claim(H, FP_B, key=KEY).reason == REASON_BULK_ALREADY_CLAIMED


def test_a_disabled_device_reclaimed_before_ready_is_refused_and_keeps_its_credentials() -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A)
    fleet.device(H).disabled = True
    verdict = fleet.claim(H, FP_A, idempotency_key="k2")
    assert (verdict.decision, verdict.reason, verdict.regenerated) == ("refused", REASON_DISABLED, False)
    assert fleet.device(H).credential_generation == 1


def test_two_sources_reclaiming_one_device_before_ready_raise_an_alert() -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A, source="10.0.0.1")
    assert fleet.claim(H, FP_A, source="10.0.0.1").two_sources is False  # the board itself, rebooting
    other = fleet.claim(H, FP_A, source="10.0.0.2")
    assert (other.decision, other.two_sources) == ("same", True)
    # The first source again: two sources still.
    assert fleet.claim(H, FP_A, source="10.0.0.1").two_sources is True
    # A retry with the same key is no reclaim (nothing revoked), and raises nothing.
    keyed = Fleet()
    keyed.claim(H, FP_A, idempotency_key="k1", source="10.0.0.1")
    assert keyed.claim(H, FP_A, idempotency_key="k1", source="10.0.0.2").two_sources is False


def test_the_sources_of_a_device_start_again_when_it_is_reset() -> None:
    fleet = bulk_fleet(preregistered())
    fleet.claim(H, FP_A, key=KEY, source="10.0.0.1")
    device = fleet.device(H)
    assert device.claim_sources == {"10.0.0.1"}
    fleet.family.devices[H] = replace(
        device, lifecycle="preregistered", fingerprint="", credential_generation=2
    )
    taken = fleet.claim(H, FP_A, key=KEY, source="10.0.0.2")
    assert taken.decision == "new"
    assert fleet.device(H).claim_sources == {"10.0.0.2"}
    assert fleet.claim(H, FP_A, key=KEY, source="10.0.0.2").two_sources is False


# ---------------------------------------------------------------- a claim stays in its product

A, B, C = "product-a", "product-b", "product-c"


def other_products_fleet() -> Fleet:
    """One account: product B's listed bulk row H (key KEY), products A (auto) and C (bulk)."""
    return Fleet(Family.of([replace(preregistered(), product_id=B)]), kind="bulk")


@pytest.mark.parametrize("lifecycle", ["preregistered", "registered", "provisioned"])
def test_an_auto_code_naming_another_product_s_hardware_id_gets_a_clone_in_its_own_product(
    lifecycle: Lifecycle,
) -> None:
    fleet = other_products_fleet()
    held = fleet.device(H)
    fleet.family.devices[H] = replace(
        held, lifecycle=lifecycle, fingerprint=FP_A if lifecycle != "preregistered" else ""
    )
    for fingerprint, idempotency_key, secret in (
        (FP_A, "", ""),  # B's board's fingerprint: not A's device
        (FP_B, "k1", ""),
        (KEYRING.fingerprint("cpu-c"), "", presented_secret(held)),  # even with B's device secret
    ):
        verdict = fleet.claim(
            H, fingerprint, secret=secret, idempotency_key=idempotency_key, product=A, kind="auto"
        )
        assert verdict.decision == "clone", verdict
        assert device_of(verdict).product_id == A
        assert device_of(verdict).id != held.id
    assert fleet.device(H) == replace(
        held, lifecycle=lifecycle, fingerprint=FP_A if lifecycle != "preregistered" else ""
    )
    assert fleet.hardware_ids == [H, f"{H}-1", f"{H}-2", f"{H}-3"]
    # A's clone retrying is A's clone, not B's device.
    retry = fleet.claim(H, FP_B, idempotency_key="k1", product=A, kind="auto")
    assert (retry.decision, device_of(retry).hardware_id) == ("same", f"{H}-2")


@pytest.mark.parametrize("lifecycle", ["preregistered", "registered", "provisioned"])
def test_a_bulk_code_naming_another_product_s_hardware_id_gets_the_unlisted_refusal(
    lifecycle: Lifecycle,
) -> None:
    fleet = other_products_fleet()
    held = fleet.device(H)
    fleet.family.devices[H] = replace(
        held, lifecycle=lifecycle, fingerprint=FP_A if lifecycle != "preregistered" else ""
    )
    unlisted = fleet.claim("f0038c1be545", FP_A, key=KEY, product=C)
    for key, secret, idempotency_key in (
        (KEY, "", ""),  # B's row key with C's code
        ("", "", "k1"),
        (KEY, presented_secret(held), ""),
    ):
        verdict = fleet.claim(H, FP_A, key=key, secret=secret, idempotency_key=idempotency_key, product=C)
        assert verdict == unlisted, verdict
    assert fleet.device(H).lifecycle == lifecycle


def test_an_idempotency_key_of_another_product_s_device_is_no_retry() -> None:
    fleet = other_products_fleet()
    fleet.claim(H, FP_A, key=KEY, idempotency_key="k1", product=B)
    assert fleet.claim(H, FP_A, key=KEY, idempotency_key="k1", product=C).reason == REASON_BULK_NOT_LISTED
    assert fleet.claim(H, FP_A, idempotency_key="k1", product=A, kind="auto").decision == "clone"


def test_hardware_ids_differing_only_in_case_are_one_id() -> None:
    """docs/domain.md#identity-rules: unique case-insensitively, as Azure DPS
    registration IDs are; the registry keeps the first case, and H-N keeps it too."""
    fleet = Fleet()
    first = fleet.claim("B827EB8905E5", FP_A)
    assert first.decision == "new"
    other = fleet.claim("b827eb8905e5", FP_B)
    assert other.decision == "clone"
    assert other.device is not None and other.device.hardware_id == "B827EB8905E5-1"
    assert fleet.claim("b827eb8905e5", FP_A).decision == "same"  # the retry, in another case


def test_a_refused_claim_never_makes_its_idempotency_key_the_devices() -> None:
    """A claim refused with a device named (here: disabled) must not make its
    Idempotency-Key that device's: a retry with the key would be 'same' and get the
    device's secret once the operator enables it again."""
    fleet = Fleet()
    fleet.claim(H, FP_A)
    fleet.device(H).disabled = True
    refused = fleet.claim(H, FP_A, secret=presented_secret(fleet.device(H)), idempotency_key="k-1")
    assert refused.decision == "refused"
    assert "k-1" not in fleet.family.idempotent


def test_spellings_made_before_their_head_existed_count_when_the_head_is_claimed() -> None:
    """attack3 G2: a source claims H-1 ... H-k while H does not exist (each a new device
    with no head to count under), then H itself: it meets them, at the rate (429) and at
    the clone limit, and so cannot take H by spelling first; the real board from another
    address then gets H itself. Distinct IDs (sequential dashed MACs) are no spellings of
    each other and stay independent."""
    fleet = Fleet(limits=Limits(clone_rate=PerWindow(3, 60), clone_limit=PerWindow(100, 3600)), now=NOW)
    first = [fleet.claim(f"H-{n}", fp, source=SQUATTER) for n, fp in enumerate(fingerprints(3, "s"), 1)]
    assert [v.decision for v in first] == ["new"] * 3
    squat = fleet.claim("H", FP_A, source=SQUATTER)
    assert (squat.decision, squat.quota) == ("refused", "clone_rate")
    board = fleet.claim("H", FP_B, source=BOARD)
    assert (board.decision, board.hardware_id) == ("new", "H")
    # Past the rate's window, the clone limit still counts them: limit 3, three spellings.
    fleet.limits, fleet.now = replace(fleet.limits, clone_limit=PerWindow(3, 3600)), NOW + 61
    late = fleet.claim("H", fingerprints(1, "late")[0], source=SQUATTER)
    assert (late.decision, late.quota) == ("refused", "clone_limit")
    macs = [
        fleet.claim(f"aa-bb-cc-00-00-{n:02d}", fp, source=SQUATTER)
        for n, fp in enumerate(fingerprints(6, "m"))
    ]
    assert [v.decision for v in macs] == ["new"] * 6


# ---------------------------------------------------------------- x509 attestation


@pytest.mark.parametrize("confirmed", [False, True])
def test_a_certificate_of_h_without_the_secret_is_h_with_new_credentials(confirmed: bool) -> None:
    """A wiped board (its key in a secure element): H itself, re-provisioned, never H-1."""
    fleet = Fleet()
    fleet.claim(H, FP_A, attested=True)
    if confirmed:
        fleet.confirm(H)
    again = fleet.claim(H, FP_B, attested=True, source="198.51.100.7")
    assert (again.decision, again.hardware_id, again.regenerated) == ("same", H, True)
    assert device_of(again).credential_generation == 2
    assert fleet.hardware_ids == [H]
    # The same claim unattested (a code) is a clone, as ever.
    assert fleet.claim(H, FP_B).decision == "clone"


def test_an_attested_retry_with_its_idempotency_key_or_secret_keeps_the_credentials() -> None:
    fleet = Fleet()
    first = fleet.claim(H, FP_A, attested=True, idempotency_key="k1")
    retry = fleet.claim(H, FP_A, attested=True, idempotency_key="k1")
    assert (retry.decision, retry.regenerated) == ("same", False)
    assert device_of(retry).credential_generation == device_of(first).credential_generation == 1
    fleet.confirm(H)
    with_secret = fleet.claim(H, FP_A, attested=True, secret=presented_secret(fleet.device(H)))
    assert (with_secret.decision, with_secret.regenerated) == ("same", False)


def test_an_attested_claim_of_a_disabled_device_is_refused() -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A, attested=True)
    fleet.confirm(H)
    fleet.device(H).disabled = True
    verdict = fleet.claim(H, FP_A, attested=True)
    assert (verdict.decision, verdict.reason, verdict.regenerated) == ("refused", REASON_DISABLED, False)


def test_an_attested_claim_of_h_held_by_another_product_is_a_clone_in_its_own() -> None:
    fleet = Fleet()
    fleet.claim(H, FP_A, product="other")
    verdict = fleet.claim(H, FP_B, attested=True)
    assert (verdict.decision, verdict.hardware_id) == ("clone", f"{H}-1")
