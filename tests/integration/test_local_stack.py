"""The local stack script's failures: one clear line naming what failed, and nothing
started. Each test uses a folder of its own (FLEETREG_VAR_DIR), so the running stack
is not touched."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "deploy" / "local" / "stack.sh"


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def _stack(var: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STACK), *args],
        env={**os.environ, "FLEETREG_VAR_DIR": str(var), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _nothing_started(var: Path) -> None:
    run = var / "run"
    assert not run.exists() or not any(run.iterdir())
    assert not (var / "postgres" / "data").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("variable", "advice"),
    [
        ("FLEETREG_PG_PORT", "set FLEETREG_PG_PORT"),
        ("FLEETREG_KAFKA_PORT", "set FLEETREG_KAFKA_PORT / FLEETREG_KAFKA_CONTROLLER_PORT"),
    ],
)
def test_a_port_in_use_stops_the_start_with_one_line(
    tmp_path: Path, occupied_port: int, variable: str, advice: str
) -> None:
    ports = {
        name: str(_free_port())
        for name in ("FLEETREG_PG_PORT", "FLEETREG_KAFKA_PORT", "FLEETREG_KAFKA_CONTROLLER_PORT")
    }
    ports[variable] = str(occupied_port)
    result = _stack(tmp_path, ports, "infra-up")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"fleetreg stack: port {occupied_port} is already in use by another process; {advice}"
    ]
    _nothing_started(tmp_path)


def test_a_missing_java_stops_the_start_with_one_line(tmp_path: Path) -> None:
    bin_without_java = tmp_path / "bin"
    bin_without_java.mkdir()
    for tool in ("bash", "cat", "dirname", "id", "ls", "sort", "tail", "mkdir", "python3", "runuser", "seq"):
        found = shutil.which(tool)
        if found:
            (bin_without_java / tool).symlink_to(found)
    result = _stack(tmp_path / "var", {"PATH": str(bin_without_java)}, "infra-up")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "fleetreg stack: java not found: install a JDK 17 or newer (Kafka runs on it)"
    ]
    _nothing_started(tmp_path / "var")


def test_down_with_nothing_running_is_fine(tmp_path: Path) -> None:
    result = _stack(tmp_path, {}, "down")
    assert result.returncode == 0
    assert "down" in result.stderr
