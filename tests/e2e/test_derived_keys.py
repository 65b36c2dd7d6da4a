"""Derived-key attestation (issue 25, docs/device-identity.md) on the running services, the
real broker and the real database: the operator's group keys (shown once, derived,
rotated), devices proving their keys (the two-call boot, a clockless board, a copied image),
the attacker's cases, the reference protocol's refusal, the documented sh computation
against the server, and no key in any log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from shared.domain.admission import REASON_UNKNOWN_CODE
from shared.domain.derived_keys import (
    REASON_NO_PROOF,
    REASON_PROOF_TIME,
    REASON_REFERENCE_PROTOCOL,
    REASON_REPLAYED_PROOF,
    REASON_WRONG_PROOF,
)
from tests.support.api import Operator, provision
from tests.support.sources import fresh_address, from_address
from tests.support.system import LOGS, ROOT, ServiceProcess, System

pytestmark = pytest.mark.e2e

DOC = ROOT / "docs" / "device-identity.md"
DEFAULTS = {  # the shipped limits, whatever the shared system uses
    "FLEETREG_LIMIT_REFUSALS_PER_SOURCE": "30/minute;300/hour;1000/day",
    "FLEETREG_LIMIT_REFUSALS_PER_TARGET": "10/minute",
}


def derive(group_key: str, hardware_id: str) -> str:
    """Azure DPS's formula, written here from its documentation (not imported)."""
    return base64.b64encode(
        hmac.digest(base64.b64decode(group_key), hardware_id.strip().encode(), hashlib.sha256)
    ).decode()


def proof(
    device_key: str, hardware_id: str, *, expires: int | None = None, nonce: str = ""
) -> dict[str, Any]:
    expires = int(time.time()) + 300 if expires is None else expires
    nonce = nonce or os.urandom(16).hex()
    text = f"fleetreg-proof-v1\n{hardware_id}\n{expires}\n{nonce}".encode()
    mac = hmac.new(base64.b64decode(device_key), text, hashlib.sha256).hexdigest()
    return {"expires": expires, "nonce": nonce, "mac": mac}


async def derived_product(operator: Operator) -> dict[str, Any]:
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"dk-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        expect=201,
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    return await operator.call(
        "POST",
        "/v1/auto-registrations",
        {"product_id": product["id"], "attestation": "derived_key"},
        expect=201,
    )


