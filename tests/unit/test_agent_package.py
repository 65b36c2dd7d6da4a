"""The device agent's release files (issue 26, item 2), checked offline with Debian's own tools.

``agent/packaging/build.sh`` makes the Debian package and the tarball; here they are read back
the way a device maker's tools read them: ``dpkg-deb --field``, ``--ctrl-tarfile``,
``--contents`` and ``--fsys-tarfile`` for the package (its control fields, conffiles, modes and
owners, what it holds), :mod:`tarfile` for the tarball (unpacked, the agent inside runs
``--help``), ``systemd-analyze verify`` for the unit, ``shellcheck`` for every script, and the
init script is driven through start, status and stop under ``dash`` (and BusyBox ``sh`` where
installed) with a stand-in agent. Installing the package into a Debian root and provisioning a
device with it is ``make agent-package-test`` (tests/agent_package).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "agent" / "fleetreg-agent"
PACKAGING = ROOT / "agent" / "packaging"
BUILD = PACKAGING / "build.sh"
VERSION = (ROOT / "agent" / "VERSION").read_text().strip()

# What the package promises to install, with its mode (dpkg-deb --contents' notation); every
# entry is owned by root/root.
PACKAGE_FILES = {
    "./usr/bin/fleetreg-agent": "-rwxr-xr-x",
    "./lib/systemd/system/fleetreg-agent.service": "-rw-r--r--",
    "./etc/init.d/fleetreg-agent": "-rwxr-xr-x",
    # It holds the code, and in derived_key mode the device's own key.
    "./etc/fleetreg-agent.conf": "-rw-------",
    "./usr/share/doc/fleetreg-agent/README.md": "-rw-r--r--",
    "./usr/share/doc/fleetreg-agent/device-agent.md": "-rw-r--r--",
    # The identity and the secret: root only.
    "./var/lib/fleetreg-agent/": "drwx------",
}
CONFFILES = {"/etc/fleetreg-agent.conf", "/etc/init.d/fleetreg-agent"}
TARBALL_FILES = {
    "fleetreg-agent": 0o755,
    "fleetreg-agent.service": 0o644,
    "fleetreg-agent.init": 0o755,
    "fleetreg-agent.conf": 0o644,
    "README.md": 0o644,
    "device-agent.md": 0o644,
    "VERSION": 0o644,
}
SHELL_SCRIPTS = [
    PACKAGING / "build.sh",
    PACKAGING / "test-root.sh",
    PACKAGING / "fleetreg-agent.init",
    PACKAGING / "debian" / "postinst",
    PACKAGING / "debian" / "prerm",
    PACKAGING / "debian" / "postrm",
]


@dataclass(frozen=True)
class Release:
    deb: Path
    tarball: Path
    sums: Path


def build(out: Path) -> Release:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1767225600"}
    env.pop("FLEETREG_AGENT_VERSION", None)
    done = subprocess.run([str(BUILD), "--out", str(out)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    deb = out / f"fleetreg-agent_{VERSION}_all.deb"
    tarball = out / f"fleetreg-agent-{VERSION}.tar.gz"
    assert done.stdout.split() == [str(deb), str(tarball)]
    return Release(deb, tarball, out / "SHA256SUMS")


def tool(name: str, package: str) -> str:
    """The program's path. A missing one fails the test: make test installs busybox, dash
    and shellcheck (deploy/local/agent-shells.sh), and dpkg-deb is in every Debian; only
    systemd-analyze (:func:`optional_tool`) may be absent from a minimal system."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's {package} (deploy/local/agent-shells.sh)")
    return path


