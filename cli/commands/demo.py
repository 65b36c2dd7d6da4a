"""``fleetreg demo``: the main job on a fresh machine, shown end to end.

Auto registration: a product (ssh and web) is defined and locked, auto
registration starts, and a fleet of simulated devices (some clones of another
device's image, some retrying a lost answer) boots at once.
Bulk registration: a CSV of devices is uploaded, published (the devices appear
offline), and those devices boot and claim their registrations with their keys.
Webhooks: a receiver started by the demo gets the events of both, signed.
Derived keys: a product whose devices each prove a key derived from a group key and their
hardware ID (docs/device-identity.md): how a factory derives one, then a fleet boots.
Real device agents: a handful of boards run agent/fleetreg-agent (the POSIX sh agent),
booting with the auto product's code beside the simulated fleet.
Registration hook: the reference hook (examples/registration_hook.py) approves each
device of a product against a CSV of serials, naming and enriching the listed ones and
denying the others (docs/registration-hook.md).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from cli.agents import AgentBoot, boot_agents
from cli.client import OperatorClient, operator_client
from cli.commands.bulk import BULK_URL, remember_upload
from cli.commands.devices import fetch_devices
from cli.commands.simulate import print_summary, progress_bar
from cli.config import ConfigError, load_endpoints, require
from cli.endpoints import DEMO_OWNER, OWNER_INVITATION_FILE
from cli.errors import CliError
from cli.output import emit_json, print_table, progress
from cli.reference_hook import free_port, reference_hook
from cli.simulate import Summary, plan_bulk, plan_fleet, run_fleet
from cli.webhook_receiver import DemoReceiver

DEMO_CSV = Path("var") / "demo" / "bulk.csv"
DEMO_AGENTS = Path("var") / "demo" / "agents"
DEMO_SERIALS = Path("var") / "demo" / "serials.csv"
DEMO_EVENTS = ["device.registered", "device.clone_detected", "device.provisioned", "bulk.published"]


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    parser = groups.add_parser("demo", parents=[common], help="run the demo against the running system")
    parser.add_argument("--devices", type=int, default=1000, help="auto-registering devices to boot (1000)")
    parser.add_argument("--clone-rate", type=float, default=0.05, help="share of cloned images (0.05)")
    parser.add_argument("--bulk-devices", type=int, default=200, help="devices in the bulk CSV (200)")
    parser.add_argument("--concurrency", type=int, default=100, help="devices booting at once (100)")
    parser.add_argument(
        "--derived-devices",
        type=int,
        default=50,
        help="devices of the derived-key product to boot (50; 0: none)",
    )
    parser.add_argument(
        "--agents",
        type=int,
        default=5,
        help="boards running the real device agent (agent/fleetreg-agent) beside the fleet (5; 0: none)",
    )
    parser.add_argument(
        "--hook-devices",
        type=int,
        default=40,
        help="devices of the product approved by the reference registration hook (40; 0: none)",
    )
    parser.set_defaults(run=run)


# How to sign in to the console: the command that shows the key, not the key. The demo's
# output gets pasted into issues, CI logs and screen shares; the key is the demo account's
# full-access key and outlives the demo, while var/endpoints.env is readable by this user
# only (mode 600).
SHOW_KEY = "grep '^FLEETREG_ADMIN_TOKEN=' var/endpoints.env | cut -d= -f2-"
SHOW_OWNER_LINK = f"cat var/{OWNER_INVITATION_FILE}"


def console_hint(endpoints: dict[str, str]) -> list[str]:
    """Where the console is (the operator URL + /console/) and how to sign in to it."""
    console = endpoints.get("FLEETREG_ADMIN_URL", "http://127.0.0.1:18081").rstrip("/") + "/console/"
    return [
        f"Console: {console} (this demo's storm, live: {console}live)",
        f"Sign in as the demo account's owner, {DEMO_OWNER}, with your password. The first time, open",
        f"the owner's invitation link and choose one: show the link with: {SHOW_OWNER_LINK}",
        f"(until the owner joins, the demo account's API key signs in too: {SHOW_KEY};",
        "links and keys are not printed here: terminal output ends up in logs and screen shares)",
    ]


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def _product(client: OperatorClient, prefix: str) -> dict[str, Any]:
    product = await client.post(
        "/v1/products",
        {
            "name": f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}",
            "services": [{"type": "ssh", "port": 22}, {"type": "web", "port": 80}],
        },
    )
    print(
        f"product {product['name']}: services "
        + ", ".join(f"{s['name']} ({s['type']}:{s['port']})" for s in product["services"])
    )
    locked: dict[str, Any] = await client.post(f"/v1/products/{product['id']}/lock")
    code = locked["bulk_identification_code"]
    print(f"locked: bulk identification code {code[:8]}-****-****-****-************ (kept secret)")
    return locked


async def _settled(client: OperatorClient, registration_id: str, expected: int) -> list[dict[str, Any]]:
    """The registration's devices once every confirmation has reached the registry."""
    devices: list[dict[str, Any]] = []
    for _ in range(50):
        devices = await fetch_devices(client, {"registration_id": registration_id}, None)
        if len(devices) >= expected and all(d["lifecycle"] == "provisioned" for d in devices):
            break
        await asyncio.sleep(0.2)
    return devices


