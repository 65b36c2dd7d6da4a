"""The device agent's .deb in a Debian root (issue 26, item 2): installed by dpkg into a minbase
root that Debian's mmdebstrap made with what a small image has (curl, openssl, BusyBox),
configured against the running system, and booted inside the root (chroot; the root shares the
host's network, so 127.0.0.1 reaches the intake). The device must be provisioned in the
registry with its files in FILES_DIR, a reboot must be the same device, the init script must
run and stop the agent, an upgrade must restart a running agent and keep the filled-in
configuration, and a purge must stop it and keep the identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.api import Operator
from tests.support.system import System

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "agent" / "packaging"
VERSION = (ROOT / "agent" / "VERSION").read_text().strip()
# What the package's configuration leaves at the agent's defaults.
STATE_DIR = "var/lib/fleetreg-agent"
FILES_DIR = "etc/fleetreg/services"
# The environment of a command in the root: nothing of the host's but the basics.
ROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: make agent-package-test runs as root on Debian")
    return path


@pytest.fixture(scope="module")
def root_tarball() -> Path:
    """The cached minbase root (made once by agent/packaging/test-root.sh)."""
    made = subprocess.run([str(PACKAGING / "test-root.sh")], check=True, capture_output=True, text=True)
    return Path(made.stdout.split()[-1])


def build(out: Path, version: str) -> Path:
    env = {**os.environ, "FLEETREG_AGENT_VERSION": version}
    subprocess.run([str(PACKAGING / "build.sh"), "--out", str(out)], env=env, check=True, capture_output=True)
    return out / f"fleetreg-agent_{version}_all.deb"


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("dist"), VERSION)


@pytest.fixture(scope="module")
def upgrade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The next release: the same files, a higher version."""
    return build(tmp_path_factory.mktemp("dist-next"), f"{VERSION}+next")