def optional_tool(name: str, package: str) -> str:
    """A program a minimal Debian may lack (systemd in a container): its test is skipped."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is missing (Debian's {package})")
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    tool("dpkg-deb", "dpkg")
    return build(tmp_path_factory.mktemp("dist"))


def dpkg_deb(*args: str) -> bytes:
    return subprocess.run([tool("dpkg-deb", "dpkg"), *args], check=True, capture_output=True).stdout


def field(deb: Path, name: str) -> str:
    return dpkg_deb("--field", str(deb), name).decode().strip()


def member(archive: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None, name
        return extracted.read()


def test_control_fields(release: Release) -> None:
    assert field(release.deb, "Package") == "fleetreg-agent"
    assert field(release.deb, "Version") == VERSION
    assert field(release.deb, "Architecture") == "all"
    assert [d.strip() for d in field(release.deb, "Depends").split(",")] == ["curl", "openssl"]
    assert field(release.deb, "Maintainer")
    assert int(field(release.deb, "Installed-Size")) > 0


def test_conffiles_and_maintainer_scripts(release: Release) -> None:
    control = dpkg_deb("--ctrl-tarfile", str(release.deb))
    assert set(member(control, "./conffiles").decode().split()) == CONFFILES
    with tarfile.open(fileobj=io.BytesIO(control)) as tar:
        scripts = {m.name: m.mode for m in tar.getmembers() if m.isfile()}
    for script in ("./postinst", "./prerm", "./postrm"):
        assert scripts[script] == 0o755, script


def test_contents_modes_and_owners(release: Release) -> None:
    listed = {}
    for line in dpkg_deb("--contents", str(release.deb)).decode().splitlines():
        mode, owner, _size, _date, _time, path = line.split(maxsplit=5)
        listed[path] = (mode, owner)
    for path, mode in PACKAGE_FILES.items():
        assert listed.get(path) == (mode, "root/root"), path
    assert {owner for _mode, owner in listed.values()} == {"root/root"}
    # Nothing else but the folders that hold them.
    files = {path for path, (mode, _owner) in listed.items() if not mode.startswith("d")}
    assert files == {path for path, mode in PACKAGE_FILES.items() if not mode.startswith("d")}


def test_the_package_ships_the_repository_files(release: Release) -> None:
    data = dpkg_deb("--fsys-tarfile", str(release.deb))
    shipped_agent = member(data, "./usr/bin/fleetreg-agent").decode()
    # The same program, its User-Agent version stamped with the package's.
    assert re.findall(r"^AGENT_VERSION=(.*)$", shipped_agent, re.M) == [VERSION]
    original = AGENT.read_text()
    assert re.sub(r"^AGENT_VERSION=.*$", f"AGENT_VERSION={VERSION}", original, flags=re.M) == shipped_agent
    assert (
        member(data, "./lib/systemd/system/fleetreg-agent.service")
        == (PACKAGING / "fleetreg-agent.service").read_bytes()
    )
    assert member(data, "./etc/init.d/fleetreg-agent") == (PACKAGING / "fleetreg-agent.init").read_bytes()
    assert member(data, "./etc/fleetreg-agent.conf") == (PACKAGING / "fleetreg-agent.conf").read_bytes()
    assert (
        member(data, "./usr/share/doc/fleetreg-agent/device-agent.md")
        == (ROOT / "docs" / "device-agent.md").read_bytes()
    )


def test_the_tarball_unpacks_and_its_agent_runs(release: Release, tmp_path: Path) -> None:
    top = f"fleetreg-agent-{VERSION}"
    with tarfile.open(release.tarball) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {top} | {f"{top}/{name}" for name in TARBALL_FILES}
        for name, mode in TARBALL_FILES.items():
            assert members[f"{top}/{name}"].mode == mode, name
            assert (members[f"{top}/{name}"].uid, members[f"{top}/{name}"].gid) == (0, 0), name
        tar.extractall(tmp_path, filter="data")
    unpacked = tmp_path / top
    assert (unpacked / "VERSION").read_text().strip() == VERSION
    helped = subprocess.run([str(unpacked / "fleetreg-agent"), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr
    assert "boot" in helped.stdout and "run" in helped.stdout


def test_two_builds_of_one_commit_are_the_same_bytes(release: Release, tmp_path: Path) -> None:
    again = build(tmp_path)
    assert again.sums.read_text() == release.sums.read_text()
    assert f"fleetreg-agent_{VERSION}_all.deb" in release.sums.read_text()


def test_a_version_that_debian_refuses_stops_the_build(tmp_path: Path) -> None:
    env = {**os.environ, "FLEETREG_AGENT_VERSION": "v1 beta"}
    done = subprocess.run([str(BUILD), "--out", str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "not a Debian version" in done.stderr
    assert not list(tmp_path.iterdir())


def test_the_sample_configuration_names_every_key_and_sets_none() -> None:
    keys = re.search(r'^CONFIG_KEYS="([^"]*)"', AGENT.read_text(), re.M)
    assert keys, "agent/fleetreg-agent no longer lists CONFIG_KEYS"
    sample = (PACKAGING / "fleetreg-agent.conf").read_text()
    assert set(re.findall(r"^#([A-Z_]+)=", sample, re.M)) == set(keys.group(1).split())
    assert not re.findall(r"^[A-Z_]+=", sample, re.M), "the sample sets a key"


def test_the_agent_reads_the_sample_configuration_as_unconfigured(tmp_path: Path) -> None:
    """Every line of the sample is a comment to the agent's own reader: it stops on the first
    missing key (a configuration error, 64), not on a line it cannot read."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETREG_AGENT_")}
    done = subprocess.run(
        [tool("dash", "dash"), str(AGENT), "--config", str(PACKAGING / "fleetreg-agent.conf"), "boot"],
        env={**env, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 64, done.stderr
    assert "SERVER_URL is required" in done.stderr


def test_the_unit_is_valid_to_systemd(tmp_path: Path) -> None:
    systemd_analyze = optional_tool("systemd-analyze", "systemd")
    # verify checks that ExecStart's program exists: the unit is checked with it pointing at
    # this checkout's agent, every other line as shipped.
    unit = (PACKAGING / "fleetreg-agent.service").read_text()
    assert "ExecStart=/usr/bin/fleetreg-agent --config /etc/fleetreg-agent.conf run\n" in unit
    checked = tmp_path / "fleetreg-agent.service"
    checked.write_text(unit.replace("ExecStart=/usr/bin/fleetreg-agent", f"ExecStart={AGENT}"))
    done = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(checked)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # an unknown or misspelt key is only a warning
    for line in (
        r"Restart=always",
        r"After=.*\bnetwork-online\.target\b.*",
        r"StateDirectory=fleetreg-agent",
    ):
        assert re.search(f"^{line}$", unit, re.M), line


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_are_shellcheck_clean(script: Path) -> None:
    shellcheck = tool("shellcheck", "shellcheck")
    done = subprocess.run([shellcheck, "-S", "warning", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert os.access(script, os.X_OK), script


SHELLS = [("dash",), ("busybox", "sh")]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_the_init_script_starts_reports_and_stops(shell: tuple[str, ...], tmp_path: Path) -> None:
    """start, status, restart and stop through the pidfile, with a stand-in agent that records
    its arguments and environment and waits for SIGTERM, under each shell a small image has."""
    program = [tool(shell[0], shell[0]), *shell[1:]]
    daemon = tmp_path / "agent"
    daemon.write_text(
        "#!/bin/sh\n"
        f'echo "$* $FLEETREG_AGENT_HARDWARE_ID" >{tmp_path}/args\n'
        "echo 'fleetreg-agent: heartbeat device_id=x'\n"
        f"trap 'echo stopped >{tmp_path}/stopped; exit 0' TERM\n"
        "while :; do sleep 1 & wait $!; done\n"
    )
    daemon.chmod(0o755)
    (tmp_path / "agent.conf").write_text("")
    defaults = tmp_path / "defaults"
    pidfile = tmp_path / "run" / "fleetreg-agent.pid"
    defaults.write_text(
        f"DAEMON={daemon}\nCONFIG={tmp_path}/agent.conf\nPIDFILE={pidfile}\nLOG={tmp_path}/agent.log\nSTOP_WAIT=10\n"
        # A factory line's per-board value, as fleetreg-agent.service's EnvironmentFile reads it.
        "FLEETREG_AGENT_HARDWARE_ID=board-7\n"
    )
    env = {**os.environ, "FLEETREG_AGENT_DEFAULTS": str(defaults)}

    def init(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*program, str(PACKAGING / "fleetreg-agent.init"), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert init("status").returncode == 3
    started = init("start")
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    assert str(daemon) in Path(f"/proc/{pid}/cmdline").read_text()  # the agent, not a wrapper
    status = init("status")
    assert (status.returncode, f"(pid {pid})" in status.stdout) == (0, True), status.stdout
    assert "already running" in init("start").stdout
    assert int(pidfile.read_text()) == pid
    restarted = init("restart")
    assert restarted.returncode == 0, restarted.stderr
    assert (tmp_path / "stopped").read_text() == "stopped\n"  # SIGTERM, not SIGKILL
    (tmp_path / "stopped").unlink()
    pid = int(pidfile.read_text())
    assert str(daemon) in Path(f"/proc/{pid}/cmdline").read_text()
    stopped = init("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout
    assert (tmp_path / "stopped").read_text() == "stopped\n"  # SIGTERM, not SIGKILL
    assert (tmp_path / "args").read_text() == f"--config {tmp_path}/agent.conf run board-7\n"
    assert "heartbeat" in (tmp_path / "agent.log").read_text()
    assert not pidfile.exists()
    assert init("status").returncode == 3
    assert init("stop").returncode == 0
    pidfile.write_text("999999999\n")
    assert init("status").returncode == 1  # a stale pidfile
    assert init("bogus").returncode == 2
