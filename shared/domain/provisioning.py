"""Provisioning files: one per enabled service, plain ``key value`` lines.

The reference client needs ``#begin`` followed by the 36-character provisioning
ID on the next line. Rendering is deterministic, so the same inputs always give
the same bytes: the manifest's size and SHA-256 are computed once, at
generation, and the file is re-rendered on download without storing secrets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

UID_PREFIX = 0x80 << 56


def service_uid(sequence_number: int) -> str:
    """A service UID in the reference's form, e.g. ``80:00:00:00:01:00:00:02``."""
    value = UID_PREFIX | sequence_number
    return ":".join(f"{b:02X}" for b in value.to_bytes(8, "big"))


@dataclass(frozen=True)
class FileSpec:
    """What a provisioning file is made of, all of it non-secret but the password."""

    provisioning_id: str
    position: int
    service_name: str
    type_code: int
    port: int
    service_uid: str
    hardware_id: str
    device_name: str

    @property
    def file_name(self) -> str:
        return f"{self.position:02d}-{self.service_name}.conf"


@dataclass(frozen=True)
class ServiceRecipe:
    """What a product's service puts in each device's file (and in its manifest entry)."""

    provisioning_id: str  # the service's ID, upper case (the reference shows it so)
    position: int
    name: str
    service_type: str
    type_code: int
    port: int


def file_spec(service: ServiceRecipe, service_uid: str, hardware_id: str, device_name: str) -> FileSpec:
    """The provisioning-file recipe, in one place: rendering at provisioning and again on
    download must give the same bytes, or the download fails its digest check."""
    return FileSpec(
        provisioning_id=service.provisioning_id,
        position=service.position,
        service_name=service.name,
        type_code=service.type_code,
        port=service.port,
        service_uid=service_uid,
        hardware_id=hardware_id,
        device_name=device_name,
    )


def render(spec: FileSpec, password: str) -> bytes:
    lines = [
        "#begin",
        spec.provisioning_id,
        f"application_type {spec.type_code}",
        "proxy_dest_ip 127.0.0.1",
        f"proxy_dest_port {spec.port}",
        f"UID {spec.service_uid}",
        f"password {password}",
        f"service_name {spec.service_name}",
        f"hardware_id {spec.hardware_id}",
        f"device_name {spec.device_name}",
        "#end",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
