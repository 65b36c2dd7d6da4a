"""The device agent (agent/fleetreg-agent, issue 26) against the running system on the real
broker and database, each scenario under BusyBox ash and under dash, each board an agent
process with a state folder of its own: a fresh boot and reboots (one device, one
identity), a copied image, a wiped board, the operator's reset, disable and enable, a
service enabled later, a rotated code, final refusals, the identity modes; and the script
itself checked by ShellCheck for anything that is not POSIX sh.
"""

from __future__ import annotations

import asyncio
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import SHELLS, Agent, install_shells
from tests.support.api import Operator
from tests.support.system import System

pytestmark = pytest.mark.e2e

MakeAgent = Callable[..., Agent]


@pytest.fixture(scope="session")
def shells() -> None:
    install_shells()


@pytest.fixture(params=SHELLS)
def shell(request: pytest.FixtureRequest, shells: None) -> str:
    return str(request.param)


@pytest.fixture
def make_agent(tmp_path: Path, shell: str, system: System) -> MakeAgent:
    """A factory of boards: ``make_agent(code, hardware_id, **config)``, each in a folder of
    its own, with a fingerprint of its own unless given."""
    made: list[Agent] = []

    def make(code: str, hardware_id: str, **config: str) -> Agent:
        root = tmp_path / f"board{len(made)}"
        root.mkdir()
        settings = {
            "SERVER_URL": system.device_url,
            "CODE": code,
            "HARDWARE_ID": hardware_id,
            "CPU_ID": uuid.uuid4().hex[:16],
            "MAC": ":".join(uuid.uuid4().hex[i : i + 2] for i in range(0, 12, 2)),
            **config,
        }
        agent = Agent(root, shell, settings)
        agent.install_hook()
        made.append(agent)
        return agent

    return make


def hardware_id() -> str:
    return uuid.uuid4().hex[:12]


async def device(operator: Operator, device_id: str) -> dict[str, Any]:
    found: dict[str, Any] = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
    return found


async def until_provisioned(operator: Operator, device_id: str) -> dict[str, Any]:
    """The device once its ready reached the registry (ready is recorded asynchronously)."""
    for _ in range(300):
        found = await device(operator, device_id)
        if found["lifecycle"] == "provisioned":
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"device {device_id} never became provisioned")


def assert_booted(boot: Any) -> None:
    assert boot.code == 0, boot.log


def assert_provisioned_files(agent: Agent, services: list[str]) -> None:
    files = agent.files()
    assert sorted({name.split("/")[0] for name in files}) == sorted(services), files.keys()
    for name, content in files.items():
        assert content.startswith(b"#begin\n") and content.endswith(b"#end\n"), name
        assert (agent.files_dir / name).stat().st_mode & 0o777 == 0o600


async def test_a_fresh_boot_provisions_and_a_reboot_checks_in_with_the_secret_only(
    operator: Operator, make_agent: MakeAgent
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}])
    code = registration["bulk_identification_code"]
    h = hardware_id()
    board = make_agent(code, h)

    first = await board.boot()
    assert_booted(first)
    assert "register" in first.events and "ready" in first.events
    device_id = board.state("device_id")
    assert device_id and board.state("hardware_id") == h
    secret = board.state("secret")
    assert secret and len(secret) >= 32
    assert stat.S_IMODE((board.state_dir / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE(board.state_dir.stat().st_mode) == 0o700
    assert board.state("idempotency_key") is None  # the attempt ended with ready
    assert secret not in first.log
    assert_provisioned_files(board, ["bulk", "ssh"])
    assert board.hook_calls() == [["bulk", "ssh"]]
    found = await until_provisioned(operator, device_id)
    assert found["hardware_id"] == h

    files = board.files()
    second = await board.boot()
    assert_booted(second)
    assert "register" not in second.events, second.log  # never the code again
    assert "checkin" in second.events and "heartbeat" in second.events
    assert (board.state("device_id"), board.state("secret")) == (device_id, secret)
    assert board.files() == files
    assert board.hook_calls() == [["bulk", "ssh"]]  # nothing changed: no script
    assert [d["id"] for d in await operator.devices()] == [device_id]
