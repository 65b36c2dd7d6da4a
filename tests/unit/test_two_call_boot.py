"""The two-call boot's rules, against a fake registry read: the include flag, when the
files go out inline (the device secret's rule), and that they are the per-file download's
bytes. The end-to-end tests are tests/e2e/test_two_call_boot.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from dataclasses import replace
from typing import Any, cast

import pytest

from services.intake import handlers, views
from services.intake.device_cache import DeviceCache
from services.intake.handlers import Answer
from shared.db.files import DeviceFiles, RecordedFile, ServiceFile
from shared.db.pool import Pool
from shared.domain.credentials import Keyring
from shared.domain.dedup import (
    REASON_BULK_NOT_LISTED,
    reason_clone_limit,
    reason_clone_rate,
    reason_max_devices,
)
from shared.domain.provisioning import ServiceRecipe, file_spec, registration_data_file, render
from shared.errors import InvalidInput, NotFound
from shared.events import RegistrationOutcome
from shared.throttle import target_of

KEYRING = Keyring(b"unit-test-key")
DEVICE_ID = "3f0c7a4e-2b1d-4c55-9e61-0a8d2f7b9c10"
UID = "80:00:00:00:01:00:00:01"
POOL: Any = None  # the registry read is replaced (the ``reads`` fixture)


def registry(lifecycle: str = "registered", disabled: bool = False, rendered: bool = True) -> DeviceFiles:
    """The device as the registry answers it: one ssh file, recorded with its true digest."""
    recipe = ServiceRecipe("5E0A1C2E-0000-4000-8000-000000000001", 2, "ssh", "ssh", 28, 22)
    content = render(file_spec(recipe, UID, "b827eb8905e5", "b827eb8905e5"), KEYRING.service_password(UID, 1))
    recorded = RecordedFile(1, UID, "02-ssh.conf", len(content), hashlib.sha256(content).hexdigest())
    return DeviceFiles(
        device_id=DEVICE_ID,
        hardware_id="b827eb8905e5",
        name="b827eb8905e5",
        lifecycle=lifecycle,
        disabled=disabled,
        credential_generation=1,
        services=(ServiceFile(recipe, recorded if rendered else None, UID),),
    )


def ready(generation: int = 1) -> Answer:
    return Answer(
        "ready",
        "0190f3c2-7a1b-7c3d-8e4f-5a6b7c8d9e0f",
        device_id=DEVICE_ID,
        hardware_id="b827eb8905e5",
        claimed_hardware_id="b827eb8905e5",
        decision="new",
        device_secret=KEYRING.device_secret(DEVICE_ID, generation),
    )


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[DeviceFiles | None]:
    """What the registry read answers next (and a record that it was asked)."""
    answers: list[DeviceFiles | None] = []

    async def one_device_files(pool: Any, device_id: str) -> DeviceFiles | None:
        assert device_id == DEVICE_ID
        return answers.pop(0)

    monkeypatch.setattr(handlers.files, "one_device_files", one_device_files)
    return answers


@pytest.mark.parametrize(("values", "expected"), [([], False), (["files"], True)])
def test_the_include_flag_is_absent_or_files(values: list[str], expected: bool) -> None:
    assert handlers.parse_include(values) is expected


@pytest.mark.parametrize("values", [[""], ["FILES"], ["manifest"], ["files", "files"], ["files,manifest"]])
def test_any_other_include_is_refused(values: list[str]) -> None:
    with pytest.raises(InvalidInput) as refused:
        handlers.parse_include(values)
    assert (refused.value.field, refused.value.rule) == ("include", "enum=files")


async def test_a_registered_device_gets_its_files_as_the_download_renders_them(
    reads: list[DeviceFiles | None],
) -> None:
    reads.append(registry())
    answer = await handlers.with_files(POOL, KEYRING, ready())
    assert answer.device_secret == ready().device_secret and answer.boot is not None
    device = answer.boot.device
    [inline] = answer.boot.files
    assert inline.content == handlers.file_content(KEYRING, device, "02-ssh.conf")

    body = json.loads(views.native_view(answer, 2, "http://h").text)
    [item] = body["manifest"]["files"]
    assert item["content"].encode("ascii") == inline.content
    assert item["size"] == len(inline.content)
    assert item["sha256"] == hashlib.sha256(inline.content).hexdigest()
    assert item["url"] == f"http://h/v1/devices/{DEVICE_ID}/files/02-ssh.conf"
    manifest = json.loads(
        views.manifest_view(device, handlers.manifest(device), handlers.data_file(device), "http://h").text
    )
    assert [{k: v for k, v in f.items() if k != "content"} for f in body["manifest"]["files"]] == manifest[
        "files"
    ]


async def test_the_enrichment_data_file_goes_out_last_with_the_services_files(
    reads: list[DeviceFiles | None],
) -> None:
    hook_data = {"site": 'Berlin "North"', "note": "a\nb"}
    data = registration_data_file(DEVICE_ID, hook_data)
    reads.append(replace(registry(), hook_data=json.dumps(hook_data)))
    answer = await handlers.with_files(POOL, KEYRING, ready())
    assert answer.boot is not None and answer.boot.data == data
    device = answer.boot.device
    assert handlers.file_content(KEYRING, device, data.name) == data.content

    body = json.loads(views.native_view(answer, 2, "http://h").text)
    ssh, item = body["manifest"]["files"]
    assert ssh["name"] == "02-ssh.conf"
    assert item == {
        "name": "registration-data.conf",
        "provisioning_id": data.provisioning_id,
        "service": "registration-data",
        "type": "data",
        "type_code": 0,
        "port": 0,
        "size": data.size,
        "sha256": hashlib.sha256(data.content).hexdigest(),
        "url": f"http://h/v1/devices/{DEVICE_ID}/files/registration-data.conf",
        "content": data.content.decode("ascii"),
    }
    manifest = json.loads(
        views.manifest_view(device, handlers.manifest(device), handlers.data_file(device), "http://h").text
    )
    assert [{k: v for k, v in f.items() if k != "content"} for f in body["manifest"]["files"]] == manifest[
        "files"
    ]


async def test_without_hook_data_there_is_no_data_file(reads: list[DeviceFiles | None]) -> None:
    reads.append(registry())
    answer = await handlers.with_files(POOL, KEYRING, ready())
    assert answer.boot is not None and answer.boot.data is None
    with pytest.raises(NotFound):
        handlers.file_content(KEYRING, answer.boot.device, "registration-data.conf")
    manifest = json.loads(
        views.manifest_view(answer.boot.device, handlers.manifest(answer.boot.device), None, "h").text
    )
    assert [f["name"] for f in manifest["files"]] == ["02-ssh.conf"]


@pytest.mark.parametrize(
    "found",
    [registry(lifecycle="provisioned"), registry(disabled=True), registry(lifecycle="preregistered"), None],
    ids=["confirmed", "disabled", "reset", "gone"],
)
async def test_no_files_and_no_secret_when_the_secret_may_not_go_out(
    reads: list[DeviceFiles | None], found: DeviceFiles | None
) -> None:
    reads.append(found)
    answer = await handlers.with_files(POOL, KEYRING, ready())
    assert answer == dataclasses.replace(ready(), device_secret="")


async def test_files_not_rendered_yet_leave_the_answer_as_it_is(reads: list[DeviceFiles | None]) -> None:
    reads.append(registry(rendered=False))
    assert await handlers.with_files(POOL, KEYRING, ready()) == ready()


async def test_files_go_out_only_beside_the_secret_of_the_current_generation(
    reads: list[DeviceFiles | None],
) -> None:
    # An answer of an earlier generation (a later claim reclaimed the device before
    # "ready"): no files, and no secret either (attack2 F10).
    reads.append(registry())
    assert await handlers.with_files(POOL, KEYRING, ready(generation=2)) == replace(
        ready(generation=2), device_secret=""
    )


def listening_cache() -> DeviceCache:
    cache = DeviceCache(ttl_s=60)
    cache.listening(True)
    return cache


async def test_the_ready_after_a_two_call_answer_authenticates_without_a_second_read(
    reads: list[DeviceFiles | None],
) -> None:
    """The read behind the inline files is kept in the device cache: the device's next
    call, its ready, needs no registry round trip (``reads`` would fail on a second)."""
    cache = listening_cache()
    reads.append(registry())
    answer = await handlers.with_files(POOL, KEYRING, ready(), cache)
    assert answer.boot is not None and not reads
    device = await handlers.authenticate(
        POOL, KEYRING, DEVICE_ID.upper(), f"Bearer {ready().device_secret}", cache
    )
    assert device.id == DEVICE_ID


async def test_the_inline_files_are_never_answered_from_the_cache(reads: list[DeviceFiles | None]) -> None:
    """The release rule needs the lifecycle as it is now: a cached ``registered`` device
    that has confirmed since gets neither files nor secret."""
    cache = listening_cache()
    cache.put(DEVICE_ID, registry(), cache.generation)
    reads.append(registry(lifecycle="provisioned"))
    assert await handlers.with_files(POOL, KEYRING, ready(), cache) == dataclasses.replace(
        ready(), device_secret=""
    )


async def test_a_read_overtaken_by_an_invalidation_is_not_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An operator's disable or reset that arrives while the read is under way may be
    newer than what the read found: it is not kept (DeviceCache.put's generation)."""
    cache = listening_cache()

    async def one_device_files(pool: Any, device_id: str) -> DeviceFiles | None:
        cache.apply(f"device:{DEVICE_ID}")  # the notification arrives during the read
        return registry()

    monkeypatch.setattr(handlers.files, "one_device_files", one_device_files)
    assert (await handlers.with_files(POOL, KEYRING, ready(), cache)).boot is not None
    assert cache.get(DEVICE_ID) is None


