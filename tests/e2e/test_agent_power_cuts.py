"""Power cuts during a device agent's first boot (issue 26, item 3): ``agent/fleetreg-agent``
killed with SIGKILL (its whole process group: the shell, curl and openssl die together) at
random instants spread over its first boot, and at chosen moments of it, then booted again.

The next boot must provision the same device: the board's state names one provisioned device
under the hardware ID it claimed (no ``H-1``: a board is never a clone of itself), the
account holds no other device (no ghost of the cut boot), the stored secret is accepted (no
lockout) and the board's files are the device's current ones. The registry is checked
against every board's state folder.

The instants are drawn (seeded, the seed in the failure message) over the boot time measured
first with as many boards booting at once as the cuts run at once, stratified so that they
cover the whole boot: before the registration, while the answer is on its way (the two-call
boot's files come inline in it: that is the download), while the files and the identity are
written, and before and after ``ready``. The narrow moments are also hit on purpose:
* between the identity (device ID, secret) reaching the disk and ``ready``: an on-change
  script, which the agent runs in exactly that gap, kills its own process group once;
* just after the agent logs ``register`` (the key persisted, the call on its way),
  ``register_ready`` (the answer in, nothing written) and the first ``file_written``.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import statistics
from pathlib import Path

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.support.agent_fleet import (
    AGENT,
    Board,
    Boot,
    boards,
    boot,
    gather_limited,
    registry_against_boards,
)
from tests.support.api import Operator
from tests.support.system import System

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not AGENT.exists(), reason="agent/fleetreg-agent is not in this checkout"),
]

RANDOM_CUTS = 60
AT_ONCE = 12  # boards cut (and booted again) at once; the calibration boots as many at once
PINNED = ("register", "register_ready", "file_written")  # kill just after the agent logs this
HOOK_CUTS = 3  # boards whose on-change script kills the agent between the secret and ready
SERVICES = [{"type": "ssh", "port": 22}, {"type": "web", "port": 80}]


def _hook_that_cuts_once(board: Board) -> None:
    """An on-change script that kills its own process group (the agent's) the first time it
    runs: the agent runs it after the identity is on disk and before it confirms ready."""
    hooks = board.folder / "hooks"
    hooks.mkdir(parents=True, exist_ok=True)
    mark = board.folder / "cut-once"
    script = hooks / "10-power-cut"
    script.write_text(f'#!/bin/sh\n[ -e "{mark}" ] && exit 0\n: >"{mark}"\nkill -9 0\n')
    script.chmod(0o755)
    board.settings["HOOKS_DIR"] = str(hooks)


def state_left(board: Board) -> str:
    """What a cut boot left on the board, in the order a boot writes it."""
    if board.read("ready"):
        return "confirmed"
    if board.read("device_id") and board.read("secret"):
        return "identity on disk, not confirmed"
    written = (
        [p for p in board.files.glob("*/*") if not p.name.startswith(".")] if board.files.exists() else []
    )
    if written:
        return "files written, no identity"
    if board.read("idempotency_key"):
        return "key persisted, nothing else"
    return "nothing"


async def _device_view(session: aiohttp.ClientSession, device_url: str, board: Board) -> list[str]:
    """Problems with the board's stored secret and files, as the device API sees them."""
    device_id, secret = board.read("device_id"), board.read("secret")
    headers = {"Authorization": f"Bearer {secret}"}
    async with session.get(f"{device_url}/v1/devices/{device_id}/manifest", headers=headers) as response:
        if response.status != 200:
            return [f"{board.hardware_id}: its stored secret is refused ({response.status}): locked out"]
        manifest = await response.json()
    problems = []
    for item in manifest["files"]:
        path = board.files / item["service"] / item["name"]
        if not path.exists() or path.stat().st_size != item["size"]:
            problems.append(
                f"{board.hardware_id}: {item['service']}/{item['name']} missing or not the current file"
            )
    return problems


async def test_a_first_boot_cut_at_any_instant_is_finished_by_the_next_boot(
    system: System, operator: Operator, pool: Pool, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    code = (await operator.product(SERVICES))["bulk_identification_code"]
    url = system.device_url

    calibration = boards(tmp_path, AT_ONCE, prefix="whole")
    whole = await asyncio.gather(*(boot(b, url, code) for b in calibration))
    assert [b.returncode for b in whole] == [0] * AT_ONCE, [b.text() for b in whole if b.returncode]
    span = statistics.median(b.seconds for b in whole)

    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    instants = [(i + rng.random()) / RANDOM_CUTS * span for i in range(RANDOM_CUTS)]
    rng.shuffle(instants)  # early and late cuts run side by side, as in the calibration
    cut = boards(tmp_path, RANDOM_CUTS + len(PINNED) * 2 + HOOK_CUTS, prefix="cut")
    plans: list[tuple[Board, float | None, str | None]] = [
        *((board, at, None) for board, at in zip(cut, instants, strict=False)),
        *((board, None, event) for board, event in zip(cut[RANDOM_CUTS:], [*PINNED, *PINNED], strict=False)),
    ]
    for board in cut[RANDOM_CUTS + len(PINNED) * 2 :]:
        _hook_that_cuts_once(board)
        plans.append((board, None, None))

    async def cut_then_boot(board: Board, at: float | None, event: str | None) -> tuple[Boot, str, Boot]:
        first = await boot(board, url, code, kill_after_s=at, kill_on=event)
        left = state_left(board)
        return first, left, await boot(board, url, code)

    runs = await gather_limited((cut_then_boot(*plan) for plan in plans), AT_ONCE)

    context = f"seed {seed}, span {span:.2f} s"
    left = collections.Counter(state for first, state, _ in runs if first.returncode == -9)
    cuts = sum(left.values())
    assert cuts >= 50, (context, cuts, left)
    failed = [
        (b.hardware_id, second.returncode, second.text())
        for b, (_, _, second) in zip(cut, runs, strict=True)
        if second.returncode != 0
    ]
    assert not failed, (context, failed[:3])
    hook_left = [state for (first, state, _) in runs[RANDOM_CUTS + len(PINNED) * 2 :]]
    assert hook_left == ["identity on disk, not confirmed"] * HOOK_CUTS, (context, hook_left)

    check = await registry_against_boards(pool, operator.account_id, [*calibration, *cut])
    assert check.ok, (context, check.problems[:5], left)
    assert check.devices == check.provisioned == len(calibration) + len(cut), (context, check)
    seen = await asyncio.gather(*(_device_view(session, url, board) for board in cut))
    problems = [p for each in seen for p in each]
    assert not problems, (context, problems[:5])
    # Where the random cuts landed, for whoever reads the run (-s): every stage of a boot.
    print(f"power cuts ({context}): {cuts} cut boots left: {dict(left)}")