def _states(devices: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for device in devices:
        counts[device["state"]] = counts.get(device["state"], 0) + 1
    return ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))


async def _agents(device_url: str, code: str, count: int) -> list[AgentBoot]:
    """The real agents' boots ([] when there are none to run: the demo goes on without)."""
    if count <= 0:
        return []
    try:
        return await boot_agents(device_url, code, count, DEMO_AGENTS.resolve())
    except RuntimeError as exc:
        print(f"(no real device agents: {exc})")
        return []


def _show_agents(boots: list[AgentBoot], devices: list[dict[str, Any]]) -> None:
    by_id = {d["id"]: d for d in devices}
    print_table(
        [
            (
                b.hardware_id,
                b.device_id or "-",
                by_id.get(b.device_id, {}).get("lifecycle", "-"),
                f"{b.seconds:.1f}",
                "provisioned" if b.code == 0 else f"exit {b.code}: {b.last_line}",
            )
            for b in boots
        ],
        ["hardware id", "device id", "lifecycle", "boot s", "agent"],
    )
    print(f"their state and files: {DEMO_AGENTS}/board-N/ (the log of each: agent.log)")


async def _auto_demo(
    args: argparse.Namespace, device_url: str
) -> tuple[Summary, list[dict[str, Any]], list[AgentBoot]]:
    async with operator_client() as client:
        _step("1. Auto registration: define and lock a product; its code goes into the factory image")
        product = await _product(client, "demo-auto")
        registration = await client.post("/v1/auto-registrations", {"product_id": product["id"]})
        print(f"auto registration {registration['id']} is {registration['status']}")
        agents = max(args.agents, 0)
        beside = f", and {agents} boards running the real device agent beside them" if agents else ""
        _step(
            f"2. Power on {args.devices} devices at once "
            f"({args.clone_rate:.0%} are clones of another's SD card){beside}"
        )
        code = product["bulk_identification_code"]
        plan = plan_fleet(code, args.devices, args.clone_rate, seed=None)
        booting = asyncio.create_task(_agents(device_url, code, agents))
        summary = await run_fleet(plan, device_url, args.concurrency, progress_bar(args.devices))
        print_summary(summary)
        boots = await booting
        devices = await _settled(client, registration["id"], args.devices + len(boots))
    if boots:
        _step(f"2b. The real device agents (agent/fleetreg-agent): {len(boots)} boards, their device IDs")
        _show_agents(boots, devices)
    _step("3. The registry: each clone was given the next free indexed hardware ID")
    clones = sorted(
        (d for d in devices if d["hardware_id"] != d["claimed_hardware_id"]), key=lambda d: d["hardware_id"]
    )
    print_table(
        [(d["claimed_hardware_id"], d["hardware_id"], d["name"], d["state"]) for d in clones[:5]],
        ["claimed hardware id", "assigned", "name", "state"],
    )
    print(f"... {len(clones)} clones in all; devices: {_states(devices)}")
    return summary, devices, boots


# How a factory line derives a device's key offline, in POSIX sh (docs/device-identity.md).
FACTORY_SH = (
    "hexkey() {{ printf '%s' \"$1\" | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \\n'; }}\n"
    "printf '%s' '{hardware_id}' | openssl dgst -sha256 -mac HMAC "
    '-macopt "hexkey:$(hexkey "$GROUP_KEY")" -binary | openssl base64 -A'
)