@pytest.mark.parametrize("status", ["pending", "refused", "unknown"])
async def test_other_answers_are_not_changed_and_read_nothing(
    reads: list[DeviceFiles | None], status: str
) -> None:
    answer = Answer(status, "r", reason="x")
    assert await handlers.with_files(POOL, KEYRING, answer) == answer


def test_without_the_flag_the_ready_answer_is_what_it_was() -> None:
    body = json.loads(views.native_view(ready(), 2, "http://h").text)
    assert set(body) == {
        "status",
        "request_id",
        "device_id",
        "hardware_id",
        "claimed_hardware_id",
        "clone",
        "decision",
        "manifest_url",
        "device_secret",
    }


# ---------------------------------------------------------------- refusals for now (issue 22)


@pytest.mark.parametrize(("retry_after", "expected"), [(7, "7"), (0, "2")])
async def test_a_clone_rate_refusal_is_a_429_with_retry_after_also_when_polled(
    retry_after: int, expected: str
) -> None:
    """The live answer carries the wait; a poll of the stored decision has only the reason,
    and is told the pending interval: either way the device sends its registration again."""
    reason = reason_clone_rate(20, 60)
    answer = Answer("refused", "req-1", reason=reason, retry_after=retry_after)
    response = views.native_view(answer, 2, "http://h")
    assert (response.status, response.headers["Retry-After"]) == (429, expected)
    body = json.loads(response.text)
    assert body == {
        "error": "too_many_requests",
        "message": reason,
        "rule": "clone_rate_per_source",
        "retry_after": expected,
        "reason_code": "throttled",
        "request_id": "req-1",
    }
    # a factory behind one NAT retries it: not counted
    assert await handlers.counted_refusal(NO_POOL, CLAIM, answer, 0) is None