@pytest.fixture
def debian_root(tmp_path: Path, root_tarball: Path) -> Iterator[Path]:
    """A fresh copy of the root; every process left running in it is killed at the end."""
    if os.geteuid() != 0:
        pytest.fail("make agent-package-test needs root (chroot, mount namespaces, device nodes)")
    root = tmp_path / "root"
    root.mkdir()
    tar = program("tar")
    subprocess.run([tar, "-xpf", str(root_tarball), "-C", str(root), "--numeric-owner"], check=True)
    yield root
    for pid in processes_in(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def processes_in(root: Path) -> list[int]:
    """The processes whose root folder is ``root`` (started in it by this test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == str(root):
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return found


async def in_root(root: Path, *argv: str, timeout_s: float = 300) -> tuple[int, str, str]:
    """``argv`` run inside the root as its root user: in a mount namespace of its own (its
    /proc mounted there vanishes with it), chrooted; the exit code, stdout and stderr."""
    script = 'r=$1; shift; mount -t proc proc "$r/proc" && exec chroot "$r" "$@"'
    process = await asyncio.create_subprocess_exec(
        program("unshare"),
        "--mount",
        "--fork",
        "--",
        "/bin/sh",
        "-c",
        script,
        "sh",
        str(root),
        *argv,
        env=ROOT_ENV,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def until_provisioned(operator: Operator, device_id: str) -> dict[str, Any]:
    """The device as the registry shows it once its ``ready`` went through the pipeline."""
    for _ in range(400):
        device: dict[str, Any] = await operator.call("GET", f"/v1/devices/{device_id}", expect=200)
        if device["lifecycle"] == "provisioned":
            return device
        await asyncio.sleep(0.05)
    raise AssertionError(f"the registry never showed {device_id} provisioned: {device}")


async def until_no_process_in(root: Path) -> None:
    for _ in range(100):  # the agent is gone; its last child (a sleep it kills) a moment later
        if not processes_in(root):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still running in the root: {processes_in(root)}")


async def test_the_deb_provisions_a_device_in_a_debian_root(
    debian_root: Path,
    deb: Path,
    upgrade: Path,
    system: System,
    operator: Operator,
    session: aiohttp.ClientSession,
) -> None:
    root = debian_root
    shutil.copy(deb, root / "root" / deb.name)
    rc, out, err = await in_root(root, "dpkg", "-i", f"/root/{deb.name}")
    assert rc == 0, out + err
    assert "fill in /etc/fleetreg-agent.conf" in out  # the postinst's hint
    rc, out, _ = await in_root(root, "dpkg-query", "-W", "-f", "${Status} ${Version}", "fleetreg-agent")
    assert out == f"install ok installed {VERSION}"
    # A fresh installation starts nothing (nothing is configured yet).
    assert processes_in(root) == []
    conf = root / "etc" / "fleetreg-agent.conf"
    assert (conf.stat().st_mode & 0o777, (root / STATE_DIR).stat().st_mode & 0o777) == (0o600, 0o700)

    # The image's configuration: the sample's comments kept, the keys this board needs added.
    registration = await operator.product([{"type": "ssh", "port": 22}, {"type": "web", "port": 80}])
    hardware_id = uuid.uuid4().hex[:12]
    with conf.open("a") as f:  # keeps the packaged file's mode
        f.write(
            f"SERVER_URL={system.device_url}\n"
            f"CODE={registration['bulk_identification_code']}\n"
            f"HARDWARE_ID={hardware_id}\n"
            f"CPU_ID={uuid.uuid4().hex[:16]}\n"
            f"MAC=02:42:{':'.join(uuid.uuid4().hex[i : i + 2] for i in range(0, 8, 2))}\n"
            "HEARTBEAT_SECONDS=1\n"
            "BACKOFF_MAX_SECONDS=5\n"
        )

    # First boot, under the image's /bin/sh (dash).
    rc, _, log = await in_root(root, "/usr/bin/fleetreg-agent", "boot")
    assert rc == 0, log
    state = root / STATE_DIR
    device_id = (state / "device_id").read_text().strip()
    secret = (state / "secret").read_text().strip()
    assert (state / "hardware_id").read_text().strip() == hardware_id
    assert (state / "secret").stat().st_mode & 0o777 == 0o600
    assert secret and secret not in log
    assert registration["bulk_identification_code"] not in log
    assert all(line.startswith("fleetreg-agent: ") for line in log.splitlines()), log

    device = await until_provisioned(operator, device_id)
    assert device["hardware_id"] == hardware_id
    async with session.get(
        f"{system.device_url}/v1/devices/{device_id}/manifest", headers={"Authorization": f"Bearer {secret}"}
    ) as answer:
        assert answer.status == 200, await answer.text()
        manifest = await answer.json()
    assert {item["service"] for item in manifest["files"]} == {"ssh", "web", "bulk"}  # bulk: every product
    written = sorted(p.relative_to(root / FILES_DIR) for p in (root / FILES_DIR).rglob("*") if p.is_file())
    assert written == sorted(Path(item["service"]) / item["name"] for item in manifest["files"])
    for item in manifest["files"]:
        content = (root / FILES_DIR / item["service"] / item["name"]).read_bytes()
        assert (len(content), hashlib.sha256(content).hexdigest()) == (item["size"], item["sha256"])

    # A reboot, under BusyBox's sh this time: the same device, checked in with its secret.
    rc, _, log = await in_root(root, "busybox", "sh", "/usr/bin/fleetreg-agent", "boot")
    assert rc == 0, log
    assert (state / "device_id").read_text().strip() == device_id
    assert f"checkin device_id={device_id}" in log
    devices = await operator.devices(hardware_id=hardware_id)
    assert [d["id"] for d in devices] == [device_id]

    # The init script of BusyBox/sysvinit images: `run` started, heartbeats, stopped by SIGTERM.
    (root / "etc" / "default" / "fleetreg-agent").write_text("LOG=/var/log/fleetreg-agent.log\n")
    rc, out, err = await in_root(root, "/etc/init.d/fleetreg-agent", "start")
    assert rc == 0, out + err
    rc, out, _ = await in_root(root, "/etc/init.d/fleetreg-agent", "status")
    assert rc == 0 and "running" in out, out
    # /var/run/fleetreg-agent.pid in the root; /var/run links to /run (absolute, so read here)
    pid = int((root / "run" / "fleetreg-agent.pid").read_text())
    assert pid in processes_in(root)  # beside it, at most its sleep or curl of the moment
    run_log = root / "var" / "log" / "fleetreg-agent.log"
    for _ in range(600):
        if run_log.exists() and f"heartbeat device_id={device_id}" in run_log.read_text():
            break
        await asyncio.sleep(0.1)
    assert f"heartbeat device_id={device_id}" in run_log.read_text(), run_log.read_text()
    rc, out, _ = await in_root(root, "/etc/init.d/fleetreg-agent", "stop")
    assert rc == 0 and "stopped" in out, out
    await until_no_process_in(root)
    assert "fleetreg-agent: stopped" in run_log.read_text()
    rc, _, _ = await in_root(root, "/etc/init.d/fleetreg-agent", "status")
    assert rc == 3

    # An upgrade restarts a running agent on the new script and keeps the filled-in
    # configuration (a conffile) without asking.
    rc, out, err = await in_root(root, "/etc/init.d/fleetreg-agent", "start")
    assert rc == 0, out + err
    pid = int((root / "run" / "fleetreg-agent.pid").read_text())
    shutil.copy(upgrade, root / "root" / upgrade.name)
    rc, out, err = await in_root(root, "dpkg", "-i", f"/root/{upgrade.name}")
    assert rc == 0, out + err
    rc, out, _ = await in_root(root, "dpkg-query", "-W", "-f", "${Version}", "fleetreg-agent")
    assert out == f"{VERSION}+next"
    assert f"SERVER_URL={system.device_url}" in conf.read_text()
    upgraded = int((root / "run" / "fleetreg-agent.pid").read_text())
    assert upgraded != pid and upgraded in processes_in(root)
    assert f"AGENT_VERSION={VERSION}+next" in (root / "usr" / "bin" / "fleetreg-agent").read_text()

    # A purge stops the agent, removes the program and the configuration, and keeps the
    # device's identity.
    rc, out, err = await in_root(root, "dpkg", "--purge", "fleetreg-agent")
    assert rc == 0, out + err
    await until_no_process_in(root)
    assert not (root / "usr" / "bin" / "fleetreg-agent").exists()
    assert not conf.exists()
    assert (state / "device_id").read_text().strip() == device_id
