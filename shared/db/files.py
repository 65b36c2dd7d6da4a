"""Provisioning files: what a device's files are made of, read by one query for both
the provisioning service (which renders and records them) and the intake (which
serves them), and the record of each file rendered (its name, size and SHA-256).

Nothing secret is stored: the files are rendered again from the same recipe
(:func:`shared.domain.provisioning.file_spec`) on download and checked against the
recorded digest. The registration hook's enrichment data file is not recorded: it holds
no secret and is rendered from ``devices.hook_data``, read by the same query
(:attr:`DeviceFiles.registration_data`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from asyncpg import ForeignKeyViolationError, Record

from shared.db.pool import Connection, Pool
from shared.domain.credentials import Keyring
from shared.domain.provisioning import (
    DataFile,
    FileSpec,
    ServiceRecipe,
    file_spec,
    registration_data_file,
    render,
    service_uid,
    sha256_hex,
)

# Every enabled service of each device's product, with the file recorded for it (if any):
# the one query behind both provisioning and the intake. The intake asks for one device
# per call, on the hot path of every boot; compared with ``= ANY($1)`` of a one-element
# array, ``= $1`` halves that lookup's round trip (measured: 175 against 380 us). The hook's
# enrichment data comes along as one column more (NULL for a device without), not a query.
_DEVICE_FILES = """
    SELECT v.id::text AS device_id, v.hardware_id, v.name, v.lifecycle, v.disabled,
           v.credential_generation, v.hook_data::text AS hook_data,
           s.id::text AS service_id, s.position, s.name AS service_name, s.service_type, s.type_code,
           s.port, s.revision, f.service_uid, f.generation AS file_generation, f.service_revision,
           f.file_name, f.size, f.sha256
    FROM devices v
    LEFT JOIN product_services s ON s.product_id = v.product_id AND s.enabled
    LEFT JOIN provisioning_files f ON f.device_id = v.id AND f.product_service_id = s.id
    WHERE {devices}
    ORDER BY v.id, s.position"""
SELECT_DEVICE_FILES = _DEVICE_FILES.format(devices="v.id = ANY($1::uuid[])")
SELECT_ONE_DEVICE_FILES = _DEVICE_FILES.format(devices="v.id = $1::uuid")
# The same read for a transaction that records files from it: the device rows are locked
# FOR KEY SHARE, the lock the files' foreign key takes on them anyway a moment later, so
# it costs no extra write. It conflicts only with FOR UPDATE, which an operator's rename or
# move takes (shared/db/devices.py): either that change waits for these files to commit
# (and then renders them again, or drops them), or this read waits for the change and
# reads the device as it is then. Without it, files rendered from a name read before a
# rename could be recorded after it, and every download of them would fail its digest.
SELECT_DEVICE_FILES_LOCKED = SELECT_DEVICE_FILES + " FOR KEY SHARE OF v"
SELECT_ONE_DEVICE_FILES_LOCKED = SELECT_ONE_DEVICE_FILES + " FOR KEY SHARE OF v"
# A file row is replaced only by one of a newer (generation, service revision): a file
# rendered concurrently by another writer for the same pair is kept, with its UID (the
# loser's UID number is simply never used). The UID itself is never replaced.
UPSERT_FILES = """
    INSERT INTO provisioning_files
        (device_id, product_service_id, generation, service_uid, file_name, size, sha256, service_revision)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[], $6::int[], $7::text[],
                         $8::int[])
    ON CONFLICT (device_id, product_service_id) DO UPDATE
       SET generation = excluded.generation, file_name = excluded.file_name,
           size = excluded.size, sha256 = excluded.sha256, service_revision = excluded.service_revision
       WHERE (provisioning_files.generation, provisioning_files.service_revision)
             < (excluded.generation, excluded.service_revision)"""


@dataclass(frozen=True)
class RecordedFile:
    """A file rendered for one service of one device: its generation, UID and digest, and
    the revision of the service it was rendered from."""

    generation: int
    service_uid: str
    file_name: str
    size: int
    sha256: str
    service_revision: int = 1


@dataclass(frozen=True)
class ServiceFile:
    """One enabled service of the device's product, and the file recorded for it (None
    until provisioning renders it)."""

    service: ServiceRecipe
    recorded: RecordedFile | None
    # A UID is allocated once per (device, service) and kept across generations.
    service_uid: str | None
    # The service's revision now (shared/migrations/0013): a file of an older one is stale.
    revision: int = 1

    def up_to_date(self, generation: int) -> bool:
        """Its file is rendered for credential ``generation`` from the service as it is now."""
        return (
            self.recorded is not None
            and self.recorded.generation == generation
            and self.recorded.service_revision >= self.revision
        )


@dataclass(frozen=True)
class DeviceFiles:
    """A device (what authenticates it and what its files name) and its services' files."""

    device_id: str
    hardware_id: str
    name: str
    lifecycle: str
    disabled: bool
    credential_generation: int
    services: tuple[ServiceFile, ...]
    # ``devices.hook_data`` as the registry's JSON text (None: no data), parsed only by
    # :attr:`registration_data`, so a reader that serves no data file (provisioning, the
    # reference protocol) never depends on it.
    hook_data: str | None = None

    @property
    def registration_data(self) -> DataFile | None:
        """The registration hook's enrichment data file (native protocol only: the intake's
        /v1 manifest, its download and the two-call answer list it; the reference protocol
        never does); None when the device has no hook data. ValueError for a column that is
        not a JSON object of string values (the ruling writes nothing else)."""
        return _registration_data(self.device_id, self.hook_data)

    def current(self) -> tuple[ServiceFile, ...]:
        """The files the device downloads: of its current credential generation, rendered
        from each service as it is now."""
        return tuple(s for s in self.services if s.up_to_date(self.credential_generation))

    def stale(self) -> tuple[ServiceFile, ...]:
        """The services whose file is missing, of an older generation, or rendered from an
        older revision of the service (to render)."""
        return tuple(s for s in self.services if not s.up_to_date(self.credential_generation))

    def provisioned(self) -> bool:
        """Provisioning rendered the device's files for its current credentials: the file
        of its bulk service (always enabled, never changed) is of this generation. Files
        of services enabled or changed since then are rendered on demand
        (:func:`complete_device_files`)."""
        return any(
            s.recorded is not None and s.recorded.generation == self.credential_generation
            for s in self.services
        )

    def spec(self, service: ServiceFile, service_uid: str) -> FileSpec:
        """The recipe of this device's file for ``service``."""
        return file_spec(service.service, service_uid, self.hardware_id, self.name)


