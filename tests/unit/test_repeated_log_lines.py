"""Repeated error lines of the consume loops and the Kafka client are rate-limited
(shared.logging.RepeatedLines): a broker restart once wrote about 16,800 lines per consumer."""

from __future__ import annotations

import logging
import time

from shared.logging import RepeatedLines


def _line(
    name: str, msg: str, *args: object, level: int = logging.ERROR, **extra: object
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_one_line_per_distinct_fault_per_window_then_the_count_of_those_left_out() -> None:
    guard = RepeatedLines(every_s=1)
    # aiokafka's lines differ by their arguments (node IDs, addresses): one fault all the same.
    storm = [
        _line("aiokafka.conn", "Unable connect to node with id %s: %s", n % 3, "refused") for n in range(500)
    ]
    kept = [r for r in storm if guard.filter(r)]
    assert len(kept) == 1
    # A different fault of the consume loop has its own line; its error field tells it apart.
    loop = [
        _line("shared.kafka", "batch failed; retrying", level=logging.WARNING, error=e)
        for e in ("A at x", "B at y")
    ]
    assert [guard.filter(r) for r in loop] == [True, True]
    assert not guard.filter(
        _line("shared.kafka", "batch failed; retrying", level=logging.WARNING, error="A at x")
    )

    time.sleep(1.1)  # the next window
    again = _line("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused")
    assert guard.filter(again)
    assert again.__dict__["suppressed"] == 499


def test_other_loggers_and_lower_levels_are_never_held_back() -> None:
    guard = RepeatedLines(every_s=60)
    for _ in range(50):
        assert guard.filter(
            _line("services.dedup.handlers", "security alert: repeated wrong registration keys")
        )
        assert guard.filter(_line("aiokafka.consumer", "fetching", level=logging.INFO))
        assert guard.filter(_line("shared.kafkaesque", "not a child of shared.kafka"))
