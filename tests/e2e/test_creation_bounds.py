"""Creation bounded where the attacker pays (issue 22, docs/security.md "Creation bounded
where the attacker pays"), end to end on a pipeline of its own (intake, deduplication,
provisioning on a topic prefix of their own, so that the clone rate can be small while the
shared system's boot storms clone by the hundred from 127.0.0.1):

* a squatter that claims a real device's hardware ID first and then clones it fast is
  answered 429 past its clone rate and 403 at its clone limit, while the real board from
  another address is answered 200 at once (as H-N), and the operator sees the alert; other
  spellings of the ID (H-1, H-01, H-1-1 while H exists: its family head) count with it;
* devices named by sequential dashed MACs behind one address (one root, distinct IDs) are
  all answered 200 at once;
* a quota filled from one source raises ``quota_filled`` and its refusals count against
  that source;
* a factory of boards sharing one placeholder serial behind one NAT address, each
  retrying after Retry-After, all get through;
* a squatter ignoring Retry-After is answered its 429 by the intake within the wait,
  without a pipeline trip or a decision row (attack2 F6).

Sources are distinct loopback addresses (127.x.y.z) and, through FLEETREG_TRUSTED_PROXIES,
X-Forwarded-For addresses behind a load balancer on 127.0.0.1. Each run draws fresh ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aiohttp
import pytest

from services.intake.compat.handlers import clone_rate_refusal
from shared.db.pool import Pool
from shared.domain.dedup import reason_clone_limit, reason_clone_rate, reason_max_devices
from tests.e2e.test_strangers import INFORMATION, read
from tests.support.api import Operator
from tests.support.sources import fresh_address, from_address, public_address
from tests.support.system import ServiceProcess, System, metric_sample

pytestmark = pytest.mark.e2e

RATE = 10  # FLEETREG_CLONE_RATE_PER_SOURCE of this pipeline
RATE_WINDOW_S = 1  # FLEETREG_CLONE_RATE_WINDOW_SECONDS: short, to keep the tests fast
CLONE_LIMIT = 30  # FLEETREG_CLONE_LIMIT: a factory's 29 clones fit, a squatter reaches it
PROXY = "127.0.0.1"  # the load balancer: FLEETREG_TRUSTED_PROXIES


@contextlib.asynccontextmanager
async def pipeline(system: System, env: dict[str, str]) -> AsyncIterator[ServiceProcess]:
    """The intake of a pipeline of its own (intake, deduplication, provisioning on a topic
    prefix of their own) with ``env``."""
    prefix = f"{system.env['FLEETREG_TOPIC_PREFIX']}b{uuid.uuid4().hex[:6]}"
    env = {**env, "FLEETREG_TOPIC_PREFIX": prefix}
    names = ("dedup", "provisioning", "intake")
    started: list[ServiceProcess] = []
    try:
        started += await asyncio.gather(
            *(system.add_instance(n, {**env, "FLEETREG_CONSUMER_GROUP": f"{prefix}-{n}"}) for n in names)
        )
        yield started[-1]
    finally:
        for process in [p for p in system.extra if p.env.get("FLEETREG_TOPIC_PREFIX") == prefix]:
            process.stop()
            system.extra.remove(process)


@pytest.fixture(scope="module")
async def intake(system: System) -> AsyncIterator[str]:
    """The device URL of a pipeline of its own with a small clone rate and limit."""
    env = {
        "FLEETREG_CLONE_RATE_PER_SOURCE": str(RATE),
        "FLEETREG_CLONE_RATE_WINDOW_SECONDS": str(RATE_WINDOW_S),
        "FLEETREG_CLONE_LIMIT": str(CLONE_LIMIT),
        "FLEETREG_TRUSTED_PROXIES": f"{PROXY}/32",
    }
    async with pipeline(system, env) as process:
        yield process.url


class Device:
    """A device's registration call as the docs ask: 503 and pending retried; 429 told
    apart (the caller decides whether to wait Retry-After and send it again)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, forwarded_for: str = "") -> None:
        self.session, self.url = session, url
        self.headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        self.calls = 0

    async def register(
        self, code: str, hardware_id: str, cpu_id: str, idempotency_key: str = ""
    ) -> tuple[int, dict[str, Any], int]:
        """(status, body, Retry-After or 0) of one registration call, settled."""
        body = {
            "bulk_identification_code": code,
            "hardware_id": hardware_id,
            "fingerprint": {"cpu_id": cpu_id},
        }
        headers = {**self.headers, "Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        while True:
            self.calls += 1
            async with self.session.post(f"{self.url}/v1/registrations", json=body, headers=headers) as r:
                status, answer, retry = r.status, await r.json(), int(r.headers.get("Retry-After", 0))
            if status == 202:  # pending: poll it
                while status == 202:
                    await asyncio.sleep(0.2)
                    self.calls += 1
                    location = f"{self.url}/v1/registrations/{answer['request_id']}"
                    async with self.session.get(location, headers=self.headers) as r:
                        status, answer = r.status, await r.json()
                        retry = int(r.headers.get("Retry-After", 0))
            if status != 503:
                return status, answer, retry
            await asyncio.sleep(0.5)


async def auto_code(operator: Operator, max_devices: int | None = None) -> tuple[str, str]:
    """(code, product ID) of a fresh auto registration."""
    product = await operator.call(
        "POST", "/v1/products", {"name": f"p-{uuid.uuid4().hex[:8]}", "services": []}, expect=201
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    body: dict[str, Any] = {"product_id": product["id"]}
    if max_devices is not None:
        body["max_devices"] = max_devices
    registration = await operator.call("POST", "/v1/auto-registrations", body, expect=201)
    return registration["bulk_identification_code"], product["id"]


async def alerts(operator: Operator, kind: str) -> list[dict[str, Any]]:
    return list(
        (await operator.call("GET", f"/v1/security-alerts?kind={kind}", expect=200))["security_alerts"]
    )


@pytest.mark.parametrize("behind_proxy", [False, True], ids=["loopback-sources", "x-forwarded-for"])
async def test_a_squatter_pays_for_its_clones_and_the_real_board_is_answered_at_once(
    intake: str, operator: Operator, behind_proxy: bool
) -> None:
    code, product_id = await auto_code(operator)
    h = f"b827eb{uuid.uuid4().hex[:6]}"  # a real board's MAC-derived ID, before it boots
    fresh = partial(public_address, "203.0.113.0/24") if behind_proxy else fresh_address
    squatter_address, board_address = fresh(), fresh()
    while board_address == squatter_address:
        board_address = fresh()

    def client(address: str) -> tuple[aiohttp.ClientSession, str]:
        return (from_address(PROXY), address) if behind_proxy else (from_address(address), "")

    squatter_session, squatter_forwarded = client(squatter_address)
    async with squatter_session:
        squatter = Device(squatter_session, intake, squatter_forwarded)
        started = time.monotonic()
        first = await squatter.register(code, h, "squat-0")
        assert (first[0], first[1]["hardware_id"]) == (200, h)
        # Clones as fast as it can, waiting only what each 429 asks, until the clone limit.
        answers: Counter[int] = Counter()
        throttled: list[tuple[dict[str, Any], int]] = []
        final: dict[str, Any] = {}
        fingerprints = iter(range(1, 10_000))
        while not final:
            burst = await asyncio.gather(
                *(squatter.register(code, h, f"squat-{next(fingerprints)}") for _ in range(RATE + 5))
            )
            answers.update(status for status, _, _ in burst)
            throttled += [(body, retry) for status, body, retry in burst if status == 429]
            final = next((body for status, body, _ in burst if status == 403), {})
            if not final:
                await asyncio.sleep(max(retry for _, _, retry in burst))
        squat_seconds = time.monotonic() - started
    assert set(answers) <= {200, 403, 429}
    assert answers[200] == CLONE_LIMIT, answers  # the clones its limit allows it, no more
    assert final["reason"] == reason_clone_limit(CLONE_LIMIT, 3600)
    assert throttled, "the squatter was never asked to slow down"
    for body, retry in throttled:
        assert (body["error"], body["rule"]) == ("too_many_requests", "clone_rate_per_source")
        assert body["message"] == reason_clone_rate(RATE, RATE_WINDOW_S)
        assert 1 <= retry <= RATE_WINDOW_S and body["retry_after"] == str(retry)
    # It took the squatter several windows: the clone rate makes it pay in time.
    assert squat_seconds >= (CLONE_LIMIT // RATE - 1) * RATE_WINDOW_S * 0.9, squat_seconds

    board_session, board_forwarded = client(board_address)
    async with board_session:
        board = Device(board_session, intake, board_forwarded)
        asked = time.monotonic()
        status, body, _ = await board.register(code, h, "the-real-board")
        board_seconds = time.monotonic() - asked
    assert (status, body["clone"], body["hardware_id"]) == (200, True, f"{h}-{CLONE_LIMIT + 1}")
    assert board_seconds < 3, board_seconds
    assert board.calls == 1  # at once: no 429, no refusal, no retry

    (alert,) = [a for a in await alerts(operator, "hardware_id_squatting") if a["hardware_id"] == h]
    assert (alert["product_id"], alert["source"]) == (product_id, squatter_address)
    assert (alert["count"], alert["window_seconds"]) == (CLONE_LIMIT, 3600)  # the limit, reached last
    assert (alert["listed"], alert["wrong_keys"]) == (None, None)
    print(
        f"\nsquat ({'behind a proxy' if behind_proxy else 'loopback'}): {squatter.calls} calls in "
        f"{squat_seconds:.1f} s to reach the clone limit of {CLONE_LIMIT} "
        f"(rate {RATE} per {RATE_WINDOW_S} s); the real board: {board.calls} call, {board_seconds:.2f} s"
    )


async def test_suffixed_spellings_from_one_address_are_held_to_the_rate_of_their_head(
    intake: str, operator: Operator
) -> None:
    """attack2 F1: the literal IDs H-1, H-01, H-1-1... (each "new", its own claimed ID) are
    counted with H while H exists (their family head): past the rate 429 and the squatting
    alert; the real board from another address is answered at once."""
    code, product_id = await auto_code(operator)
    h = f"b827eb{uuid.uuid4().hex[:6]}"
    spellings = [
        spelling
        for n in range(1, RATE + 1)
        for spelling in (f"{h}-{n + 1}", f"{h.upper()}-0{n}", f"{h}-1-{n}")
    ]
    squatter_address, board_address = fresh_address(), fresh_address()
    async with from_address(squatter_address) as squatter_session:
        squatter = Device(squatter_session, intake)
        for n, spelling in enumerate((h, f"{h}-1")):
            first = await squatter.register(code, spelling, f"squat-{n}")
            assert (first[0], first[1]["hardware_id"]) == (200, spelling)
        burst = await asyncio.gather(
            *(squatter.register(code, spelling, f"squat-{spelling}") for spelling in spellings)
        )
    answers = Counter(status for status, _, _ in burst)
    assert set(answers) == {200, 429}, answers
    # Within the window (1 s) the rate's worth for the whole family; the burst of 30 takes
    # longer only on a very slow machine, which lets through a window's worth more.
    assert answers[200] < len(spellings) // 2, answers
    for status, body, retry in burst:
        if status == 429:
            assert (body["rule"], body["message"]) == (
                "clone_rate_per_source",
                reason_clone_rate(RATE, RATE_WINDOW_S),
            )
            assert 1 <= retry <= RATE_WINDOW_S
    (alert,) = [a for a in await alerts(operator, "hardware_id_squatting") if a["product_id"] == product_id]
    assert (alert["hardware_id"], alert["source"]) == (h, squatter_address)

    taken = {h.lower(), f"{h}-1"} | {
        body["hardware_id"].lower() for status, body, _ in burst if status == 200
    }
    expected = next(f"{h}-{n}" for n in range(1, 100) if f"{h}-{n}".lower() not in taken)
    async with from_address(board_address) as board_session:
        board = Device(board_session, intake)
        asked = time.monotonic()
        status, body, _ = await board.register(code, h, "the-real-board")
        board_seconds = time.monotonic() - asked
    assert (status, body["clone"], body["hardware_id"]) == (200, True, expected)
    assert board.calls == 1 and board_seconds < 3, (board.calls, board_seconds)


async def test_sequential_dashed_macs_behind_one_address_are_all_created_at_once(
    intake: str, operator: Operator
) -> None:
    """Devices named by dashed MACs from one factory (one root, no device holds their
    parent ID): distinct IDs, each with an allowance of its own, so four times the rate's
    worth from one address in one burst are all answered 200."""
    code, _ = await auto_code(operator)
    oui = "-".join(uuid.uuid4().hex[i : i + 2] for i in range(0, 6, 2))
    macs = [f"{oui}-00-00-{n:02d}" for n in range(4 * RATE)]
    async with from_address(fresh_address()) as nat:
        factory = Device(nat, intake)
        answers = await asyncio.gather(*(factory.register(code, mac, f"cpu-{mac}") for mac in macs))
    assert [(status, body.get("hardware_id")) for status, body, _ in answers] == [(200, mac) for mac in macs]


async def test_a_quota_filled_from_one_source_raises_an_alert_and_counts_its_refusals(
    intake: str, operator: Operator, system: System, session: aiohttp.ClientSession
) -> None:
    code, product_id = await auto_code(operator, max_devices=5)
    filler = public_address("203.0.113.0/24")
    intake_ops = next(p for p in system.extra if p.url == intake).ops_url
    async with from_address(PROXY) as proxied:
        device = Device(proxied, intake, filler)
        created = [await device.register(code, f"q{uuid.uuid4().hex[:8]}", f"c{i}") for i in range(5)]
        assert [status for status, _, _ in created] == [200] * 5
        counted_before = await metric_sample(session, intake_ops, "fleetreg_throttle_refusals_total")
        refused = [await device.register(code, f"q{uuid.uuid4().hex[:8]}", f"d{i}") for i in range(3)]
        counted = (
            await metric_sample(session, intake_ops, "fleetreg_throttle_refusals_total") - counted_before
        )
    assert {(status, body["reason"]) for status, body, _ in refused} == {(403, reason_max_devices(5))}
    assert counted == 3  # each counted against the source, as a guess is
    (alert,) = [a for a in await alerts(operator, "quota_filled") if a["product_id"] == product_id]
    assert (alert["source"], alert["count"], alert["window_seconds"]) == (filler, 5, None)
    assert alert["hardware_id"] == created[-1][1]["hardware_id"]  # the claim that took the last place


async def test_a_factory_of_boards_sharing_one_serial_behind_one_nat_all_get_through(
    intake: str, operator: Operator
) -> None:
    code, _ = await auto_code(operator)
    placeholder = f"SERIAL{uuid.uuid4().hex[:6]}"
    boards = 30
    async with from_address(fresh_address()) as nat:
        factory = Device(nat, intake)

        async def boot(board: int) -> tuple[str, int]:
            retries = 0
            attempt = str(uuid.uuid4())  # one key per boot, the same on every retry (docs/device-api.md)
            while True:
                status, body, retry = await factory.register(code, placeholder, f"board-{board}", attempt)
                if status != 429:
                    assert status == 200, body
                    return body["hardware_id"], retries
                retries += 1
                await asyncio.sleep(retry)

        started = time.monotonic()
        booted = await asyncio.gather(*(boot(b) for b in range(boards)))
        seconds = time.monotonic() - started
    hardware_ids = sorted(hardware_id for hardware_id, _ in booted)
    assert hardware_ids == sorted([placeholder] + [f"{placeholder}-{n}" for n in range(1, boards)])
    assert sum(retries for _, retries in booted) > 0  # slower, not refused
    print(
        f"\nfactory: {boards} boards sharing one serial behind one address: {factory.calls} calls, "
        f"{seconds:.1f} s (rate {RATE} per {RATE_WINDOW_S} s)"
    )


async def test_the_reference_protocol_tells_a_squatter_to_boot_again_in_its_own_words(
    intake: str, operator: Operator
) -> None:
    """Step 2 past the clone rate: a refusal naming the wait (the client logs it and tries at
    its next boot), not counted against the source; another address is answered at once."""
    code, _ = await auto_code(operator)
    h = f"dca632{uuid.uuid4().hex[:6]}"

    async def boot(client: aiohttp.ClientSession, cpu: str) -> dict[str, str]:
        body = {"BulkIdentificationCode": code, "HardwareId": h, "CPUId": cpu, "MACAddress": "m"}
        async with client.post(f"{intake}{INFORMATION}", json=body) as r:
            assert read(await r.text())["status"] == "true"
        path = f"/apv/v27/bulk/registration/device/friendly/configuration/{code}/{h}/"
        async with client.get(f"{intake}{path}") as r:
            return read(await r.text())

    answers: list[dict[str, str]] = []
    async with from_address(fresh_address()) as squatter:
        # Until the first refusal: the rate's worth within its window (more only on a machine
        # so slow that these calls outlast the window).
        while not answers or answers[-1]["status"] != "false":
            answers.append(await boot(squatter, f"squat-{len(answers)}"))
            assert len(answers) <= 3 * RATE, answers
    assert [a["status"] for a in answers[:-1]] == ["true"] + ["reset"] * (len(answers) - 2)
    assert len(answers) > RATE
    assert answers[-1]["reason"] in {clone_rate_refusal(n) for n in range(1, RATE_WINDOW_S + 1)}
    async with from_address(fresh_address()) as board:
        clone = await boot(board, "the-real-board")
    assert clone == {"status": "reset", "HardwareId": f"{h}-{len(answers) - 1}"}


async def test_one_hardware_id_squatted_in_any_case_is_one_alert(intake: str, operator: Operator) -> None:
    """attack2 F7: a squatter typing one hardware ID in changing case past its clone rate
    raises one hardware_id_squatting alert, named as the registry spells the ID."""
    code = (await operator.product())["bulk_identification_code"]
    hardware_id = "AbC" + uuid.uuid4().hex[:9]
    async with from_address(fresh_address()) as session:
        squatter = Device(session, intake)
        statuses = [
            (await squatter.register(code, hardware_id.upper() if n % 2 else hardware_id.lower(), f"s{n}"))[0]
            for n in range(RATE + 3)
        ]
    assert 429 in statuses
    alerts = (await operator.call("GET", "/v1/security-alerts", expect=200))["security_alerts"]
    assert [(a["kind"], a["hardware_id"]) for a in alerts] == [("hardware_id_squatting", hardware_id.lower())]


HOLD_RATE = 5  # the clone rate of the pipeline below
HOLD_WINDOW_S = 5  # its window: long enough to look at a held flood, short enough to wait out
FLOOD = 300  # claims that ignore Retry-After
FLOOD_CONCURRENCY = 30


@pytest.fixture(scope="module")
async def holding_intake(system: System) -> AsyncIterator[ServiceProcess]:
    """The intake of a pipeline with a clone rate of 5 per 5 s."""
    env = {
        "FLEETREG_CLONE_RATE_PER_SOURCE": str(HOLD_RATE),
        "FLEETREG_CLONE_RATE_WINDOW_SECONDS": str(HOLD_WINDOW_S),
    }
    async with pipeline(system, env) as process:
        yield process


async def decision_rows(pool: Pool, hardware_id: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM registration_decisions WHERE lower(claimed_hardware_id) = lower($1)",
        hardware_id,
    )
    return count


async def test_a_squatter_ignoring_retry_after_is_answered_by_the_intake_without_a_row(
    holding_intake: ServiceProcess, operator: Operator, pool: Pool, session: aiohttp.ClientSession
) -> None:
    """attack2 F6: past the clone rate, the same source's claims of the ID are answered 429
    by the intake from memory (no pipeline trip, no decision row) until the wait ends; a
    claim proving the existing device, and another address, are answered at once."""
    url = holding_intake.url
    code, _ = await auto_code(operator)
    h = f"b827eb{uuid.uuid4().hex[:6]}"
    throttled_before = await metric_sample(
        session, holding_intake.ops_url, "fleetreg_throttled_total", limit="clone_rate_per_source"
    )
    async with from_address(fresh_address()) as squatter_session:
        squatter = Device(squatter_session, url)
        status, first, _ = await squatter.register(code, h, "squat-0")
        assert (status, first["hardware_id"]) == (200, h)
        gate = asyncio.Semaphore(FLOOD_CONCURRENCY)

        async def claim(n: int) -> tuple[int, dict[str, Any], int]:
            async with gate:
                return await squatter.register(code, h, f"squat-{n}")

        started = time.monotonic()
        flood = await asyncio.gather(*(claim(n) for n in range(1, FLOOD + 1)))
        flood_seconds = time.monotonic() - started
        rows = await decision_rows(pool, h)

        answers = Counter(status for status, _, _ in flood)
        assert set(answers) == {200, 429}, answers
        for status, body, retry in flood:
            if status == 429:
                assert (body["rule"], body["message"]) == (
                    "clone_rate_per_source",
                    reason_clone_rate(HOLD_RATE, HOLD_WINDOW_S),
                )
                assert 1 <= retry <= HOLD_WINDOW_S and body["retry_after"] == str(retry)
        # The rate's worth per window, and the claims in flight when the first refusal came
        # back; every other claim was answered by the intake without a pipeline trip or a row.
        windows = math.ceil(flood_seconds / HOLD_WINDOW_S) + 1
        assert answers[200] <= HOLD_RATE * windows, (answers, flood_seconds)
        assert rows <= 1 + windows * (HOLD_RATE + FLOOD_CONCURRENCY), (rows, flood_seconds)
        throttled = (
            await metric_sample(
                session, holding_intake.ops_url, "fleetreg_throttled_total", limit="clone_rate_per_source"
            )
            - throttled_before
        )
        assert throttled >= FLOOD + 1 - rows, (throttled, rows)

        # Still inside the wait: a spelling of H (its family head) and the reference
        # protocol's step 2 from the same address are answered without a row either.
        for spelling in (f"{h}-01", h.upper()):
            status, body, retry = await squatter.register(code, spelling, f"squat-{spelling}")
            assert (status, body["rule"]) == (429, "clone_rate_per_source") and retry >= 1
        # Its request ID names no decision: a poll says pending.
        async with squatter_session.get(f"{url}/v1/registrations/{body['request_id']}") as r:
            assert r.status == 202
        reference = {"BulkIdentificationCode": code, "HardwareId": h, "CPUId": "squat-ref", "MACAddress": "m"}
        async with squatter_session.post(f"{url}{INFORMATION}", json=reference) as r:
            assert read(await r.text())["status"] == "true"
        path = f"/apv/v27/bulk/registration/device/friendly/configuration/{code}/{h}/"
        async with squatter_session.get(f"{url}{path}") as r:
            step2 = read(await r.text())
        assert step2["status"] == "false"
        assert step2["reason"] in {clone_rate_refusal(n) for n in range(1, HOLD_WINDOW_S + 1)}
        assert await decision_rows(pool, h) == rows

        # The existing device proves itself with its secret: never held by the clone rate.
        proven = {
            "bulk_identification_code": code,
            "hardware_id": h,
            "fingerprint": {"cpu_id": "squat-0"},
            "device_secret": first["device_secret"],
        }
        async with squatter_session.post(f"{url}/v1/registrations", json=proven) as r:
            same = await r.json()
            assert (r.status, same["decision"], same["device_id"]) == (200, "same", first["device_id"])

        # Another address's claim of H is answered at once.
        async with from_address(fresh_address()) as board_session:
            board = Device(board_session, url)
            status, body, _ = await board.register(code, h, "the-real-board")
        assert (status, body["clone"], board.calls) == (200, True, 1)

        # After the wait, the squatter's claims are decided (and created) again.
        await asyncio.sleep(max(retry for _, _, retry in flood) + 0.2)
        status, body, _ = await squatter.register(code, h, "squat-after")
    assert (status, body["clone"]) == (200, True), body
    print(
        f"\nflood ignoring Retry-After: {FLOOD} claims in {flood_seconds:.2f} s, {answers[200]} created, "
        f"{rows} decision rows (rate {HOLD_RATE} per {HOLD_WINDOW_S} s)"
    )
