"""The device agent (agent/fleetreg-agent, issue 26) against the running system on the real
broker and database, each scenario under BusyBox ash and under dash, each board an agent
process with a state folder of its own: a fresh boot and reboots (one device, one
identity), a copied image, a wiped board, the operator's reset, disable and enable, a
service enabled later, a rotated code, final refusals, the identity modes; and the script
itself checked by ShellCheck for anything that is not POSIX sh.
"""

from __future__ import annotations

import asyncio
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import EXIT_DISABLED, EXIT_FINAL, SHELLS, Agent, install_shells
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


async def test_twenty_reboots_in_a_row_are_one_device_with_one_identity(
    operator: Operator, make_agent: MakeAgent
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    board = make_agent(code, hardware_id())
    assert_booted(await board.boot())
    identity = (board.state("device_id"), board.state("hardware_id"), board.state("secret"))
    files = board.files()
    for _ in range(20):
        reboot = await board.boot()
        assert_booted(reboot)
        assert "register" not in reboot.events, reboot.log
    assert (board.state("device_id"), board.state("hardware_id"), board.state("secret")) == identity
    assert board.files() == files
    devices = await operator.devices()
    assert [(d["id"], d["hardware_id"]) for d in devices] == [identity[:2]]
    registrations = [
        e for e in (await device(operator, str(identity[0])))["history"] if e["kind"] == "registration"
    ]
    assert [e["decision"] for e in registrations] == ["new"]


async def test_a_copied_image_on_another_board_registers_as_a_clone(
    operator: Operator, make_agent: MakeAgent, tmp_path: Path
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    original = make_agent(code, h)
    assert_booted(await original.boot())
    await until_provisioned(operator, str(original.state("device_id")))

    copy = original.copy_to(tmp_path / "copy", CPU_ID="c0ffee0000000001", MAC="02:11:22:33:44:55")
    booted = await copy.boot()
    assert_booted(booted)
    assert "copied_image" in booted.events and "register" in booted.events
    assert copy.state("hardware_id") == f"{h}-1"  # adopted
    assert copy.state("device_id") != original.state("device_id")
    assert copy.state("secret") != original.state("secret")
    assert copy.state("fingerprint") == "c0ffee0000000001 02:11:22:33:44:55"
    assert_provisioned_files(copy, ["bulk", "ssh"])
    assert copy.files() != original.files()  # its own service passwords
    assert f"hardware_id {h}-1".encode() in copy.files()["bulk/00-bulk.conf"]
    # Each board keeps its identity at its next boots.
    for board, expected in ((original, h), (copy, f"{h}-1")):
        again = await board.boot()
        assert_booted(again)
        assert "register" not in again.events and board.state("hardware_id") == expected
    assert sorted(d["hardware_id"] for d in await operator.devices()) == [h, f"{h}-1"]


async def test_a_wiped_board_is_a_clone_once_it_had_confirmed(
    operator: Operator, make_agent: MakeAgent
) -> None:
    """docs/device-api.md: after ready, the device secret alone makes a later claim the same
    device; a factory reset (state wiped) without it is a clone H-N, until the operator
    resets the device."""
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    board = make_agent(code, h)
    assert_booted(await board.boot())
    first_id = str(board.state("device_id"))
    await until_provisioned(operator, first_id)

    shutil.rmtree(board.state_dir)
    shutil.rmtree(board.files_dir)
    wiped = await board.boot()
    assert_booted(wiped)
    assert board.state("hardware_id") == f"{h}-1" and board.state("device_id") != first_id
    assert_provisioned_files(board, ["bulk", "ssh"])


async def test_the_operators_reset_gives_the_device_back_with_new_credentials(
    operator: Operator, make_agent: MakeAgent
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    board = make_agent(code, h)
    assert_booted(await board.boot())
    device_id, secret = str(board.state("device_id")), board.state("secret")
    await until_provisioned(operator, device_id)
    files = board.files()

    await operator.call("POST", f"/v1/devices/{device_id}/reset", expect=200)
    for _ in range(20):  # the reset reaches every intake within its delivery time
        again = await board.boot()
        assert_booted(again)
        if "register" in again.events:
            break
        await asyncio.sleep(0.1)
    assert "reason_code=credentials_replaced" in again.log, again.log
    assert (board.state("device_id"), board.state("hardware_id")) == (device_id, h)
    assert board.state("secret") != secret
    assert board.files() != files  # new service passwords
    assert board.hook_calls()[-1] == ["bulk", "ssh"]
    await until_provisioned(operator, device_id)
    assert [d["id"] for d in await operator.devices()] == [device_id]


async def test_disabled_boot_exits_3_and_run_waits_until_enabled(
    operator: Operator, make_agent: MakeAgent
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    board = make_agent(code, hardware_id())
    assert_booted(await board.boot())
    device_id = str(board.state("device_id"))
    await until_provisioned(operator, device_id)

    await operator.call("POST", f"/v1/devices/{device_id}/disable", expect=200)
    for _ in range(20):
        disabled = await board.boot()
        if disabled.code != 0:
            break
        await asyncio.sleep(0.1)
    assert disabled.code == EXIT_DISABLED, disabled.log
    assert disabled.log.strip().splitlines()[-1].startswith("fleetreg-agent: disabled")

    await board.start()
    try:
        await until_logged(board, "disabled: waiting")
        assert "heartbeat device_id" not in board.run_log()
        await operator.call("POST", f"/v1/devices/{device_id}/enable", expect=200)
        await until_logged(board, "heartbeat device_id", count=3)  # resumed, and beating
    finally:
        code_at_stop = await board.stop()
    assert code_at_stop == 0
    assert board.run_log().strip().splitlines()[-1] == "fleetreg-agent: stopped"
    assert board.state("device_id") == device_id


async def until_logged(board: Agent, text: str, count: int = 1) -> None:
    for _ in range(300):
        if board.run_log().count(text) >= count:
            return
        assert board.process is not None and board.process.returncode is None, board.run_log()
        await asyncio.sleep(0.05)
    raise AssertionError(f"never logged {text!r} {count} times:\n{board.run_log()}")


async def test_a_service_enabled_later_arrives_at_the_next_boot_and_a_disabled_one_goes(
    operator: Operator, make_agent: MakeAgent
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}])
    code, product_id = registration["bulk_identification_code"], registration["product_id"]
    board = make_agent(code, hardware_id())
    assert_booted(await board.boot())

    added = await operator.call(
        "POST",
        f"/v1/products/{product_id}/services",
        {"name": "admin", "type": "web", "port": 80},
        expect=201,
    )
    admin = next(s for s in added["services"] if s["name"] == "admin")
    await operator.call(
        "PATCH",
        f"/v1/products/{product_id}/services/{admin['provisioning_id']}",
        {"enabled": True},
        expect=200,
    )
    await until_services(board, ["admin", "bulk", "ssh"])
    assert board.hook_calls()[-1] == ["admin"]
    [admin_file] = [content for name, content in board.files().items() if name.startswith("admin/")]
    assert b"proxy_dest_port 80\n" in admin_file

    await operator.call(
        "PATCH",
        f"/v1/products/{product_id}/services/{admin['provisioning_id']}",
        {"enabled": False},
        expect=200,
    )
    await until_services(board, ["bulk", "ssh"])
    assert board.hook_calls()[-1] == ["admin"]
    assert not (board.files_dir / "admin").exists()


async def until_services(board: Agent, services: list[str]) -> None:
    """Boots until the board holds the files of ``services`` (an operator's edit reaches
    every intake within its delivery time)."""
    for _ in range(20):
        assert_booted(await board.boot())
        held = sorted({name.split("/")[0] for name in board.files()})
        if held == services:
            assert_provisioned_files(board, services)
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the board holds {held}, not {services}")


async def test_a_rotated_code_keeps_provisioned_devices_booting_and_refuses_new_boards(
    operator: Operator, make_agent: MakeAgent
) -> None:
    registration = await operator.product()
    code = registration["bulk_identification_code"]
    board = make_agent(code, hardware_id())
    assert_booted(await board.boot())
    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/rotate-code", expect=200)

    reboot = await board.boot()
    assert_booted(reboot)
    assert "register" not in reboot.events

    newcomer = make_agent(code, hardware_id())
    refused = await newcomer.boot()
    assert refused.code == EXIT_FINAL, refused.log
    last = refused.log.strip().splitlines()[-1]
    assert last.startswith("fleetreg-agent: refused reason_code=revoked_code"), last
    assert newcomer.state("device_id") is None


async def test_an_unknown_code_is_a_final_refusal_with_a_one_line_reason(make_agent: MakeAgent) -> None:
    board = make_agent(str(uuid.uuid4()).upper(), hardware_id())
    refused = await board.boot()
    assert refused.code == EXIT_FINAL
    assert refused.log.strip().splitlines()[-1] == (
        "fleetreg-agent: refused reason_code=unknown_code reason=unknown bulk identification code"
    )
    assert board.files() == {} and board.state("device_id") is None


async def test_a_paused_registration_is_retried_until_resumed(
    operator: Operator, make_agent: MakeAgent
) -> None:
    registration = await operator.product()
    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/pause", expect=200)
    board = make_agent(registration["bulk_identification_code"], hardware_id())
    booting = asyncio.create_task(board.boot())
    for _ in range(300):
        if (board.root / "state" / "idempotency_key").exists() and booting.done() is False:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(1)  # a few refusals at the small backoff
    assert not booting.done()
    await operator.call("POST", f"/v1/auto-registrations/{registration['id']}/resume", expect=200)
    booted = await booting
    assert_booted(booted)
    assert "register_refused reason_code=paused" in booted.log
    assert booted.log.count("register_refused") >= 2
