"""Power cuts during a device agent's first boot (issue 26, item 3): ``agent/fleetreg-agent``
killed with SIGKILL (its whole process group: the shell, curl and openssl die together) at
random instants spread over its first boot, and at chosen moments of it, then booted again,
under BusyBox ash and dash in turn.

The next boot must provision the same device: the board's state names one provisioned
device under the hardware ID it claimed (no ``H-1``: a board is never a clone of itself),
the account holds no other device (no ghost of the cut boot), the stored secret is accepted
(no lockout) and the board holds the device's current files. The registry is checked against
every board's state folder.

The instants are drawn (seeded; the seed is in every failure message) over the boot time
measured first with as many boards booting at once as the cuts run at once, stratified so
that they cover the whole boot: before the registration, while its answer is on its way
(the two-call boot's files come inline in it: that is the download), while the files and
the identity are written, and before and after ``ready``. The narrow moments are also hit
on purpose:
* between the identity (device ID, secret) reaching the disk and ``ready``: an on-change
  script, which the agent runs in exactly that gap, kills its own process group once;
* just after the agent logs ``register`` (the key persisted, the call on its way),
  ``register_ready`` (the answer in, nothing written) and the first ``file_written``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import random
import statistics
from pathlib import Path

import aiohttp
import pytest

from shared.db.pool import Pool
from tests.support.agent import SHELLS, Agent, install_shells
from tests.support.agent_fleet import Run, fleet, hardware_id, limited, registry_against_boards, run_boot
from tests.support.api import Operator
from tests.support.system import System

pytestmark = pytest.mark.e2e

RANDOM_CUTS = 66  # some end before their instant: at least 50 boots must be cut
AT_ONCE = 12  # boards cut (and booted again) at once; the calibration boots as many at once
PINNED = ("register", "register_ready", "file_written")  # cut just after the agent logs this
HOOK_CUTS = 3  # boards whose on-change script kills the agent between the secret and ready
SERVICES = [{"type": "ssh", "port": 22}, {"type": "web", "port": 80}]


@pytest.fixture(scope="module")
def shells() -> tuple[str, ...]:
    install_shells()
    return SHELLS


def _cut_by_hook_once(agent: Agent) -> None:
    """An on-change script that kills its own process group (the agent's) the first time it
    runs: the agent runs it after the identity is on disk and before it confirms ready."""
    agent.hooks_dir.mkdir(parents=True, exist_ok=True)
    mark = agent.root / "cut-once"
    script = agent.hooks_dir / "10-power-cut"
    script.write_text(f'#!/bin/sh\n[ -e "{mark}" ] && exit 0\n: >"{mark}"\nkill -9 0\n')
    script.chmod(0o755)


def state_left(agent: Agent) -> str:
    """What a cut boot left on the board, in the order a boot writes it."""
    if agent.state("ready"):
        return "confirmed"
    if agent.state("device_id") and agent.state("secret"):
        return "identity on disk, not confirmed"
    if agent.files():
        return "files written, no identity"
    if agent.state("idempotency_key"):
        return "key persisted, nothing else"
    return "nothing"


async def _device_view(session: aiohttp.ClientSession, device_url: str, agent: Agent) -> list[str]:
    """Problems with the board's stored secret and files, as the device API sees them."""
    device_id, secret = agent.state("device_id"), agent.state("secret")
    headers = {"Authorization": f"Bearer {secret}"}
    async with session.get(f"{device_url}/v1/devices/{device_id}/manifest", headers=headers) as response:
        if response.status != 200:
            return [f"{hardware_id(agent)}: its stored secret is refused ({response.status}): locked out"]
        manifest = await response.json()
    held = {name: hashlib.sha256(content).hexdigest() for name, content in agent.files().items()}
    wanted = {f"{item['service']}/{item['name']}": item["sha256"] for item in manifest["files"]}
    if held != wanted:
        return [f"{hardware_id(agent)}: holds {sorted(held)}, not the manifest's {sorted(wanted)}"]
    return []


async def test_a_first_boot_cut_at_any_instant_is_finished_by_the_next_boot(
    system: System,
    operator: Operator,
    pool: Pool,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    shells: tuple[str, ...],
) -> None:
    code = (await operator.product(SERVICES))["bulk_identification_code"]
    url = system.device_url

    whole = fleet(tmp_path, AT_ONCE, url, code, shells=shells, prefix="whole")
    calibration = await asyncio.gather(*(run_boot(agent) for agent in whole))
    assert [run.code for run in calibration] == [0] * AT_ONCE, [r.text() for r in calibration if r.code]
    span = statistics.median(run.seconds for run in calibration)

    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    instants = [(i + rng.random()) / RANDOM_CUTS * span for i in range(RANDOM_CUTS)]
    rng.shuffle(instants)  # early and late cuts side by side, as the calibration's boots ran
    boards = fleet(
        tmp_path, RANDOM_CUTS + 2 * len(PINNED) + HOOK_CUTS, url, code, shells=shells, prefix="cut"
    )
    plans: list[tuple[float | None, str | None]] = [
        *((at, None) for at in instants),
        *((None, event) for event in 2 * PINNED),
        *((None, None) for _ in range(HOOK_CUTS)),
    ]
    for agent in boards[-HOOK_CUTS:]:
        _cut_by_hook_once(agent)

    async def cut_then_boot(agent: Agent, at: float | None, event: str | None) -> tuple[Run, str, Run]:
        first = await run_boot(agent, kill_after_s=at, kill_on=event)
        left = state_left(agent)
        return first, left, await run_boot(agent)

    runs = await limited(
        (cut_then_boot(agent, at, event) for agent, (at, event) in zip(boards, plans, strict=True)), AT_ONCE
    )

    context = f"seed {seed}, boot {span:.2f} s"
    left = collections.Counter(state for first, state, _ in runs if first.cut)
    assert sum(left.values()) >= 50, (context, left)
    chosen = [(first.code, first.events) for first, _, _ in runs[RANDOM_CUTS:]]
    # Every chosen moment was reached: the on-change script's cuts always (the agent waits
    # for it); a cut on a logged event by at least one of its two boards (the test kills
    # when it reads the line, and on a loaded machine a board may finish before the read:
    # seen in CI, a 'file_written' cut outrun by the board's last file and ready).
    pinned = dict.fromkeys(PINNED, False)
    for event, (code, _) in zip(2 * PINNED, chosen, strict=False):
        pinned[event] = pinned[event] or code == -9
    missed = [(i, code, events[-3:]) for i, (code, events) in enumerate(chosen) if code != -9]
    assert all(pinned.values()), (context, missed)
    assert all(code == -9 for code, _ in chosen[2 * len(PINNED) :]), (context, missed)
    failed = [
        (hardware_id(a), second.code, second.text())
        for a, (_, _, second) in zip(boards, runs, strict=True)
        if second.code
    ]
    assert not failed, (context, failed[:3])
    by_hook = [state for _, state, _ in runs[-HOOK_CUTS:]]
    assert by_hook == ["identity on disk, not confirmed"] * HOOK_CUTS, (context, by_hook)

    check = await registry_against_boards(pool, operator.account_id, [*whole, *boards])
    assert check.ok, (context, check.problems[:5], left)
    assert check.devices == check.provisioned == len(whole) + len(boards), (context, check)
    seen = await asyncio.gather(*(_device_view(session, url, agent) for agent in boards))
    problems = [p for each in seen for p in each]
    assert not problems, (context, problems[:5])
    # Where the cuts landed, for whoever reads the run (pytest -s).
    print(f"power cuts ({context}): {sum(left.values())} cut boots left {dict(left)}")
