"""The reference device client (connectd's shell scripts over curl), as the protocol page
describes it: the same calls in the same order, and answers read the way the scripts
read them (no JSON parser: strip braces and quotes, split on commas, match whole keys)."""

from __future__ import annotations

import asyncio
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

KEYS = (
    "status",
    "uid",
    "secret",
    "projects",
    "reason",
    "HardwareId",
    "timestamp",
    "enabled",
    "content_type",
    "content_port",
    "content_ip",
    "content_test",
)


def read_answer(text: str) -> dict[str, str]:
    """What the shell client sees: key -> value; items after ``projects`` are its list."""
    stripped = text.replace("{", "").replace("}", "").replace('"', "")
    seen: dict[str, str] = {}
    last = ""
    for part in stripped.split(","):
        key, colon, value = part.partition(":")
        if colon and key in KEYS:
            seen[key] = value
            last = key
        elif last == "projects":
            seen["projects"] += "," + part
    return seen


@dataclass
class ReferenceDevice:
    """One device's files under /etc/connectd, as the client keeps them."""

    code: str
    hardware_id: str
    cpu_id: str = field(default_factory=lambda: secrets.token_hex(8))
    mac: str = field(default_factory=lambda: secrets.token_hex(6))
    registration_key: str = "not-used"
    files: dict[str, str] = field(default_factory=dict)  # provisioning ID -> file
    credentials: dict[str, tuple[str, str]] = field(default_factory=dict)  # provisioning ID -> (uid, secret)
    log: list[str] = field(default_factory=list)

    @property
    def device_secret(self) -> str:
        return self.credentials.get(self.code, ("", ""))[1]

    def clone_image(self, cpu_id: str | None = None) -> ReferenceDevice:
        """Another board booting a copy of this SD card: same files, other CPU and MAC."""
        return ReferenceDevice(
            self.code,
            self.hardware_id,
            cpu_id or secrets.token_hex(8),
            secrets.token_hex(6),
            self.registration_key,
            dict(self.files),
            dict(self.credentials),
        )

    def factory_reset(self) -> None:
        self.files.clear()
        self.credentials.clear()


class ReferenceClient:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, ca: Path) -> None:
        self._session = session
        self._base = base_url
        self._ssl = ssl.create_default_context(cafile=str(ca))
        self.calls: list[tuple[str, str, int, str]] = []

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
        async with self._session.request(
            method, self._base + path, json=body, ssl=self._ssl, headers={"content-type": "application/json"}
        ) as response:
            text = await response.text()
        self.calls.append((method, path, response.status, text))
        return response.status, text

    async def configuration(self, device: ReferenceDevice, provisioning_id: str) -> dict[str, str]:
        """The configuration call (step 4) for one service, as the client reads its answer:
        ``enabled``, ``timestamp`` (a changed value makes the client rewrite its config)..."""
        _, text = await self._call(
            "GET", f"/bulk/registration/configuration/{provisioning_id}/{device.hardware_id}/"
        )
        return read_answer(text)

    async def boot(self, device: ReferenceDevice, *, pending_retries: int = 100) -> str:
        """One boot: 'provisioned', 'reset' (the device took a new hardware ID and must boot
        again) or 'failed: <reason>' (it stops until the next boot)."""
        info = {
            "BulkIdentificationCode": device.code,
            "HardwareId": device.hardware_id,
            "MACAddress": device.mac,
            "CPUId": device.cpu_id,
            "OSLabel": "Raspbian 12",
            "R3Package": "connectd 4.9",
            "TCPServiceList": "22 80",
        }
        if device.device_secret:
            info["DeviceSecret"] = device.device_secret
        await self._call("POST", "/bulk/registration/device/information/", info)
        _, text = await self._call(
            "GET", f"/bulk/registration/device/friendly/configuration/{device.code}/{device.hardware_id}/"
        )
        answer = read_answer(text)
        if answer.get("status") == "reset":
            device.factory_reset()
            device.hardware_id = answer["HardwareId"]
            return "reset"
        if answer.get("status") != "true":
            return f"failed: {answer.get('reason', text)}"
        for provisioning_id in answer["projects"].split(","):
            if provisioning_id in device.credentials:
                continue
            if provisioning_id not in device.files:
                status, content = await self._call("GET", f"/project/provisioning/download/{provisioning_id}")
                lines = content.splitlines()
                if status != 200 or len(lines) < 2 or lines[0] != "#begin" or lines[1] != provisioning_id:
                    return f"failed: bad provisioning file for {provisioning_id}"
                device.files[provisioning_id] = content
            _, text = await self._call(
                "GET", f"/bulk/registration/configuration/{provisioning_id}/{device.hardware_id}/"
            )
            if read_answer(text).get("enabled") != "1":
                continue
            for _ in range(pending_retries):
                _, text = await self._call(
                    "POST",
                    "/bulk/registration/register",
                    {
                        "project_id": provisioning_id,
                        "hardware_id": device.hardware_id,
                        "registration_key": device.registration_key,
                    },
                )
                answer = read_answer(text)
                if answer.get("status") != "pending":
                    break
                await asyncio.sleep(0.2)  # the real client waits 30 s
            if answer.get("status") != "true":
                return f"failed: {answer.get('reason', text)}"
            device.credentials[provisioning_id] = (answer["uid"], answer["secret"])
        await self._call(
            "POST",
            "/bulk/registration/device/ready/",
            {
                "BulkIdentificationCode": device.code,
                "HardwareId": device.hardware_id,
                "DeviceSecret": device.device_secret,
                "ClaimCode": "48213",
            },
        )
        return "provisioned"