async def claim(
    session: aiohttp.ClientSession,
    url: str,
    code: str,
    hardware_id: str,
    shown: dict[str, Any] | None,
    *,
    cpu_id: str = "c",
    mac: str = "m",
    secret: str = "",
    idempotency_key: str = "",
    include: bool = False,
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    """One registration call (polled to its outcome): status, body, headers."""
    body: dict[str, Any] = {
        "bulk_identification_code": code,
        "hardware_id": hardware_id,
        "fingerprint": {"cpu_id": cpu_id, "mac": mac},
    }
    if shown is not None:
        body["proof"] = shown
    if secret:
        body["device_secret"] = secret
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    query = "?include=files" if include else ""
    async with session.post(f"{url}/v1/registrations{query}", json=body, headers=headers) as response:
        status, answer, got = response.status, await response.json(), response.headers
    deadline = time.monotonic() + 30
    while answer.get("status") == "pending" and time.monotonic() < deadline:
        await _sleep()
        async with session.get(f"{url}/v1/registrations/{answer['request_id']}{query}") as response:
            status, answer, got = response.status, await response.json(), response.headers
    return status, answer, got


async def _sleep() -> None:
    await asyncio.sleep(0.2)


def doc_block(marker: str) -> str:
    """The fenced block of docs/device-identity.md whose first line is ``marker``."""
    for block in re.findall(r"```(?:sh|python)\n(.*?)```", DOC.read_text(), flags=re.S):
        if block.startswith(marker):
            return str(block)
    raise AssertionError(f"no block starting {marker!r} in {DOC}")


def shell(script: str) -> str:
    sh = shutil.which("dash") or "/bin/sh"
    functions = doc_block("# fleetreg derived keys: POSIX sh")
    done = subprocess.run(
        [sh, "-c", functions + script], capture_output=True, text=True, check=True, timeout=20
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
async def defaults(system: System) -> AsyncIterator[ServiceProcess]:
    """An intake instance with the shipped refusal limits (the shared system's are high)."""
    async with system.instance("intake", DEFAULTS) as process:
        yield process


async def test_a_derived_key_product_from_creation_to_a_clone(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    log_offsets = {path: path.stat().st_size for path in LOGS.glob("*.log")}
    # An unknown mode is refused with a clear reason (x509: tests/e2e/test_x509_attestation.py).
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"x-{uuid.uuid4().hex[:6]}", "services": [{"type": "ssh", "port": 22}]},
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    refused = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product["id"], "attestation": "tpm"}, expect=400
    )
    assert refused["field"] == "attestation" and "must be one of" in refused["message"]
    code_mode = await operator.call(
        "POST", "/v1/auto-registrations", {"product_id": product["id"]}, expect=201
    )
    assert code_mode["attestation"] == "code" and "primary_key" not in code_mode

    created = await derived_product(operator)
    registration_id, code = created["id"], created["bulk_identification_code"]
    primary, secondary = created["primary_key"], created["secondary_key"]
    assert created["attestation"] == "derived_key"
    assert (
        len(base64.b64decode(primary)) == 32
        and len(base64.b64decode(secondary)) == 32
        and primary != secondary
    )
    # Shown once: never in a later answer.
    shown = await operator.call("GET", f"/v1/auto-registrations/{registration_id}", expect=200)
    assert shown["attestation"] == "derived_key" and "primary_key" not in shown
    assert primary not in str(await operator.call("GET", "/v1/auto-registrations", expect=200))

    # The server derives as Azure DPS does, and as the documented sh does.
    hardware_id = f"Dk-{uuid.uuid4().hex[:10]}"
    derived = await operator.call(
        "POST",
        f"/v1/auto-registrations/{registration_id}/derive-key",
        {"hardware_id": hardware_id},
        expect=200,
    )
    device_key = derived["device_key"]
    assert device_key == derive(primary, hardware_id)
    assert shell(f'derive_key "{primary}" "{hardware_id}"') == device_key
    second = await operator.call(
        "POST",
        f"/v1/auto-registrations/{registration_id}/derive-key",
        {"hardware_id": f"  {hardware_id}\n", "key": "secondary"},
        expect=200,
    )
    assert second["hardware_id"] == hardware_id and second["device_key"] == derive(secondary, hardware_id)

    # The device boots in two calls with a proof computed by the documented sh.
    expires, nonce = int(time.time()) + 300, os.urandom(16).hex()
    mac = shell(f'proof_mac "{device_key}" "{hardware_id}" "{expires}" "{nonce}"')
    assert mac == proof(device_key, hardware_id, expires=expires, nonce=nonce)["mac"]
    first_key = str(uuid.uuid4())
    status, board, _ = await claim(
        session,
        system.device_url,
        code,
        hardware_id,
        {"expires": expires, "nonce": nonce, "mac": mac},
        idempotency_key=first_key,
        include=True,
    )
    assert status == 200 and board["decision"] == "new" and board["manifest"]["files"], board
    # A retry with the same Idempotency-Key and a new proof is the same device, its secret again.
    status, again, _ = await claim(
        session,
        system.device_url,
        code,
        hardware_id,
        proof(device_key, hardware_id),
        idempotency_key=first_key,
    )
    assert status == 200 and again["device_id"] == board["device_id"] and again["decision"] == "same"
    await provision(session, system.device_url, board)

    # A copied image on another board: a clone with credentials of its own ...
    status, clone, _ = await claim(
        session, system.device_url, code, hardware_id, proof(device_key, hardware_id), cpu_id="c2", mac="m2"
    )
    assert status == 200 and clone["decision"] == "clone", clone
    assert clone["hardware_id"] == f"{hardware_id}-1" and clone["device_secret"]
    await provision(session, system.device_url, clone)
    # ... which, presenting H, H's proof and its own secret later, is itself.
    status, later, _ = await claim(
        session,
        system.device_url,
        code,
        hardware_id,
        proof(device_key, hardware_id),
        cpu_id="c2",
        mac="m2",
        secret=clone["device_secret"],
    )
    assert status == 200 and later["device_id"] == clone["device_id"], later
    assert later["hardware_id"] == f"{hardware_id}-1" and later["decision"] == "same"

    # Rotating the code keeps the attestation; rotating the primary key stops its device keys.
    rotated = await operator.call("POST", f"/v1/auto-registrations/{registration_id}/rotate-code", expect=200)
    assert rotated["attestation"] == "derived_key"
    code = rotated["bulk_identification_code"]
    new_primary = await operator.call(
        "POST", f"/v1/auto-registrations/{registration_id}/rotate-key", {"key": "primary"}, expect=200
    )
    assert new_primary["primary_key"] not in (primary, secondary) and "secondary_key" not in new_primary
    await asyncio.sleep(0.5)  # the invalidation's delivery to the intake (milliseconds; docs: allow 1 s)
    other = f"dk2-{uuid.uuid4().hex[:8]}"
    status, old, _ = await claim(
        session, system.device_url, code, other, proof(derive(primary, other), other)
    )
    assert status == 403 and old["reason"] == REASON_WRONG_PROOF
    status, by_secondary, _ = await claim(
        session, system.device_url, code, other, proof(derive(secondary, other), other)
    )
    assert status == 200 and by_secondary["decision"] == "new", by_secondary
    third = f"dk3-{uuid.uuid4().hex[:8]}"
    status, by_new, _ = await claim(
        session, system.device_url, code, third, proof(derive(new_primary["primary_key"], third), third)
    )
    assert status == 200 and by_new["decision"] == "new"

    # The reference protocol answers false with the reason, at step 1 and step 2.
    compat = f"{system.device_url}/apv/v27/bulk/registration/device"
    async with session.post(
        f"{compat}/information/", json={"BulkIdentificationCode": code, "HardwareId": third, "CPUId": "c"}
    ) as response:
        text = await response.text()
    assert '"false"' in text and REASON_REFERENCE_PROTOCOL[:40] in text, text
    async with session.get(f"{compat}/friendly/configuration/{code}/{third}/") as response:
        text = await response.text()
    assert '"false"' in text and REASON_REFERENCE_PROTOCOL[:40] in text, text

    # The audit trail has the rotations and derivations, never a key.
    page = await operator.call("GET", "/v1/audit-events?limit=100", expect=200)
    actions = Counter(e["action"] for e in page["audit_events"])
    assert (
        actions["auto_registration.key_rotated"] == 1 and actions["auto_registration.device_key_derived"] == 2
    )
    assert not any(k in str(page) for k in (primary, secondary, device_key, new_primary["primary_key"]))

    # No group key, device key or MAC in any log written meanwhile (nor their first 16 characters).
    secrets_ = {primary, secondary, device_key, new_primary["primary_key"], mac, derive(secondary, other)}
    for path in LOGS.glob("*.log"):
        with path.open("rb") as log:
            log.seek(log_offsets.get(path, 0))
            text = log.read().decode(errors="replace")
        for secret in secrets_:
            assert secret[:16] not in text, (path.name, "a key in the log")