@dataclass(frozen=True)
class NewFile:
    """A file just rendered for the service ``service_id`` (its provisioning ID) of the
    device ``device_id``, to record."""

    device_id: str
    service_id: str
    file: RecordedFile


async def device_files(
    db: Pool | Connection, device_ids: Sequence[str], *, lock: bool = False
) -> dict[str, DeviceFiles]:
    """The devices among ``device_ids`` (UUID text) with their services' files, by
    lower-case device ID; an unknown ID is absent. With ``lock`` (inside a transaction
    that records files from this read), the device rows are locked FOR KEY SHARE
    (``SELECT_DEVICE_FILES_LOCKED``)."""
    statement = SELECT_DEVICE_FILES_LOCKED if lock else SELECT_DEVICE_FILES
    return _assemble(await db.fetch(statement, list(set(device_ids))))


async def one_device_files(
    db: Pool | Connection, device_id: str, *, lock: bool = False
) -> DeviceFiles | None:
    """One device (UUID text) with its services' files, or None when there is no such
    device; ``lock`` as for :func:`device_files`."""
    statement = SELECT_ONE_DEVICE_FILES_LOCKED if lock else SELECT_ONE_DEVICE_FILES
    return _assemble(await db.fetch(statement, device_id)).get(device_id.lower())


def _assemble(rows: Sequence[Record]) -> dict[str, DeviceFiles]:
    services: dict[str, list[ServiceFile]] = {}
    first: dict[str, Record] = {}
    for r in rows:
        first.setdefault(r["device_id"], r)
        found = services.setdefault(r["device_id"], [])
        if r["service_id"] is None:  # a product without enabled services
            continue
        recorded = (
            RecordedFile(
                r["file_generation"],
                r["service_uid"],
                r["file_name"],
                r["size"],
                r["sha256"],
                r["service_revision"],
            )
            if r["file_generation"] is not None
            else None
        )
        found.append(
            ServiceFile(
                ServiceRecipe(
                    provisioning_id=r["service_id"].upper(),
                    position=r["position"],
                    name=r["service_name"],
                    service_type=r["service_type"],
                    type_code=r["type_code"],
                    port=r["port"],
                ),
                recorded,
                r["service_uid"],
                r["revision"],
            )
        )
    return {
        device_id: DeviceFiles(
            device_id=device_id,
            hardware_id=r["hardware_id"],
            name=r["name"],
            lifecycle=r["lifecycle"],
            disabled=r["disabled"],
            credential_generation=r["credential_generation"],
            services=tuple(services[device_id]),
            hook_data=r["hook_data"],
        )
        for device_id, r in first.items()
    }


def _registration_data(device_id: str, hook_data: str | None) -> DataFile | None:
    """The data file of ``hook_data`` (the column's JSON text), or None without data. The
    column holds a JSON object of string keys to string values (the hook's answer, checked
    by shared.domain.hooks before it is written); anything else is a broken registry row."""
    if hook_data is None:
        return None
    data = orjson.loads(hook_data)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"devices.hook_data of {device_id} is not an object of string values")
    return registration_data_file(device_id, data)


async def next_service_uids(conn: Connection, count: int) -> list[int]:
    """``count`` fresh numbers of the service UID sequence."""
    if count == 0:
        return []
    return [
        r[0] for r in await conn.fetch("SELECT nextval('service_uid_seq') FROM generate_series(1, $1)", count)
    ]


