"""tests/bench/cpu.py: a process's CPU times read from /proc/<pid>/stat whatever its command
name holds, and the cost per device per process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.bench import cpu


def test_stat_fields_are_read_after_the_command_name_whatever_it_holds() -> None:
    line = "4242 (py (x) y) S 17 4242 4242 0 -1 4194304 1 2 3 4 500 250 30 20 20 0 1 0 5 6 7"
    assert cpu.parse_stat(line) == (17, 500, 250, 30, 20)


def test_this_process_and_a_stack_folder_are_read(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "me.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "run" / "gone.pid").write_text("999999999\n")
    sum(i * i for i in range(200_000))  # some CPU of its own
    found = cpu.stack_cpu_s(tmp_path)
    assert set(found) == {"me"} and found["me"] > 0


def test_cost_per_device_per_process_and_in_all() -> None:
    before = {"intake": 10.0, "postgres": 20.0, "gone": 1.0}
    after = {"intake": 12.0, "postgres": 21.0}
    assert cpu.per_device_ms(before, after, 1000) == pytest.approx(
        {"intake": 2.0, "postgres": 1.0, "total": 3.0}
    )
