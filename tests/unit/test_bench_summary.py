"""var/bench/summary.json keeps the shape docs/performance.md#the-summary-file gives, and a storm's
ratio to the ceiling is taken against the slowest per-device ceiling."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bench.__main__ import _ratio, summary
from tests.bench.hooks import summarize_pairs

CONTRACT = {
    "boot_two_call": {"devices", "devices_per_s", "ratio_to_ceiling", "p50_ms", "p95_ms", "p99_ms", "errors"},
    "boot_five_call": {
        "devices",
        "devices_per_s",
        "ratio_to_ceiling",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "errors",
    },
    "open_loop": {"offered_per_s", "p99_ms", "errors"},
    "ceilings": {"http_requests_per_s", "kafka_events_per_s", "postgres_rows_per_s"},
    "bulk": {
        "rows",
        "validate_s",
        "publish_s",
        "peak_rss_mb",
        "validate_ratio_to_baseline",
        "publish_ratio_to_baseline",
    },
}


def _storm(per_s: float, http: float, kafka: float, rows: float) -> dict[str, Any]:
    return {
        "devices": 1000,
        "devices_per_s": per_s,
        "p50_ms": 1.0,
        "p95_ms": 2.0,
        "p99_ms": 3.0,
        "errors": 0,
        "lost": 0,
        "duplicated": 0,
        "offered_per_s": None,
        "per_device": {"http_requests": http, "kafka_records": kafka, "postgres_rows": rows},
    }


CEILING = {"http_requests_per_s": 6000.0, "kafka_events_per_s": 30000.0, "postgres_rows_per_s": 100000.0}


def test_the_ratio_is_to_the_slowest_per_device_ceiling() -> None:
    storm = _storm(300.0, http=2.0, kafka=4.0, rows=10.0)  # 3000, 7500, 10000 devices/s
    assert _ratio(storm, CEILING) == pytest.approx(0.1)
    storm = _storm(300.0, http=2.0, kafka=4.0, rows=50.0)  # Postgres now the slowest: 2000
    assert _ratio(storm, CEILING) == pytest.approx(0.15)


def test_summary_has_every_key_of_the_contract() -> None:
    two, five = _storm(500.0, 2.0, 4.0, 9.0), _storm(300.0, 7.0, 4.0, 14.0)
    two["ratio_to_ceiling"], five["ratio_to_ceiling"] = _ratio(two, CEILING), _ratio(five, CEILING)
    bulk = {k: 1.0 for k in CONTRACT["bulk"]} | {"baseline_copy_s": 8.0}
    result = {
        "ceilings": CEILING,
        "boot_two_call": two,
        "boot_five_call": five,
        "open_loop": _storm(375.0, 2.0, 4.0, 9.0) | {"offered_per_s": 375.0},
        "bulk": bulk,
    }
    out = summary(result)
    for section, keys in CONTRACT.items():
        assert keys <= set(out[section]), section
    assert out["boot_two_call"]["devices_per_s"] == 500.0
    assert out["open_loop"]["offered_per_s"] == 375.0


def test_an_agents_only_run_has_the_agent_figures_and_nothing_else() -> None:
    figures = {
        "boots": 10,
        "errors": 0,
        "p50_ms": 400.0,
        "p95_ms": 500.0,
        "cpu_ms_per_boot": 250.0,
        "cpu_ms_p95": 260.0,
    }
    storm = {
        "agents": 500,
        "sources": 5,
        "devices_per_s": 10.0,
        "p50_ms": 20000.0,
        "p99_ms": 40000.0,
        "errors": 0,
        "cpu_ms_per_boot": 250.0,
        "registry_ok": True,
    }
    agents = {
        "boots": {"shells": {"dash": {"first_boot": figures, "check_in": figures}}},
        "simulator_storm": _storm(100.0, 2.0, 4.0, 9.0),
        "storm": storm,
        "ratios": {"devices_per_s": 0.1},
    }
    out = summary({"agents": agents})
    assert set(out) == {"agent"}
    assert out["agent"]["storm"]["devices_per_s"] == 10.0
    assert out["agent"]["simulator_storm"]["devices_per_s"] == 100.0
    assert out["agent"]["boots"]["dash"]["first_boot"] == {"p50_ms": 400.0, "cpu_ms_per_boot": 250.0}


def test_a_hooks_only_run_has_the_hook_figures_and_the_targets_read_from_the_medians() -> None:
    def storm(hooked: bool, per_s: float, p99: float) -> dict[str, Any]:
        hook = {"own_p99_ms": 21.0, "notifier_p99_ms": 25.0} if hooked else None
        return _storm(per_s, 2.0, 4.0, 9.0) | {"p99_ms": p99, "hooked": hooked, "hook": hook}

    # none, hook, hook, none: medians 400 without, 380 with (0.95); p99 500 -> 528 (bound 531).
    pairs = summarize_pairs(
        [
            storm(False, 390.0, 490.0),
            storm(True, 370.0, 526.0),
            storm(True, 390.0, 530.0),
            storm(False, 410.0, 510.0),
        ]
    )
    assert pairs["median_devices_per_s"] == {"without_hook": 400.0, "with_hook": 380.0}
    assert (pairs["devices_per_s_ratio"], pairs["p99_added_ms"], pairs["p99_bound_ms"]) == (0.95, 28.0, 531.0)
    assert pairs["targets"]["ratio_met"] and pairs["targets"]["p99_met"]
    outage = {
        "devices": 20000,
        "hook_down_s": 30.0,
        "devices_per_s": 150.0,
        "refused": 0,
        "lost": 0,
        "duplicated": 0,
        "errors": 0,
        "waiting_at_return": 200,
        "first_ready_after_return_s": 1.5,
        "all_waiting_ready_after_return_s": 9.0,
        "call_rows": {"allow": 20000},
        "targets": {"recovery_met": False},
    }
    out = summary({"hooks": {"with_and_without": pairs, "outage": outage}})
    assert set(out) == {"hook"}
    assert out["hook"]["with_and_without"]["devices_per_s_ratio"] == 0.95
    assert out["hook"]["outage"]["all_waiting_ready_after_return_s"] == 9.0
