"""``make bench`` (issue 12): fleetreg's boot storms and bulk ingestion on the local stack,
each figure beside the machine's ceilings measured in the same run with the same client
and message sizes (the machine is shared and noisy; absolute figures drift, ratios less).

1. ceilings (tests/bench/ceilings.py): a bare aiohttp endpoint, aiokafka produce and
   consume of the boot's events, batched Postgres writes of device rows;
2. the storm of ``--devices`` devices (5 % clones, 1 % lost responses), closed loop at
   ``--concurrency``, with the two-call boot and with the five-call boot (four files: seven calls):
   devices/s fully provisioned, time-to-provisioned percentiles, errors, and the registry
   checked against what the devices were told (tests/bench/storms.py);
   with the two-call storms of issue 25 interleaved in the same run (tests/bench/identity.py):
   derived-key devices and devices sending a CSR (P-256), beside more code-mode storms
   (code, derived, CSR, CSR, derived, code, ...): each storm, every mode's median,
   derived/code, certificates/s; and the issuing CA's signing cost alone, in process;
3. the same storm offered open loop at 75 % of the two-call rate just measured: p99;
4. the bulk upload and publish of ``--bulk-rows`` rows beside a Postgres ``COPY`` of the
   same rows, and the ingestion service's peak memory (tests/bench/bulk.py);
5. two instances of each pipeline service: no duplicate, and each instance's share of the
   work (tests/bench/scaleout.py);
6. the device agent (tests/bench/agents.py): its boot time and the CPU a boot costs the
   device, one boot at a time under each shell, and a storm of ``--agents`` agent
   processes at once from a few loopback addresses beside the simulator's two-call storm of
   as many devices in the same run (ratios); ``--agents-only`` runs only this part;
7. the registration hook (tests/bench/hooks.py, issue 27): two-call storms without a hook
   and with one answering in 20 ms, alternated (devices/s ratio, p99 against the hook's
   own), and a storm of ``--hook-outage-devices`` whose hook is down for 30 s (refused,
   lost, recovery after its return); ``--hooks-only`` runs only this part.

``ratio_to_ceiling`` is devices/s divided by the slowest per-device ceiling: each ceiling
divided by what one device was measured to cost in that storm (HTTP requests to the
intake, Kafka records, Postgres rows). Prints tables; writes var/bench/*.json and
var/bench/summary.json (the shape in docs/performance.md#the-summary-file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import asyncpg

from cli.commands.simulate import device_csr
from cli.config import load_endpoints, parse_env_file, require
from cli.output import print_table
from shared.service import use_fast_event_loop, use_fewer_collections
from shared.settings import KafkaSettings
from tests.bench import agents, bulk, ceilings, hooks, identity, scaleout, storms

OUT = Path("var/bench")


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def _stack(pool: Any) -> storms.Stack:
    endpoints = load_endpoints()
    infra = parse_env_file(Path("var/infra.env"))
    return storms.Stack(
        device_url=require(endpoints, "FLEETREG_DEVICE_URL"),
        operator_url=require(endpoints, "FLEETREG_ADMIN_URL"),
        intake_ops_url=require(endpoints, "FLEETREG_INTAKE_OPS_URL"),
        bootstrap=infra["KAFKA_BOOTSTRAP_SERVERS"],
        topic_prefix=os.environ.get("FLEETREG_TOPIC_PREFIX", "fleetreg"),
        pool=pool,
    )


def _ratio(storm: dict[str, Any], ceiling: dict[str, Any]) -> float:
    cost = storm["per_device"]
    per_device = [
        ceiling["http_requests_per_s"] / max(cost["http_requests"], 1e-9),
        ceiling["kafka_events_per_s"] / max(cost["kafka_records"], 1e-9),
        ceiling["postgres_rows_per_s"] / max(cost["postgres_rows"], 1e-9),
    ]
    storm["ceiling_devices_per_s"] = [round(x, 1) for x in per_device]
    return float(round(storm["devices_per_s"] / min(per_device), 3))


async def _agents(stack: storms.Stack, args: argparse.Namespace) -> dict[str, Any]:
    _progress(
        f"device agent: {args.agent_boots} boots one at a time under each shell, then the simulator's "
        f"two-call storm and an agent storm of {args.agents} at once from {args.agent_sources} addresses"
    )
    found = await agents.run(
        stack, agents=args.agents, sources=args.agent_sources, boots_per_shell=args.agent_boots
    )
    _progress(
        f"  agents {found['storm']['devices_per_s']} devices/s, simulator "
        f"{found['simulator_storm']['devices_per_s']}: {found['ratios']['devices_per_s']}"
    )
    return found


async def _hooks(stack: storms.Stack, args: argparse.Namespace) -> dict[str, Any]:
    return await hooks.run(
        stack,
        devices=args.hook_devices,
        concurrency=args.concurrency,
        rounds=args.hook_rounds,
        outage_devices=args.hook_outage_devices,
        outage_s=args.hook_outage_seconds,
        progress=_progress,
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    infra = parse_env_file(Path("var/infra.env"))
    pool = await asyncpg.create_pool(infra["DATABASE_URL"], min_size=1, max_size=4)
    try:
        stack = await _stack(pool)
        if args.agents_only:
            return {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "agents": await _agents(stack, args),
            }
        if args.hooks_only:
            return {
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "hooks": await _hooks(stack, args),
            }
        _progress("ceilings: bare HTTP endpoint, Kafka produce+consume, Postgres batched writes")
        http = await ceilings.http_ceiling(args.ceiling_requests, args.concurrency)
        kafka = await ceilings.kafka_ceiling(
            KafkaSettings(bootstrap_servers=stack.bootstrap, topic_prefix="bench.", partitions=6),
            args.ceiling_events,
        )
        postgres = await ceilings.postgres_ceiling(infra["DATABASE_URL"], args.ceiling_rows)
        ceiling = {
            "http_requests_per_s": http["per_second"],
            "kafka_events_per_s": kafka["per_second"],
            "postgres_rows_per_s": postgres["per_second"],
        }
        signing = None
        if args.signing_seconds:
            _progress(f"issuing CA's signing cost, in process: {args.signing_seconds} CPU s each")
            signing = identity.signing_cost(args.signing_seconds)
        _progress(f"storm: {args.devices} devices, two-call boot, {args.concurrency} at once")
        two = await storms.storm(stack, args.devices, two_call=True, concurrency=args.concurrency)
        _progress(f"  {two['devices_per_s']} devices/s")
        identity_storms = None
        if args.identity_rounds:
            identity_storms = await identity.run(
                _identity_storm(stack, args), args.identity_rounds, first_code=two
            )
            identity_storms["signing"] = signing
            for each in identity_storms["storms"]:
                each["ratio_to_ceiling"] = _ratio(each, ceiling)
        _progress("storm: five-call boot")
        five = await storms.storm(stack, args.devices, two_call=False, concurrency=args.concurrency)
        two["ratio_to_ceiling"], five["ratio_to_ceiling"] = _ratio(two, ceiling), _ratio(five, ceiling)
        offered = round(0.75 * two["devices_per_s"], 1)
        _progress(
            f"  {five['devices_per_s']} devices/s; open loop: {args.open_loop_devices} devices at {offered}/s"
        )
        open_loop = await storms.storm(stack, args.open_loop_devices, two_call=True, rate_per_s=offered)
        result: dict[str, Any] = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "ceilings": {"http": http, "kafka": kafka, "postgres": postgres, **ceiling},
            "boot_two_call": two,
            "boot_five_call": five,
            "open_loop": open_loop,
        }
        if identity_storms is not None:
            result["identity"] = identity_storms
        elif signing is not None:
            result["identity"] = {"signing": signing}
        if args.bulk_rows:
            _progress(
                f"bulk: {args.bulk_rows} rows uploaded, validated and published, and COPY of the same rows"
            )
            result["bulk"] = await bulk.run(args.bulk_rows)
        if args.scale_out_devices:
            _progress(
                f"two instances: a {args.scale_out_devices}-device storm and two {args.scale_out_rows}-row publishes"
            )
            result["scale_out"] = await scaleout.run(stack, args.scale_out_devices, args.scale_out_rows)
        if args.agents:
            result["agents"] = await _agents(stack, args)
            result["agents"]["ratios"]["devices_per_s_to_run_two_call"] = round(
                result["agents"]["storm"]["devices_per_s"] / max(two["devices_per_s"], 1e-9), 3
            )
        if args.hook_rounds or args.hook_outage_devices:
            result["hooks"] = await _hooks(stack, args)
        return result
    finally:
        await pool.close()


def _identity_storm(stack: storms.Stack, args: argparse.Namespace) -> identity.Storm:
    """One two-call storm of a mode of issue 25, as the run's code storm (same devices and
    concurrency); the CSR devices all send one P-256 request (the intake caches nothing by
    it: each registration's CSR is decoded, parsed and its signature checked)."""
    csr = device_csr()

    async def storm(mode: identity.Mode) -> dict[str, Any]:
        _progress(f"storm: {args.devices} devices, two-call boot, {mode}")
        result = await storms.storm(
            stack,
            args.devices,
            two_call=True,
            concurrency=args.concurrency,
            attestation="derived_key" if mode == "derived_key" else "code",
            csr=csr if mode == "csr" else "",
        )
        certificates = f", {result['certificates_per_s']} certificates/s" if mode == "csr" else ""
        _progress(f"  {result['devices_per_s']} devices/s{certificates}, {result['errors']} errors")
        return result

    return storm


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """var/bench/summary.json, in the shape docs/performance.md#the-summary-file gives."""

    def boot(storm: dict[str, Any]) -> dict[str, Any]:
        keys = ("devices", "devices_per_s", "ratio_to_ceiling", "p50_ms", "p95_ms", "p99_ms", "errors")
        return {k: storm[k] for k in keys} | {"lost": storm["lost"], "duplicated": storm["duplicated"]}

    out: dict[str, Any] = {}
    if "boot_two_call" in result:  # not with --agents-only
        loop = result["open_loop"]
        out |= {
            "boot_two_call": boot(result["boot_two_call"]),
            "boot_five_call": boot(result["boot_five_call"]),
            "open_loop": {
                "offered_per_s": loop["offered_per_s"],
                "p99_ms": loop["p99_ms"],
                "errors": loop["errors"],
            },
            "ceilings": {
                k: result["ceilings"][k]
                for k in ("http_requests_per_s", "kafka_events_per_s", "postgres_rows_per_s")
            },
        }
    if "identity" in result:
        out["identity"] = identity_summary(result["identity"])
    if "bulk" in result:
        b = result["bulk"]
        keys = (
            "rows",
            "validate_s",
            "publish_s",
            "peak_rss_mb",
            "validate_ratio_to_baseline",
            "publish_ratio_to_baseline",
        )
        out["bulk"] = {k: b[k] for k in keys} | {"baseline_copy_s": b["baseline_copy_s"]}
    if "scale_out" in result:
        out["scale_out"] = result["scale_out"]
    if "agents" in result:
        out["agent"] = agents.summary(result["agents"])
    if "hooks" in result:
        out["hook"] = hooks.summary(result["hooks"])
    return out


def identity_summary(found: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of issue 25's storms and signing cost (summary.json's ``identity``)."""
    out: dict[str, Any] = {
        k: found[k]
        for k in ("median_devices_per_s", "median_certificates_per_s", "derived_to_code", "csr_to_code")
        if k in found
    }
    if "storms" in found:
        out["median_cpu_ms_per_device"] = found.get("median_cpu_ms_per_device", {})
        out["errors"] = found["errors"]
        out["targets"] = found["targets"]
        out["storms"] = [
            {k: s.get(k) for k in ("mode", "devices_per_s", "certificates_per_s", "p99_ms", "errors")}
            for s in found["storms"]
        ]
    if found.get("signing"):
        out["signing_per_s_per_core"] = {
            k: v["per_s_per_core"] for k, v in found["signing"].items() if isinstance(v, dict)
        }
    return out


def _cpu_columns(cpu: dict[str, float]) -> str:
    if not cpu:
        return "-"
    return "/".join(f"{cpu.get(k, 0.0):.2f}" for k in ("intake", "postgres", "total"))


def report_identity(found: dict[str, Any]) -> None:
    if "storms" in found:
        print_table(
            [
                (
                    s["position"] + 1,
                    s["mode"],
                    s["devices"],
                    s["devices_per_s"],
                    s.get("certificates_per_s", "-"),
                    s["p50_ms"],
                    s["p99_ms"],
                    s["errors"],
                    s["lost"],
                    s["duplicated"],
                    f"{s['per_device']['http_requests']}/{s['per_device']['kafka_records']}/{s['per_device']['postgres_rows']}",
                    _cpu_columns(s.get("cpu_ms_per_device") or {}),
                )
                for s in found["storms"]
            ],
            [
                "#",
                "two-call storm",
                "devices",
                "devices/s",
                "certificates/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "lost",
                "duplicated",
                "per device: http/kafka/pg",
                "CPU ms per device: intake/postgres/all",
            ],
        )
        medians, targets = found["median_devices_per_s"], found["targets"]
        print(
            f"medians: code {medians['code']}, derived_key {medians['derived_key']} devices/s: "
            f"derived/code {found['derived_to_code']} (target >= {targets['derived_to_code_at_least']}: "
            f"{'met' if targets['derived_met'] else 'MISSED'}); CSR {medians['csr']} devices/s, "
            f"{found['median_certificates_per_s']} certificates/s (target >= "
            f"{targets['certificates_per_s_at_least']}: {'met' if targets['certificates_met'] else 'MISSED'})"
        )
    if found.get("signing"):
        sign = found["signing"]
        print_table(
            [
                ("ECDSA P-256 signature alone", sign["ecdsa_sign"]["per_s_per_core"]),
                ("device certificate: build + sign + DER", sign["device_certificate"]["per_s_per_core"]),
                ("CSR check: decode, parse, verify", sign["csr_check"]["per_s_per_core"]),
            ],
            [f"issuing CA ({sign['ca_key']}), in process, no I/O", "per second per core"],
        )


def report(result: dict[str, Any]) -> None:
    if "ceilings" in result:
        report_storms(result)
    if "agents" in result:
        report_agents(result["agents"])
    if "hooks" in result:
        report_hooks(result["hooks"])


def report_hooks(found: dict[str, Any]) -> None:
    if "with_and_without" in found:
        pairs = found["with_and_without"]
        print_table(
            [
                (
                    "20 ms hook" if s["hooked"] else "no hook",
                    s["devices"],
                    s["devices_per_s"],
                    s["p50_ms"],
                    s["p99_ms"],
                    s["errors"],
                    s["lost"],
                    s["duplicated"],
                    (s.get("hook") or {}).get("own_p99_ms", "-"),
                    (s.get("hook") or {}).get("notifier_p99_ms", "-"),
                    _cpu_columns(s.get("cpu_ms_per_device") or {}),
                )
                for s in pairs["storms"]
            ],
            [
                "two-call storm",
                "devices",
                "devices/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "lost",
                "duplicated",
                "hook's own p99 ms",
                "notifier's call p99 ms",
                "CPU ms per device: intake/postgres/all",
            ],
        )
        targets = pairs["targets"]
        print(
            f"medians: devices/s with/without {pairs['devices_per_s_ratio']} (target >= "
            f"{targets['devices_per_s_ratio_at_least']}: {'met' if targets['ratio_met'] else 'MISSED'}); "
            f"p99 {pairs['median_p99_ms']['with_hook']} ms with, {pairs['median_p99_ms']['without_hook']} "
            f"without, the hook's own p99 {pairs['hook_own_p99_ms']} ms: bound {pairs['p99_bound_ms']} ms "
            f"({'met' if targets['p99_met'] else 'MISSED'})"
        )
    if "outage" in found:
        o = found["outage"]
        targets = o["targets"]
        print_table(
            [
                (
                    f"{o['devices']} devices, {o['concurrency']} at once, hook down {o['hook_down_s']:.0f} s",
                    o["devices_per_s"],
                    o["refused"],
                    o["lost"],
                    o["duplicated"],
                    o["errors"],
                    o["waiting_at_return"],
                    o["first_ready_after_return_s"],
                    o["all_waiting_ready_after_return_s"],
                )
            ],
            [
                "hook outage storm",
                "devices/s",
                "refused",
                "lost",
                "duplicated",
                "errors",
                "waiting at return",
                "first ready s after return",
                "all waiting ready s after return",
            ],
        )
        print(
            f"call rows {o['call_rows']}; targets: 0 refused {'met' if targets['refused_met'] else 'MISSED'}, "
            f"0 lost {'met' if targets['lost_met'] else 'MISSED'}, recovery within "
            f"{targets['recovery_within_s']} s {'met' if targets['recovery_met'] else 'MISSED'}"
        )


def report_agents(found: dict[str, Any]) -> None:
    if found["boots"]:
        print_table(
            [
                (
                    shell,
                    phase,
                    f["boots"],
                    f["p50_ms"],
                    f["p95_ms"],
                    f["cpu_ms_per_boot"],
                    f["cpu_ms_p95"],
                    f["errors"],
                )
                for shell, phases in found["boots"]["shells"].items()
                for phase, f in phases.items()
            ],
            [
                "agent, one boot at a time",
                "boot",
                "boots",
                "p50 ms",
                "p95 ms",
                "CPU ms per boot",
                "CPU ms p95",
                "errors",
            ],
        )
    storm, sim, ratios = found["storm"], found["simulator_storm"], found["ratios"]
    print_table(
        [
            (
                f"simulator, two-call, {sim['devices']} at once",
                sim["devices_per_s"],
                sim["p50_ms"],
                sim["p99_ms"],
                sim["errors"],
                sim["cpu_ms_per_device"].get("load_generator", "-"),
                "-",
            ),
            (
                f"agents, {storm['agents']} at once from {storm['sources']} addresses",
                storm["devices_per_s"],
                storm["p50_ms"],
                storm["p99_ms"],
                storm["errors"],
                storm["cpu_ms_per_device"]["agents"],
                "ok" if storm["registry_ok"] else "; ".join(storm["registry_problems"][:3]),
            ),
            (
                "agents / simulator",
                ratios["devices_per_s"],
                ratios["p50_ms"],
                ratios["p99_ms"],
                "",
                ratios["client_cpu_ms_per_device"],
                "",
            ),
        ],
        ["storm", "devices/s", "p50 ms", "p99 ms", "errors", "client CPU ms per device", "registry"],
    )
    print(
        f"CPU per device, agents / simulator: intake {ratios['intake_cpu_ms_per_device']}, "
        f"server side (services, Kafka, Postgres) {ratios['server_cpu_ms_per_device']}"
    )


def report_storms(result: dict[str, Any]) -> None:
    c = result["ceilings"]
    print_table(
        [
            ("HTTP: bare aiohttp endpoint", "requests/s", c["http_requests_per_s"]),
            ("Kafka: produce + consume", "events/s", c["kafka_events_per_s"]),
            ("Postgres: batched row writes", "rows/s", c["postgres_rows_per_s"]),
        ],
        ["ceiling (same run)", "unit", "per second"],
    )
    rows = []
    for name, key in (
        ("two-call boot", "boot_two_call"),
        ("five-call boot", "boot_five_call"),
        ("open loop (two-call)", "open_loop"),
    ):
        s = result[key]
        rows.append(
            (
                name,
                s["devices"],
                s["offered_per_s"] or "-",
                s["devices_per_s"],
                s.get("ratio_to_ceiling", "-"),
                s["p50_ms"],
                s["p99_ms"],
                s["errors"],
                s["lost"],
                s["duplicated"],
                f"{s['per_device']['http_requests']}/{s['per_device']['kafka_records']}/{s['per_device']['postgres_rows']}",
                s["load_generator_cpu_share_of_one_core"],
            )
        )
    print_table(
        rows,
        [
            "storm",
            "devices",
            "offered/s",
            "devices/s",
            "ratio to ceiling",
            "p50 ms",
            "p99 ms",
            "errors",
            "lost",
            "duplicated",
            "per device: http/kafka/pg",
            "client CPU (cores)",
        ],
    )
    if "identity" in result:
        report_identity(result["identity"])
    if "bulk" in result:
        report_bulk(result["bulk"])
    if "scale_out" in result:
        so = result["scale_out"]
        print_table(
            [(svc, v["records_per_instance"], v["instances_working"]) for svc, v in so["spread"].items()],
            ["two instances", "records per instance", "instances that worked"],
        )
        print(f"storm on two instances: {so['storm']}")


def report_bulk(result: dict[str, Any]) -> None:
    rows = [
        ("baseline: csv.reader over the file, locally", result["baseline_local_csv_parse_s"], "-", "-"),
        ("baseline: COPY into a table like devices", result["baseline_copy_s"], "-", "1.00"),
        (
            "upload, stream, validate, store",
            result["validate_s"],
            result["upload_rows_per_s"],
            f"{result['validate_ratio_to_baseline']:.2f}",
        ),
        (
            "publish (rows -> offline devices)",
            result["publish_s"],
            result["publish_rows_per_s"],
            f"{result['publish_ratio_to_baseline']:.2f}",
        ),
    ]
    print_table(rows, ["bulk ingestion", "seconds", "rows per second", "COPY time / our time"])
    print(
        f"{result['rows']} rows, {result['file_mb']} MB; ingestion service peak RSS "
        f"{result['peak_rss_mb']} MB (before: {result['ingestion_rss_before_mb']} MB)"
    )


def _write(name: str, result: dict[str, Any]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {OUT / name}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000, help="devices in each boot storm (100000)")
    parser.add_argument(
        "--open-loop-devices", type=int, default=100_000, help="devices of the open-loop storm (100000)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=200, help="devices booting at once, closed loop (200)"
    )
    parser.add_argument(
        "--identity-rounds",
        type=int,
        default=2,
        help="rounds of two-call storms of issue 25 (code, derived_key, CSR; odd rounds reversed), "
        "each of --devices devices; the run's two-call storm is the first code storm (2; 0: skip)",
    )
    parser.add_argument(
        "--signing-seconds",
        type=float,
        default=2.0,
        help="CPU seconds of each in-process measure of the issuing CA's signing cost (2.0; 0: skip)",
    )
    parser.add_argument("--ceiling-requests", type=int, default=30_000)
    parser.add_argument("--ceiling-events", type=int, default=100_000)
    parser.add_argument("--ceiling-rows", type=int, default=200_000)
    parser.add_argument("--bulk-rows", type=int, default=1_000_000, help="rows of the bulk CSV (0: skip)")
    parser.add_argument(
        "--scale-out-devices", type=int, default=20_000, help="storm on two instances (0: skip)"
    )
    parser.add_argument("--scale-out-rows", type=int, default=100_000, help="rows of each of two publishes")
    parser.add_argument(
        "--agents",
        type=int,
        default=500,
        help="device agents booting at once in the agent storm, and simulated devices in its "
        "comparison storm (500; 0: skip the agent part)",
    )
    parser.add_argument(
        "--agent-sources", type=int, default=5, help="loopback addresses the agent storm comes from (5)"
    )
    parser.add_argument(
        "--agent-boots", type=int, default=10, help="agent boots one at a time under each shell (10; 0: skip)"
    )
    parser.add_argument(
        "--agents-only", action="store_true", help="run only the device agent part (boots, storms, ratios)"
    )
    parser.add_argument(
        "--hook-devices",
        type=int,
        default=4000,
        help="devices of each storm without and with a 20 ms registration hook (4000)",
    )
    parser.add_argument(
        "--hook-rounds",
        type=int,
        default=2,
        help="rounds of a storm without and one with the 20 ms hook, odd rounds reversed (2; 0: skip)",
    )
    parser.add_argument(
        "--hook-outage-devices",
        type=int,
        default=20_000,
        help="devices of the storm whose registration hook is down at its start (20000; 0: skip)",
    )
    parser.add_argument(
        "--hook-outage-seconds", type=float, default=30.0, help="how long the hook is down (30)"
    )
    parser.add_argument(
        "--hooks-only",
        action="store_true",
        help="run only the registration hook part (with and without a 20 ms hook, the outage storm)",
    )
    arguments = parser.parse_args()
    use_fast_event_loop()
    use_fewer_collections()  # as fleetreg simulate does: the load generator's GC is part of every figure
    outcome = asyncio.run(main(arguments))
    report(outcome)
    _write("bench.json", outcome)
    _write("summary.json", summary(outcome))