async def test_the_attackers_proofs_are_refused_and_a_clockless_board_boots(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    created = await derived_product(operator)
    code, primary = created["bulk_identification_code"], created["primary_key"]
    hardware_id = f"atk-{uuid.uuid4().hex[:8]}"
    key = derive(primary, hardware_id)
    url = system.device_url

    async def refused(hw: str, shown: dict[str, Any] | None, code_: str = code) -> dict[str, Any]:
        status, body, _ = await claim(session, url, code_, hw, shown)
        assert status == 403, body
        return body

    good = proof(key, hardware_id)
    assert (await refused(hardware_id, None))["reason"] == REASON_NO_PROOF
    assert (await refused(hardware_id, {**good, "mac": "0" * 64}))["reason"] == REASON_WRONG_PROOF
    assert (await refused(hardware_id, {**good, "mac": good["mac"][:40]}))["reason"] == REASON_WRONG_PROOF
    assert (await refused(hardware_id, {**good, "expires": good["expires"] + 1}))[
        "reason"
    ] == REASON_WRONG_PROOF
    # Another device's proof, and a key derived from another registration's group key.
    assert (await refused(f"{hardware_id}x", good))["reason"] == REASON_WRONG_PROOF
    stranger = (await derived_product(operator))["primary_key"]
    assert (await refused(hardware_id, proof(derive(stranger, hardware_id), hardware_id)))[
        "reason"
    ] == REASON_WRONG_PROOF
    # A valid proof for a product the registry does not know.
    assert (await refused(hardware_id, good, str(uuid.uuid4()).upper()))["reason"] == REASON_UNKNOWN_CODE
    # Malformed proofs are 400 naming the field.
    for bad, field in (
        ({**good, "nonce": "xyz"}, "proof.nonce"),
        ({**good, "expires": "soon"}, "proof.expires"),
        ({**good, "mac": "g" * 200}, "proof.mac"),
        ({**good, "extra": 1}, "proof.extra"),
    ):
        body = {"bulk_identification_code": code, "hardware_id": hardware_id, "proof": bad}
        async with session.post(f"{url}/v1/registrations", json=body) as response:
            assert response.status == 400 and (await response.json())["field"] == field

    # Expired (a board in 1970) and future-dated: refused with the server's time ...
    for wrong_time in (300, int(time.time()) + 3600):
        status, body, headers = await claim(
            session, url, code, hardware_id, proof(key, hardware_id, expires=wrong_time)
        )
        assert status == 403 and body["reason"] == REASON_PROOF_TIME
        assert abs(body["server_time"] - time.time()) < 30 and "Date" in headers
    # ... and the board's next try, on that time, succeeds; its proof replayed is refused.
    on_time = proof(key, hardware_id, expires=body["server_time"] + 300)
    status, ready, _ = await claim(session, url, code, hardware_id, on_time)
    assert status == 200 and ready["decision"] == "new"
    assert (await refused(hardware_id, on_time))["reason"] == REASON_REPLAYED_PROOF


async def test_a_flood_of_wrong_proofs_is_throttled_but_clockless_boards_are_not(
    defaults: ServiceProcess, operator: Operator
) -> None:
    created = await derived_product(operator)
    code, primary = created["bulk_identification_code"], created["primary_key"]
    async with from_address(fresh_address()) as attacker:
        statuses = [
            (await claim(attacker, defaults.url, code, f"f{i}", proof(derive(primary, f"f{i}"), f"f{i}x")))[0]
            for i in range(14)
        ]
    # Counted on the (address, code) pair: 10 a minute, then 429.
    assert statuses == [403] * 10 + [429] * 4
    # A factory of clockless boards behind one address: refused for their time, never counted.
    async with from_address(fresh_address()) as factory:
        for i in range(40):
            hw = f"rtc-{i}"
            status, body, _ = await claim(
                factory, defaults.url, code, hw, proof(derive(primary, hw), hw, expires=300)
            )
            assert status == 403 and body["reason"] == REASON_PROOF_TIME, (i, status, body)
        status, body, _ = await claim(
            factory,
            defaults.url,
            code,
            "rtc-0",
            proof(derive(primary, "rtc-0"), "rtc-0", expires=body["server_time"] + 300),
        )
        assert status == 200 and body["status"] == "ready"


def test_the_documented_python_is_the_servers_formula() -> None:
    namespace: dict[str, Any] = {}
    exec(doc_block("# fleetreg derived keys: Python"), namespace)  # noqa: S102 - the docs' own example, run as written
    group_key = base64.b64encode(os.urandom(32)).decode()
    from shared.domain import derived_keys

    assert namespace["derive_key"](group_key, " H-1 ") == derived_keys.derive_device_key(group_key, "H-1")
    made = namespace["proof"](derive(group_key, "H-1"), "H-1")
    assert derived_keys.proof_matches(
        (group_key,), "H-1", derived_keys.Proof(made["expires"], made["nonce"], made["mac"])
    )


async def test_the_cli_creates_derives_rotates_and_simulate_boots_a_derived_key_product(
    system: System, operator: Operator, session: aiohttp.ClientSession
) -> None:
    from tests.e2e.test_cli import fleetreg, fleetreg_json

    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"cli-{uuid.uuid4().hex[:6]}", "services": [{"type": "ssh", "port": 22}]},
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    created = await fleetreg_json(
        operator, system, "auto", "create", "--product", product["id"], "--attestation", "derived_key"
    )
    assert created["attestation"] == "derived_key" and set(created) >= {"primary_key", "secondary_key"}
    registration_id = created["id"]
    derived = await fleetreg_json(
        operator, system, "auto", "derive-key", registration_id, "--hardware-id", "Cli-1", "--secondary"
    )
    assert (
        derived["device_key"] == derive(created["secondary_key"], "Cli-1") and derived["key"] == "secondary"
    )
    code, out, _ = await fleetreg(
        operator, system, "auto", "derive-key", registration_id, "--hardware-id", "Cli-1"
    )
    assert code == 0 and out.strip() == derive(created["primary_key"], "Cli-1")
    rotated = await fleetreg_json(operator, system, "auto", "rotate-key", registration_id, "--secondary")
    assert "primary_key" not in rotated and rotated["secondary_key"] != created["secondary_key"]
    listed = await fleetreg_json(operator, system, "auto", "list")
    assert [r["attestation"] for r in listed["auto_registrations"] if r["id"] == registration_id] == [
        "derived_key"
    ]
    assert "secondary_key" not in str(listed)

    # A read-only key may not derive; a code registration has no group keys (409).
    read_only = await operator.call("POST", "/v1/api-keys", {"label": "ro", "read_only": True}, expect=201)
    headers = {"Authorization": f"Bearer {read_only['api_key']}"}
    async with session.post(
        f"{system.operator_url}/v1/auto-registrations/{registration_id}/derive-key",
        json={"hardware_id": "h"},
        headers=headers,
    ) as response:
        assert response.status == 403
    code_mode = await operator.product()
    conflict = await operator.call(
        "POST", f"/v1/auto-registrations/{code_mode['id']}/derive-key", {"hardware_id": "h"}, expect=409
    )
    assert conflict["rule"] == "attestation=derived_key"

    # fleetreg simulate boots the product with its group key (clones: copied images).
    summary = await fleetreg_json(
        operator,
        system,
        "simulate",
        "--code",
        created["bulk_identification_code"],
        "--group-key",
        rotated["secondary_key"],
        "--devices",
        "30",
        "--clone-rate",
        "0.1",
        "--two-call",
    )
    assert summary["provisioned"] == 30 and summary["errors"] == 0, summary