async def _derived_demo(devices: int, concurrency: int, device_url: str) -> Summary:
    """A derived_key product: its group keys (shown once), one device key derived by the
    server as a factory line asks for it (and the sh that gives the same offline), then
    ``devices`` boards booting, each proving its own key."""
    async with operator_client() as client:
        _step("Derived keys: each device proves its own key, derived from a group key and its hardware ID")
        product = await _product(client, "demo-derived")
        registration = await client.post(
            "/v1/auto-registrations", {"product_id": product["id"], "attestation": "derived_key"}
        )
        group_key = registration["primary_key"]
        print(
            f"auto registration {registration['id']} (attestation derived_key): group keys shown once, "
            f"primary {group_key[:6]}... (kept offline, never in a factory image)"
        )
        plan = plan_fleet(product["bulk_identification_code"], devices, 0.0, seed=None)
        example = plan.devices[0].hardware_id
        derived = await client.post(
            f"/v1/auto-registrations/{registration['id']}/derive-key", {"hardware_id": example}
        )
        print(
            f"a factory line writes each board's own key: fleetreg auto derive-key {registration['id']} "
            f"--hardware-id {example}"
        )
        print(f"  -> {derived['device_key'][:6]}... (audited); offline, with the group key in $GROUP_KEY:")
        print("\n".join("  " + line for line in FACTORY_SH.format(hardware_id=example).splitlines()))
        summary = await run_fleet(
            replace(plan, group_key=group_key), device_url, concurrency, progress_bar(devices)
        )
        print_summary(summary)
    return summary


def _write_csv(path: Path, rows: int) -> list[tuple[str, str]]:
    listed = [(secrets.token_hex(6), secrets.token_hex(8)) for _ in range(rows)]  # (hardware ID, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A,CATEGORY_B"]
    lines += [
        f"{key},{hardware_id},Sensor {i + 1},site-{i % 3 + 1}," for i, (hardware_id, key) in enumerate(listed)
    ]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="ascii")
    return listed


async def _bulk_demo(rows: int, concurrency: int) -> tuple[Summary, list[dict[str, Any]]]:
    device_url = require(load_endpoints(), "FLEETREG_DEVICE_URL")
    async with operator_client() as client:
        _step("4. Bulk registration: a product, and a CSV of devices with their registration keys")
        product = await _product(client, "demo-bulk")
        listed = await asyncio.to_thread(_write_csv, DEMO_CSV, rows)
        print(f"{DEMO_CSV}: {rows} rows (REGISTRATION_KEY,HARDWARE_ID,DEVICE_NAME,CATEGORY_A,CATEGORY_B)")
        async with operator_client(BULK_URL) as bulk:
            content = await asyncio.to_thread(DEMO_CSV.read_bytes)
            uploaded = await bulk.call(
                "POST",
                "/v1/bulk-registrations",
                params={"product_id": product["id"], "file_name": DEMO_CSV.name},
                data=io.BytesIO(content),
                headers={"Content-Type": "text/csv"},
            )
            remember_upload(uploaded["id"], DEMO_CSV)
            print(f"bulk registration {uploaded['id']}: {uploaded['status']}, {uploaded['rows']} rows")
            _step("5. Publish: the devices appear in the account, offline")
            state = await bulk.post(f"/v1/bulk-registrations/{uploaded['id']}/publish")
            while state["status"] != "preregistered":
                progress(state["published"] + state["conflicts"], state["rows"], "publishing")
                await asyncio.sleep(0.3)
                state = await bulk.get(f"/v1/bulk-registrations/{uploaded['id']}")
            progress(state["rows"], state["rows"], "publishing")
        before = await fetch_devices(client, {"registration_id": uploaded["id"]}, None)
        print(f"published {state['published']} devices: {_states(before)}")
        _step("6. The listed devices boot and claim their registrations with their keys")
        plan = plan_bulk(product["bulk_identification_code"], listed, seed=None)
        summary = await run_fleet(plan, device_url, concurrency, progress_bar(rows))
        print_summary(summary)
        after = await _settled(client, uploaded["id"], rows)
        print(f"devices: {_states(after)}")
    return summary, after


async def _start_webhook(receiver: DemoReceiver) -> str | None:
    """A webhook of the demo's events to the demo's receiver; None when the deployment
    refuses a local URL (FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS=false)."""
    _step("0. Webhooks: a receiver on this machine gets the account's events, signed")
    await receiver.start()
    async with operator_client() as client:
        try:
            created = await client.post("/v1/webhooks", {"url": receiver.url, "events": DEMO_EVENTS})
        except CliError as exc:
            print(f"no webhook: {exc}")
            return None
    receiver.secret = created["secret"]
    print(f"webhook {created['id']} -> {receiver.url}: {', '.join(DEMO_EVENTS)}")
    return str(created["id"])