# counted_refusal reads the registry only for a revoked code's age: these answers need none.
NO_POOL = cast(Pool, None)
CLAIM = handlers.RegistrationInput(bulk_identification_code=str(uuid.uuid4()), hardware_id="H")


async def test_quota_and_clone_limit_refusals_are_403_and_count_against_the_source() -> None:
    code = CLAIM.bulk_identification_code
    expected = {
        reason_max_devices(5): target_of("code", code),
        reason_clone_limit(100, 3600): target_of("hardware", code, "h"),
    }
    for reason, target in expected.items():
        answer = Answer("refused", "req-1", reason=reason)
        assert views.native_view(answer, 2, "http://h").status == 403
        assert await handlers.counted_refusal(NO_POOL, CLAIM, answer, 0) == handlers.Counted(target)
    disabled = Answer("refused", "req-1", reason="device disabled by the operator")
    assert await handlers.counted_refusal(NO_POOL, CLAIM, disabled, 0) is None


async def test_a_bulk_claim_refused_not_listed_counts_on_the_source_only() -> None:
    """Its (source, code and hardware ID) pair was counted before it was published, for a
    listed hardware ID (an unlisted one gets none): not counted there twice."""
    answer = Answer("refused", "req-1", reason=REASON_BULK_NOT_LISTED)
    assert await handlers.counted_refusal(NO_POOL, CLAIM, answer, 0) == handlers.Counted(None)


def test_a_native_claim_of_only_placeholder_identifiers_has_no_fingerprint() -> None:
    """attack2 F10: an unprogrammed MAC and a CPU ID of zeros are no fingerprint (the claim is
    recognised by its Idempotency-Key alone); one real identifier makes one as before."""

    def fingerprint(cpu_id: str, mac: str) -> str:
        registration = handlers.RegistrationInput("C", "H", cpu_id=cpu_id, mac=mac)
        return handlers.to_event(registration, KEYRING, protocol="native").fingerprint

    assert fingerprint("0000000000000000", "00:00:00:00:00:00") == ""
    assert fingerprint("", "FF-FF-FF-FF-FF-FF") == ""
    assert fingerprint("0000000000000000", "b8:27:eb:89:05:e5") == KEYRING.fingerprint(
        "0000000000000000", "b8:27:eb:89:05:e5"
    )


def test_a_superseded_outcome_is_ready_without_a_secret() -> None:
    """attack2 F10: an outcome whose generation a later claim replaced carries no secret."""
    outcome = RegistrationOutcome(
        request_id=str(uuid.uuid4()),
        status="ready",
        device_id=DEVICE_ID,
        hardware_id="H",
        decision="same",
        credential_generation=2,
    )
    current = handlers._from_outcome(outcome, "H", KEYRING)
    assert current.device_secret == KEYRING.device_secret(DEVICE_ID, 2)
    superseded = handlers._from_outcome(replace(outcome, superseded=True), "H", KEYRING)
    assert (superseded.status, superseded.device_id, superseded.device_secret) == ("ready", DEVICE_ID, "")
