"""The device agent (agent/fleetreg-agent, issue 26) against the running system on the real
broker and database, each scenario under BusyBox ash and under dash, each board an agent
process with a state folder of its own: a fresh boot and reboots (one device, one
identity), a copied image, a wiped board, the operator's reset, disable and enable, a
service enabled later, a rotated code, final refusals, the identity modes; and the script
itself checked by ShellCheck for anything that is not POSIX sh.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.plain_text import flatten
from tests.e2e.test_x509_attestation import verified_ca, x509_registration
from tests.support import x509 as certs
from tests.support.agent import (
    AGENT,
    EXIT_DISABLED,
    EXIT_FINAL,
    SHELL_COMMANDS,
    SHELLS,
    Agent,
    busybox_bin,
)
from tests.support.api import Operator
from tests.support.system import ROOT, System

pytestmark = pytest.mark.e2e

MakeAgent = Callable[..., Agent]


async def enable_new_service(operator: Operator, product_id: str, name: str) -> dict[str, Any]:
    """The operator adds a web service to a provisioned product and enables it (its
    services as the API answers them): the boards' manifests list it from their next call."""
    added = await operator.call(
        "POST", f"/v1/products/{product_id}/services", {"name": name, "type": "web", "port": 80}, expect=201
    )
    service: dict[str, Any] = next(s for s in added["services"] if s["name"] == name)
    await operator.call(
        "PATCH",
        f"/v1/products/{product_id}/services/{service['provisioning_id']}",
        {"enabled": True},
        expect=200,
    )
    return service


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