async def record_files(conn: Connection, files: Sequence[NewFile]) -> None:
    """Record rendered files; a file of an older generation never replaces a newer one."""
    if files:
        await conn.execute(
            UPSERT_FILES,
            [f.device_id for f in files],
            [f.service_id for f in files],
            [f.file.generation for f in files],
            [f.file.service_uid for f in files],
            [f.file.file_name for f in files],
            [f.file.size for f in files],
            [f.file.sha256 for f in files],
            [f.file.service_revision for f in files],
        )


def render_stale(
    keyring: Keyring, stale: Sequence[tuple[DeviceFiles, ServiceFile]], fresh_uids: Sequence[int]
) -> list[NewFile]:
    """Render the file of each (device, service), at the device's credential generation and
    the service's revision: the one recipe both provisioning and the on-demand path apply.
    A service without a UID for the device takes the next of ``fresh_uids`` (as many as
    there are such services, from :func:`next_service_uids`)."""
    fresh = iter(fresh_uids)
    rendered = []
    for device, service in stale:
        uid = service.service_uid or service_uid(next(fresh))
        spec = device.spec(service, uid)
        content = render(spec, keyring.service_password(uid, device.credential_generation))
        rendered.append(
            NewFile(
                device_id=device.device_id,
                service_id=service.service.provisioning_id,
                file=RecordedFile(
                    generation=device.credential_generation,
                    service_uid=uid,
                    file_name=spec.file_name,
                    size=len(content),
                    sha256=sha256_hex(content),
                    service_revision=service.revision,
                ),
            )
        )
    return rendered


async def complete_device_files(pool: Pool, keyring: Keyring, device: DeviceFiles) -> DeviceFiles:
    """The device's files once those of services enabled or changed since it was
    provisioned are rendered too (a UID allocated on first need), as the registry then has
    them; ``device`` itself when nothing is missing or it was never provisioned (that is
    provisioning's work, at registration).

    Called when the device asks for its files (manifest, the reference protocol's
    register call), so a service enabled after locking reaches each device at its next
    boot, one device at a time, never in one write for the whole fleet. Safe to race:
    rows are inserted or moved to a newer revision only (``UPSERT_FILES``), never given
    another UID, and the answer is read back after the write."""
    if not device.provisioned() or not device.stale():
        return device
    try:
        async with pool.acquire() as conn, conn.transaction():
            # Read again under the transaction: a reset since the caller's read moved the generation.
            found = await one_device_files(conn, device.device_id, lock=True)
            if found is None or not found.provisioned():
                return found or device
            stale = [(found, s) for s in found.stale()]
            uids = await next_service_uids(conn, sum(1 for _, s in stale if s.service_uid is None))
            await record_files(conn, render_stale(keyring, stale, uids))
    except ForeignKeyViolationError:
        # The operator deleted the device meanwhile: this call is answered as the device
        # was read, and the next one finds no device (its cache entry is invalidated).
        return device
    return await one_device_files(pool, device.device_id) or device


# A rename renders the files of the device's current generation again: same UID, same
# password (the generation is unchanged), the new name on the device_name line.
RERECORD_FILES = """
    UPDATE provisioning_files f
       SET file_name = u.file_name, size = u.size, sha256 = u.sha256, service_revision = u.service_revision
    FROM unnest($2::uuid[], $3::text[], $4::int[], $5::text[], $6::int[])
         AS u(product_service_id, file_name, size, sha256, service_revision)
    WHERE f.device_id = $1 AND f.product_service_id = u.product_service_id AND f.generation = $7"""
DROP_FILES = "DELETE FROM provisioning_files WHERE device_id = $1"


async def render_again(conn: Connection, keyring: Keyring, device_id: str) -> int:
    """Render again, from the device row as it is now in this transaction (its name), each
    file recorded for the device's current credential generation, and record the new size
    and digest; the number of files rendered. The caller holds the device row FOR UPDATE
    (so no provisioning of it is under way: ``SELECT_DEVICE_FILES_LOCKED``)."""
    device = await one_device_files(conn, device_id)
    if device is None:
        return 0
    current = [
        (device, s)
        for s in device.services
        if s.recorded is not None
        and s.service_uid is not None
        and s.recorded.generation == device.credential_generation
    ]
    rendered = render_stale(keyring, current, [])
    if rendered:
        await conn.execute(
            RERECORD_FILES,
            device.device_id,
            [f.service_id for f in rendered],
            [f.file.file_name for f in rendered],
            [f.file.size for f in rendered],
            [f.file.sha256 for f in rendered],
            [f.file.service_revision for f in rendered],
            device.credential_generation,
        )
    return len(rendered)


async def drop_files(conn: Connection, device_id: str) -> None:
    """Delete every file recorded for the device (a move: the target product's services
    are rendered at its next claim, with new service UIDs)."""
    await conn.execute(DROP_FILES, device_id)
