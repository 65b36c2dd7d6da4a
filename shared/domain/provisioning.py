"""Provisioning files: one per enabled service, plain ``key value`` lines, and (native
protocol only) the registration hook's enrichment data file.

The reference client needs ``#begin`` followed by the 36-character provisioning
ID on the next line. Rendering is deterministic, so the same inputs always give
the same bytes: the manifest's size and SHA-256 are computed once, at
generation, and the file is re-rendered on download without storing secrets.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
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


# The registration hook's enrichment data (docs/registration-hook.md, "The enrichment data
# file"): one more file in a native device's manifest, framed as every provisioning file is
# (``#begin``, its provisioning ID, ``key value`` lines, ``#end``), so a device agent that
# checks that frame (agent/fleetreg-agent ``verify_file``, as already baked into images: a
# bare JSON file would fail it at every try, and a first boot never gives up) writes it as
# it writes the others, into a folder of its own: FILES_DIR/registration-data/.
# Its one ``data`` line is the data as canonical JSON (below): unambiguous for any key or
# value (spaces, ``=``, quotes, newlines, any Unicode) and read by any JSON parser.
REGISTRATION_DATA_SERVICE = "registration-data"
# No service file is named so: theirs are ``NN-<service>.conf`` (FileSpec.file_name).
REGISTRATION_DATA_FILE = "registration-data.conf"
# The manifest entry's ``type``; no application type and no port (both 0): it is no service.
REGISTRATION_DATA_TYPE = "data"
# The file's provisioning ID is the UUIDv5 of the device ID (lower-case text) in this
# namespace, upper case as the services' IDs are shown: stable for the device (a data change
# changes the content, never the ID), distinct from every service's ID (those are random
# v4 UUIDs), and unknown to the reference protocol (which serves product services only).
REGISTRATION_DATA_NAMESPACE = uuid.UUID("35228b10-2f18-4791-abbe-950dbb4098d7")


@dataclass(frozen=True)
class DataFile:
    """The enrichment data file of one device: its name, provisioning ID and exact bytes."""

    provisioning_id: str
    content: bytes
    name: str = REGISTRATION_DATA_FILE
    service: str = REGISTRATION_DATA_SERVICE

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def sha256(self) -> str:
        return sha256_hex(self.content)


def registration_data_id(device_id: str) -> str:
    """The provisioning ID of the device's data file (``device_id``: UUID text, any case):
    the upper-case UUIDv5 of the lower-case ID in :data:`REGISTRATION_DATA_NAMESPACE`."""
    return str(uuid.uuid5(REGISTRATION_DATA_NAMESPACE, device_id.lower())).upper()


def canonical_data(data: Mapping[str, str]) -> str:
    r"""``data`` as canonical JSON on one line of printable ASCII: keys sorted (by code
    point), no insignificant whitespace, and every other character escaped as JSON escapes
    it (``\n``, ``\"``, ``\\``, ``\u00e9``, a surrogate pair beyond U+FFFF; DEL, which
    JSON may leave raw, as ``\u007f``), so the same data always gives the same text and no
    value can break the line."""
    text = json.dumps(dict(data), sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    # DEL can only stand inside a string, where its escape is equivalent.
    return text.replace("\x7f", "\\u007f")


def registration_data_file(device_id: str, data: Mapping[str, str]) -> DataFile:
    r"""The device's enrichment data file (``data``: the hook's string keys to string values,
    possibly none)::

        #begin
        <provisioning ID>
        data {"floor":"3","site":"Berlin \"North\""}
        #end

    Deterministic (the manifest's size and SHA-256 hold for the same data) and ASCII."""
    provisioning_id = registration_data_id(device_id)
    lines = ["#begin", provisioning_id, f"data {canonical_data(data)}", "#end"]
    return DataFile(provisioning_id, ("\n".join(lines) + "\n").encode("ascii"))