def tool(name: str) -> str:
    """The installed program's path (Debian's packages: deploy/local/agent-shells.sh)."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed: run deploy/local/agent-shells.sh")
    return path


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

    admin = await enable_new_service(operator, product_id, "admin")
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


@pytest.mark.parametrize("refusal", ["paused", "quota"])
async def test_temporary_refusals_are_retried_until_they_end(
    operator: Operator, make_agent: MakeAgent, refusal: str
) -> None:
    registration = await operator.product()
    code, path = registration["bulk_identification_code"], f"/v1/auto-registrations/{registration['id']}"
    if refusal == "paused":
        await operator.call("POST", f"{path}/pause", expect=200)
    else:
        await operator.call("PATCH", path, {"max_devices": 1}, expect=200)
        assert_booted(await make_agent(code, hardware_id()).boot())
    board = make_agent(code, hardware_id())
    booting = asyncio.create_task(board.boot())
    for _ in range(600):  # a few refusals at the small backoff, logged as they come
        if booting.done() or (
            board.boot_log.exists() and board.boot_log.read_text().count("register_refused") >= 3
        ):
            break
        await asyncio.sleep(0.05)
    assert not booting.done(), (await booting).log
    if refusal == "paused":
        await operator.call("POST", f"{path}/resume", expect=200)
    else:
        await operator.call("PATCH", path, {"max_devices": None}, expect=200)
    booted = await booting
    assert_booted(booted)
    assert f"register_refused reason_code={refusal}" in booted.log


async def derived_key_registration(operator: Operator) -> dict[str, Any]:
    product = await operator.call(
        "POST",
        "/v1/products",
        {"name": f"dk-{uuid.uuid4().hex[:8]}", "services": [{"type": "ssh", "port": 22}]},
        expect=201,
    )
    await operator.call("POST", f"/v1/products/{product['id']}/lock", expect=200)
    created: dict[str, Any] = await operator.call(
        "POST",
        "/v1/auto-registrations",
        {"product_id": product["id"], "attestation": "derived_key"},
        expect=201,
    )
    return created


def clockless(folder: Path) -> Path:
    """A ``date`` for a board without a real-time clock: ``date +%s`` says 1970 (the
    agent's only use of the clock)."""
    folder.mkdir()
    shim = folder / "date"
    shim.write_text('#!/bin/sh\nif [ "$*" = "+%s" ]; then echo 5; else exec /bin/date "$@"; fi\n')
    shim.chmod(0o755)
    return folder


async def test_derived_key_mode_proves_the_key_also_without_a_clock(
    operator: Operator, make_agent: MakeAgent, tmp_path: Path
) -> None:
    created = await derived_key_registration(operator)
    code = created["bulk_identification_code"]

    async def device_key(h: str) -> str:
        derived = await operator.call(
            "POST", f"/v1/auto-registrations/{created['id']}/derive-key", {"hardware_id": h}, expect=200
        )
        return str(derived["device_key"])

    h = hardware_id()
    board = make_agent(code, h, DEVICE_KEY=await device_key(h))
    booted = await board.boot()
    assert_booted(booted)
    assert "mode=derived_key" in booted.log and "register_proof_time" not in booted.log
    assert board.state("hardware_id") == h
    assert str(await device_key(h)) not in booted.log
    assert_booted(await board.boot())  # a reboot: the secret, no proof

    h2 = hardware_id()
    no_clock = make_agent(code, h2, DEVICE_KEY=await device_key(h2))
    no_clock.extra_path.append(clockless(tmp_path / "no-rtc"))
    booted = await no_clock.boot()
    assert_booted(booted)
    assert "register_proof_time" in booted.events, booted.log
    assert no_clock.state("hardware_id") == h2

    wrong = make_agent(code, hardware_id(), DEVICE_KEY=await device_key(h))  # another board's key
    refused = await wrong.boot()
    assert refused.code == EXIT_FINAL
    assert (
        refused.log.strip().splitlines()[-1].startswith("fleetreg-agent: refused reason_code=proof_invalid")
    )


def openssl(*args: str, stdin: bytes = b"") -> str:
    return subprocess.run(
        [tool("openssl"), *args], input=stdin, check=True, capture_output=True
    ).stdout.decode()


async def test_csr_mode_makes_the_key_on_the_board_and_stores_its_certificate(
    operator: Operator, make_agent: MakeAgent
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    board = make_agent(code, h, CSR="1")
    booted = await board.boot()
    assert_booted(booted)
    key = board.state_dir / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    certificate = (board.state_dir / "certificate.pem").read_bytes()
    subject = openssl("x509", "-noout", "-subject", "-nameopt", "RFC2253", stdin=certificate)
    assert subject.strip() == f"subject=CN={h}"
    # The certificate is of the board's own key, which never left the state folder.
    assert openssl("x509", "-noout", "-pubkey", stdin=certificate) == openssl(
        "pkey", "-pubout", "-in", str(key)
    )
    assert "BEGIN" not in booted.log
    ca = (board.state_dir / "ca.pem").read_bytes()
    assert ca.startswith(b"-----BEGIN CERTIFICATE-----")
    held = (await device(operator, str(board.state("device_id"))))["certificate"]
    assert held and held["serial"] in booted.log

    # A board that lost its certificate asks for one with its secret at the next boot.
    (board.state_dir / "certificate.pem").unlink()
    again = await board.boot()
    assert_booted(again)
    assert "register" not in again.events and (board.state_dir / "certificate.pem").exists()
    serial = openssl("x509", "-noout", "-serial", "-in", str(board.state_dir / "certificate.pem"))

    # One expiring within CERT_RENEW_SECONDS is renewed at the check-in, of the same key.
    board.config["CERT_RENEW_SECONDS"] = str(20 * 365 * 86400)
    renewed = await board.boot()
    assert_booted(renewed)
    assert "certificate" in renewed.events
    assert openssl("x509", "-noout", "-serial", "-in", str(board.state_dir / "certificate.pem")) != serial
    assert openssl("x509", "-noout", "-pubkey", "-in", str(board.state_dir / "certificate.pem")) == openssl(
        "pkey", "-pubout", "-in", str(key)
    )


async def test_x509_mode_registers_with_the_boards_certificate_over_tls(
    operator: Operator, make_agent: MakeAgent, system: System, tmp_path: Path
) -> None:
    created = await x509_registration(operator)
    root = certs.ca(f"Maker Root {uuid.uuid4().hex[:6]}")
    h = f"x5a-{uuid.uuid4().hex[:8]}"
    leaf = certs.device(root, h)
    (tmp_path / "board.pem").write_text(leaf.pem)
    (tmp_path / "board.key").write_text(leaf.key_pem)
    await verified_ca(operator, created["id"], root)
    board = make_agent(
        created["bulk_identification_code"],
        h,
        SERVER_URL=f"https://127.0.0.1:{system.env['FLEETREG_COMPAT_PORT']}",
        CA_FILE=str(system.tls_ca),
        CERT_FILE=str(tmp_path / "board.pem"),
        KEY_FILE=str(tmp_path / "board.key"),
    )
    # Until the https listener holds the new CA (within its refresh interval), the handshake
    # fails: a fault the agent retries.
    booted = await board.boot()
    assert_booted(booted)
    assert "mode=x509" in booted.log and board.state("hardware_id") == h
    assert_provisioned_files(board, ["bulk", "ssh"])
    reboot = await board.boot()
    assert_booted(reboot)
    assert "register" not in reboot.events

    # A wiped board holds its key: it is itself, never a clone (docs/device-identity.md).
    await until_provisioned(operator, str(board.state("device_id")))
    device_id = board.state("device_id")
    shutil.rmtree(board.state_dir)
    wiped = await board.boot()
    assert_booted(wiped)
    assert (board.state("device_id"), board.state("hardware_id")) == (device_id, h)


def test_shellcheck_finds_nothing(shells: None) -> None:
    """Debian's ShellCheck, as POSIX sh: its SC3xxx checks refuse every bashism it knows."""
    done = subprocess.run([tool("shellcheck"), "--shell=sh", str(AGENT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_a_bashism_fails_the_checks(shells: None, tmp_path: Path) -> None:
    """The checks above can fail: a copy of the agent with bashisms planted is refused by
    ShellCheck, by Debian's checkbashisms where installed, and dash cannot even run it."""
    planted = tmp_path / "fleetreg-agent"
    text = AGENT.read_text()
    marker = "set -u\n"
    assert marker in text
    planted.write_text(
        text.replace(marker, marker + 'if [[ "$0" == *agent ]]; then :; fi\nlocal_array=(a b)\n', 1)
    )
    checked = subprocess.run([tool("shellcheck"), "--shell=sh", str(planted)], capture_output=True, text=True)
    assert checked.returncode != 0 and "SC3010" in checked.stdout, checked.stdout
    assert subprocess.run([tool("dash"), "-n", str(planted)], capture_output=True).returncode != 0
    if shutil.which("checkbashisms"):
        assert subprocess.run([tool("checkbashisms"), str(AGENT)], capture_output=True).returncode == 0
        assert subprocess.run([tool("checkbashisms"), str(planted)], capture_output=True).returncode != 0


def test_the_agent_parses_under_both_shells(shells: None) -> None:
    for command in ([tool("dash"), "-n"], [tool("busybox"), "sh", "-n"]):
        done = subprocess.run([*command, str(AGENT)], capture_output=True, text=True)
        assert done.returncode == 0, (command, done.stderr)


JSON_SHAPES: list[dict[str, Any]] = [
    {"status": "pending", "request_id": "r-1", "retry_after": 2},
    {
        "status": "refused",
        "request_id": "r",
        "reason": "device disabled by the operator",
        "reason_code": "disabled",
    },
    {
        "error": "too_many_requests",
        "message": "slow down",
        "rule": "refusals_per_source",
        "retry_after": "42",
    },
    {
        "status": "ready",
        "clone": False,
        "device_secret": "9b1c",
        "ignored": None,
        "empty": "",
        "spaced": " a ",
        "unicode": "caf\u00e9 \U0001f600",
        "manifest": {
            "generation": 1,
            "files": [
                {"name": "02-ssh.conf", "port": 22, "size": 249, "content": '#begin\nX "q" \\ \t\n#end\n'},
                None,
                {"name": "b", "nested": {"list": [], "n": -1.5e3}},
            ],
        },
    },
]


@pytest.mark.parametrize("shell", SHELLS)
def test_the_agents_json_fallback_reads_json_as_the_servers_text_form(
    shell: str, shells: None, tmp_path: Path
) -> None:
    """A server without the text form (or an HTTP layer's JSON error) is read by the agent's
    own flattening (json_to_text, awk): it gives exactly the lines shared/plain_text.py
    answers, under each shell with its own awk (BusyBox's or mawk)."""
    function = re.search(r"^json_to_text\(\) \{\n.*?^\}\n", AGENT.read_text(), re.M | re.S)
    assert function
    script = tmp_path / "flatten.sh"
    script.write_text(function.group(0) + "json_to_text\n")
    env = {"PATH": os.environ["PATH"]}
    if shell == "busybox":
        env["PATH"] = f"{busybox_bin(ROOT / 'var' / 'agent-busybox-bin')}:{env['PATH']}"
    for shape in JSON_SHAPES:
        for text in (json.dumps(shape), json.dumps(shape, indent=2, ensure_ascii=False)):
            done = subprocess.run(
                [*SHELL_COMMANDS[shell], str(script)],
                input=text.encode(),
                capture_output=True,
                env=env,
                check=True,
            )
            assert done.stdout.decode() == flatten(shape), text


async def test_a_deleted_device_registers_again_as_a_new_device(
    operator: Operator, make_agent: MakeAgent
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    h = hardware_id()
    board = make_agent(code, h)
    assert_booted(await board.boot())
    device_id = str(board.state("device_id"))
    await until_provisioned(operator, device_id)
    await operator.call("DELETE", f"/v1/devices/{device_id}", expect=200)
    for _ in range(20):  # the deletion reaches every intake within its delivery time
        again = await board.boot()
        assert_booted(again)
        if "register" in again.events:
            break
        await asyncio.sleep(0.1)
    assert "reason_code=device_deleted" in again.log, again.log
    assert board.state("device_id") != device_id and board.state("hardware_id") == h  # its ID was freed
    assert [d["id"] for d in await operator.devices()] == [board.state("device_id")]


async def test_the_configuration_is_read_never_executed_and_the_environment_wins(
    operator: Operator, make_agent: MakeAgent
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    board = make_agent("$(touch pwned-code)", hardware_id())
    board.config_text = "  # a comment\n\nMAC = 'b8:27:eb:00:00:01'\n"
    board.env = {"FLEETREG_AGENT_CODE": code}
    booted = await board.boot()
    assert_booted(booted)
    assert (
        board.state(
            "fingerprint",
        )
        == f"{board.config['CPU_ID']} b8:27:eb:00:00:01"
    )

    board.env = {}
    assert_booted(await board.boot())  # provisioned: the code is not even sent
    fresh = make_agent("`touch pwned-tick`", "$(touch pwned-hardware-id)")
    refused = await fresh.boot()
    assert refused.code == EXIT_FINAL, refused.log  # the text itself was sent, and refused
    assert not list(board.root.parent.glob("*/pwned*")) and not list(Path.cwd().glob("pwned*"))

    fresh.config_text = "SERVER=oops\n"
    unknown = await fresh.boot()
    assert unknown.code == 64
    line = (fresh.root / "agent.conf").read_text().splitlines().index("SERVER=oops") + 1
    assert (
        unknown.log.strip()
        == f"fleetreg-agent: config: {fresh.root / 'agent.conf'} line {line}: unknown key SERVER"
    )


async def test_syslog_takes_the_log_and_never_a_secret(
    operator: Operator, make_agent: MakeAgent, tmp_path: Path
) -> None:
    code = (await operator.product())["bulk_identification_code"]
    board = make_agent(code, hardware_id(), LOG="syslog")
    shims = tmp_path / "logger-shim"
    shims.mkdir()
    logger = shims / "logger"
    logger.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {tmp_path / "syslog"}\n')
    logger.chmod(0o755)
    board.extra_path.append(shims)
    booted = await board.boot()
    assert_booted(booted)
    assert booted.log == ""
    syslog = (tmp_path / "syslog").read_text()
    assert "-t fleetreg-agent -- register hardware_id=" in syslog and "ready device_id=" in syslog
    assert str(board.state("secret")) not in syslog


async def test_run_checks_in_every_checkin_seconds_and_picks_up_a_service(
    operator: Operator, make_agent: MakeAgent
) -> None:
    registration = await operator.product([{"type": "ssh", "port": 22}])
    code, product_id = registration["bulk_identification_code"], registration["product_id"]
    board = make_agent(code, hardware_id(), CHECKIN_SECONDS="0.6")  # every other heartbeat
    await board.start()
    try:
        await until_logged(board, "ready device_id")
        await enable_new_service(operator, product_id, "admin")
        await until_logged(board, "file_written service=admin")
        await until_logged(board, "hook script=10-record services=admin")
    finally:
        assert await board.stop() == 0
    assert board.run_log().count("checkin device_id") >= 1
    assert_provisioned_files(board, ["admin", "bulk", "ssh"])
    assert board.hook_calls() == [["bulk", "ssh"], ["admin"]]
