"""The reference registration hook (examples/registration_hook.py) as a real process,
called by fleetreg's own caller (shared/hook_caller.py): a listed hardware ID is allowed
with its CSV row's enrichment, an unlisted one denied with a reason, and a call whose
signature does not verify is a 401."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from cli.reference_hook import ROOT
from shared.domain.hooks import HookAnswer, HookRequest
from shared.domain.webhooks import new_secret
from shared.hook_caller import Hook, HookCaller
from tests.support.reference_hook import reference_hook

pytestmark = pytest.mark.integration

SECRET = new_secret()


def _request(hardware_id: str) -> HookRequest:
    return HookRequest(
        call_id="msg_" + uuid.uuid4().hex,
        request_id=str(uuid.uuid4()),
        hardware_id=hardware_id,
        fingerprint="f" * 64,
        decision="new",
        assigned_hardware_id=hardware_id,
        product_id=str(uuid.uuid4()),
        registration_id=str(uuid.uuid4()),
        attestation="code",
        source="203.0.113.7",
        protocol="native",
    )


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    async with reference_hook(tmp_path, SECRET) as started:
        yield started


@pytest.fixture
async def caller() -> AsyncIterator[HookCaller]:
    opened = HookCaller(allow_private=True)
    await opened.open()
    yield opened
    await opened.close()


async def test_a_listed_hardware_id_is_allowed_with_its_rows_enrichment(url: str, caller: HookCaller) -> None:
    result = await caller.call(Hook("r", url, SECRET, 5000), _request("SN-0001"))
    assert (result.outcome, result.http_status) == ("allow", 200), result.error
    assert result.answer == HookAnswer(
        True, "", "pump-0001", "pumps", "line-1", {"site": "Lyon", "batch": "2026-11"}
    )
    # An empty cell is no data.
    result = await caller.call(Hook("r", url, SECRET, 5000), _request("SN-0003"))
    assert result.answer == HookAnswer(True, "", "valve-0003", "valves", "line-1", {"site": "Porto"})


async def test_an_unlisted_hardware_id_is_denied_with_a_reason(url: str, caller: HookCaller) -> None:
    result = await caller.call(Hook("r", url, SECRET, 5000), _request("SN-9999"))
    assert (result.outcome, result.http_status) == ("deny", 200), result.error
    assert result.answer is not None and result.answer.reason == "SN-9999 is not in our serials list"


async def test_a_call_whose_signature_does_not_verify_is_refused(url: str, caller: HookCaller) -> None:
    result = await caller.call(Hook("r", url, new_secret(), 5000), _request("SN-0001"))
    assert (result.outcome, result.http_status) == ("http_error", 401)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"data": {"hardware_id": "SN-0001"}}) as r,
    ):
        assert r.status == 401  # no signature at all


async def test_the_secret_is_required_and_read_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "serials.csv").write_text("hardware_id\nSN-1\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "FLEETREG_HOOK_SECRET"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.registration_hook",
        "--csv",
        str(tmp_path / "serials.csv"),
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2 and b"FLEETREG_HOOK_SECRET" in err