async def _show_webhooks(receiver: DemoReceiver, webhook_id: str, expected: dict[str, int]) -> None:
    _step("7. Webhooks delivered (each signature verified with the standardwebhooks package)")
    complete = await receiver.wait_for(expected, within_s=60)
    print_table(
        [(kind, receiver.counts[kind], expected.get(kind, "")) for kind in DEMO_EVENTS],
        ["event", "delivered", "expected"],
    )
    if not complete:
        print("(not everything arrived within 60 s: see fleetreg webhooks deliveries " + webhook_id + ")")
    if receiver.bad_signatures:
        print(f"{receiver.bad_signatures} request(s) with a bad signature were refused")
    async with operator_client() as client:  # the receiver stops with the demo: so does its webhook
        await client.call("DELETE", f"/v1/webhooks/{webhook_id}")


# Of the hook demo's devices, one in this many is not in the maker's serials: denied.
HOOK_UNLISTED_EVERY = 8


def _write_serials(path: Path, hardware_ids: list[str]) -> None:
    """The maker's production records for the reference hook: hardware ID, the name and
    categories it gives the device, and data columns delivered to it as a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["hardware_id,name,category_a,category_b,site,batch"]
    lines += [f"{h},pump-{i:04d},pumps,line-{1 + i % 3},Lyon,2026-12" for i, h in enumerate(hardware_ids)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


async def _hook_demo(devices: int, concurrency: int, device_url: str) -> tuple[Summary, Summary]:
    """A product whose auto registration asks the reference hook about every device: the
    listed ones are allowed with their name, categories and data; the others denied.
    Returns the listed devices' summary and the unlisted ones'."""
    async with operator_client() as client:
        _step(
            "8. Registration hook: the maker's own service approves each device "
            "(examples/registration_hook.py)"
        )
        product = await _product(client, "demo-hook")
        plan = plan_fleet(
            product["bulk_identification_code"], devices, 0.0, lost_response_rate=0.0, seed=None
        )
        unlisted = {d.index for d in plan.devices if d.index % HOOK_UNLISTED_EVERY == HOOK_UNLISTED_EVERY - 1}
        listed = [d for d in plan.devices if d.index not in unlisted]
        _write_serials(DEMO_SERIALS, [d.hardware_id for d in listed])
        port = free_port()
        registration = await client.post(
            "/v1/auto-registrations",
            {"product_id": product["id"], "hook_url": f"http://127.0.0.1:{port}/approve"},
        )
        secret = registration["hook_secret"]
        print(
            f"auto registration {registration['id']} with a hook: http://127.0.0.1:{port}/approve "
            "(its signing secret, shown once, is not printed: the hook reads it from FLEETREG_HOOK_SECRET)"
        )
        async with reference_hook(DEMO_SERIALS.resolve(), secret, port):
            print(f"reference hook running: {len(listed)} serials listed in {DEMO_SERIALS}")
            tested = await client.post(
                f"/v1/auto-registrations/{registration['id']}/hook/test",
                {"hardware_id": listed[0].hardware_id},
            )
            print(
                f"fleetreg auto hook-test {registration['id']} --hardware-id {listed[0].hardware_id}: "
                f"{tested['outcome']} in {tested['latency_ms']} ms"
            )
            allowed = await run_fleet(replace(plan, devices=tuple(listed)), device_url, concurrency, None)
            denied = await run_fleet(
                replace(plan, devices=tuple(d for d in plan.devices if d.index in unlisted)),
                device_url,
                concurrency,
                None,
            )
        found = await fetch_devices(client, {"registration_id": registration["id"]}, None)
        calls = await client.get(f"/v1/auto-registrations/{registration['id']}/hook/calls?limit=500")
    print_table(
        [(d["hardware_id"], d["name"], d["category_a"], d["category_b"], d["state"]) for d in found[:5]],
        ["hardware id", "name (from the hook)", "category a", "category b", "state"],
    )
    outcomes: dict[str, int] = {}
    for call in calls["calls"]:
        outcomes[call["outcome"]] = outcomes.get(call["outcome"], 0) + 1
    print(
        f"{allowed.provisioned} listed devices allowed, named and given their data file; "
        f"{len(unlisted)} unlisted devices, {denied.error_kinds.get('refused', 0)} refused; "
        f"hook calls: " + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
    )
    return allowed, denied


async def run(args: argparse.Namespace) -> int:
    try:
        device_url = require(load_endpoints(), "FLEETREG_DEVICE_URL")
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    receiver = DemoReceiver()
    _step("The web console: open it now to watch the storm as it happens")
    print("\n".join(console_hint(load_endpoints())), flush=True)
    try:
        webhook_id = await _start_webhook(receiver)
        auto_summary, auto_devices, agent_boots = await _auto_demo(args, device_url)
        bulk_summary, bulk_devices = await _bulk_demo(args.bulk_devices, args.concurrency)
        if webhook_id is not None:
            auto_clones = sum(1 for d in auto_devices if d["hardware_id"] != d["claimed_hardware_id"])
            expected = {
                "device.registered": len(auto_devices) - auto_clones + len(bulk_devices),
                "device.clone_detected": auto_clones,
                "device.provisioned": sum(
                    1 for d in auto_devices + bulk_devices if d["lifecycle"] == "provisioned"
                ),
                "bulk.published": 1,
            }
            await _show_webhooks(receiver, webhook_id, expected)
    finally:
        await receiver.stop()
    derived_summary = (
        await _derived_demo(args.derived_devices, args.concurrency, device_url)
        if args.derived_devices > 0
        else None
    )
    hooked = (
        await _hook_demo(args.hook_devices, args.concurrency, device_url) if args.hook_devices > 0 else None
    )

    _step("Summary")
    clones = sum(1 for d in auto_devices if d["hardware_id"] != d["claimed_hardware_id"])
    print(
        f"Auto registration: {len(auto_devices)} devices registered themselves, "
        f"{auto_summary.provisioned} downloaded and verified their files and confirmed, "
        f"{clones} clones were detected and renamed, {auto_summary.errors} errors; "
        f"{auto_summary.throughput_per_s} devices/s, p50 {auto_summary.latency_ms['p50']} ms, "
        f"p99 {auto_summary.latency_ms['p99']} ms."
    )
    print(
        f"Bulk registration: {len(bulk_devices)} devices uploaded and published, "
        f"{bulk_summary.provisioned} claimed with their keys and provisioned, {bulk_summary.errors} errors."
    )
    if agent_boots:
        print(
            f"Real device agents: {sum(1 for b in agent_boots if b.code == 0)} of {len(agent_boots)} boards "
            f"provisioned by agent/fleetreg-agent: "
            + ", ".join(f"{b.hardware_id} {b.device_id or '-'}" for b in agent_boots)
            + "."
        )
    if derived_summary is not None:
        print(
            f"Derived keys: {derived_summary.provisioned} devices proved their own keys, provisioned, "
            f"{derived_summary.errors} errors."
        )
    if hooked is not None:
        allowed, denied = hooked
        print(
            f"Registration hook: {allowed.provisioned} of {allowed.devices} listed devices allowed and "
            f"enriched by the reference hook, {denied.error_kinds.get('refused', 0)} of {denied.devices} "
            "unlisted devices denied."
        )
    print(
        "Explore: .venv/bin/fleetreg devices list --state online | .venv/bin/fleetreg bulk list | make down"
    )
    print("\n".join(console_hint(load_endpoints())))
    if args.json:
        webhooks = dict(receiver.counts)
        agents = [
            {"hardware_id": b.hardware_id, "device_id": b.device_id, "exit_code": b.code} for b in agent_boots
        ]
        emit_json(
            {
                "auto": auto_summary.to_dict(),
                "bulk": bulk_summary.to_dict(),
                "webhooks": webhooks,
                "agents": agents,
            }
        )
    derived_errors = derived_summary.errors if derived_summary is not None else 0
    agent_errors = sum(1 for b in agent_boots if b.code != 0)
    # The hook's demo: every listed device provisioned, every unlisted one refused.
    hook_errors = (
        hooked[0].errors + (hooked[1].devices - hooked[1].error_kinds.get("refused", 0))
        if hooked is not None
        else 0
    )
    if not (auto_summary.ok and bulk_summary.ok) or derived_errors or agent_errors or hook_errors:
        errors = auto_summary.errors + bulk_summary.errors + derived_errors + agent_errors + hook_errors
        raise CliError(f"the demo saw {errors} device error(s)")
    return 0
