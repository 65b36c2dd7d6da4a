"""Product definitions: the service types with their wire codes, a product's services, and
which registrations a product may serve."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from shared.domain.inputs import refuse_unknown_fields
from shared.errors import Conflict, InvalidInput

ProductStatus = Literal["new", "locked"]
RegistrationKind = Literal["auto", "bulk"]

# Service type name -> numeric code used on the wire by the reference client.
SERVICE_TYPES: dict[str, int] = {
    "ssh": 28,
    "web": 7,
    "webs": 33,
    "vnc": 4,
    "rdp": 5,
    "tcp": 29,
    "smb": 34,
    "nxw": 37,
    "rmt3": 35,
}
BULK_SERVICE_TYPE = "rmt3"
BULKSERVICE_NAME = "bulk"
BULK_SERVICE_PORT = 65535
MAX_SERVICES = 32
# A service's name is a folder on the device (the agent's FILES_DIR/<service>) and an argument
# of its on-change scripts: never ".", "..", a hidden name or one an option parser takes for
# an option, which the device agent refuses (and would then never finish its first boot).
SERVICE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
PRODUCT_NAME_MAX = 100


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    service_type: str
    port: int
    enabled: bool

    @property
    def type_code(self) -> int:
        return SERVICE_TYPES[self.service_type]


def parse_service(text: str) -> ServiceSpec:
    """Parse the CLI form ``TYPE:PORT[:disabled]`` (e.g. ``ssh:22``, ``web:80:disabled``)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "disabled"):
        raise InvalidInput(f"service {text!r} is not TYPE:PORT or TYPE:PORT:disabled", field="service")
    try:
        port = int(parts[1])
    except ValueError as exc:
        raise InvalidInput(f"service {text!r}: port {parts[1]!r} is not a number", field="service") from exc
    return validate_service(
        {"name": parts[0], "type": parts[0], "port": port, "enabled": len(parts) == 2}, index=0
    )


def validate_service(raw: object, index: int | None) -> ServiceSpec:
    """A service of a product definition (``index``: its place in ``services``) or a service
    added on its own (``index`` None: the fields are the body's own)."""
    place = f"services[{index}]" if index is not None else ""

    def at(name: str) -> str:
        return f"{place}.{name}" if place else name

    if not isinstance(raw, dict):
        raise InvalidInput(
            f"{place or 'the body'} must be an object", field=place or "body", rule="type=object"
        )
    refuse_unknown_fields(raw, ("name", "type", "port", "enabled"), what="a service", prefix=at(""))
    service_type = raw.get("type")
    if not isinstance(service_type, str) or service_type not in SERVICE_TYPES:
        raise InvalidInput(
            f"{at('type')} must be one of {', '.join(sorted(SERVICE_TYPES))}",
            field=at("type"),
            rule="enum",
        )
    if service_type == BULK_SERVICE_TYPE:
        raise InvalidInput(
            f"{at('type')}: the bulk service (rmt3) is added to every product automatically",
            field=at("type"),
            rule="bulk_service_is_automatic",
        )
    port = raw.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidInput(
            f"{at('port')} must be a TCP port 1-65535", field=at("port"), rule="range=1..65535"
        )
    name = raw.get("name", service_type)
    if not isinstance(name, str) or not SERVICE_NAME.fullmatch(name):
        raise InvalidInput(
            f"{at('name')} must be 1-64 ASCII letters, digits, '.', '_' or '-', not starting with '.' or '-'",
            field=at("name"),
            rule="charset=[A-Za-z0-9_.-]",
        )
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidInput(f"{at('enabled')} must be true or false", field=at("enabled"), rule="type=boolean")
    return ServiceSpec(name=name, service_type=service_type, port=port, enabled=enabled)


def validate_product(raw: object) -> tuple[str, list[ServiceSpec]]:
    """Validate a product definition; the bulk service is not part of the input."""
    if not isinstance(raw, dict):
        raise InvalidInput("the body must be a JSON object", rule="type=object")
    refuse_unknown_fields(raw, ("name", "services"), what="a product")
    name = raw.get("name")
    if (
        not isinstance(name, str)
        or not name.strip()
        or len(name) > PRODUCT_NAME_MAX
        or not name.isascii()
        or not name.isprintable()  # NUL and control characters: Postgres refuses NUL
    ):
        raise InvalidInput(
            f"name is required: 1-{PRODUCT_NAME_MAX} printable ASCII characters",
            field="name",
            rule="required",
        )
    services_raw = raw.get("services", [])
    if not isinstance(services_raw, list):
        raise InvalidInput("services must be a list", field="services", rule="type=array")
    if len(services_raw) > MAX_SERVICES:
        raise InvalidInput(
            f"a product has at most {MAX_SERVICES} services",
            field="services",
            rule=f"max_items={MAX_SERVICES}",
        )
    services = [validate_service(s, i) for i, s in enumerate(services_raw)]
    names = [s.name for s in services]
    for index, service_name in enumerate(names):
        if service_name == BULKSERVICE_NAME or names.index(service_name) != index:
            raise InvalidInput(
                f"services[{index}].name {service_name!r} is used twice (or is reserved); "
                "give each service a distinct 'name'",
                field=f"services[{index}].name",
                rule="unique",
            )
    return name.strip(), services


def bulk_service() -> ServiceSpec:
    return ServiceSpec(
        name=BULKSERVICE_NAME, service_type=BULK_SERVICE_TYPE, port=BULK_SERVICE_PORT, enabled=True
    )


def registration_kind_refusal(
    product_id: str, status: str, current_kind: str | None, wanted_kind: str
) -> Conflict | None:
    """Why a product (its ``status``, the registration kind it serves so far, None until it
    serves one) may not serve a registration of ``wanted_kind``, or None when it may.

    A product must be locked first (``product_locked``), and it serves one kind of
    registration: one auto registration or bulk registrations, never both
    (``one_registration_kind``). Used when a registration is created (auto, or a bulk
    upload started) and again when the claim of the kind is written (a bulk upload
    finished), with the product's state as it is then."""
    if status != "locked":
        return Conflict(
            f"product {product_id} must be locked first", field="product_id", rule="product_locked"
        )
    if current_kind is None or current_kind == wanted_kind:
        return None
    serves = "an auto registration;" if current_kind == "auto" else f"{current_kind} registration already;"
    return Conflict(
        f"product {product_id} serves {serves} "
        "a product is used by one auto registration or by bulk registrations, never both",
        field="product_id",
        rule="one_registration_kind",
    )


# What PATCH /v1/products/{id}/services/{name} may change: whether the service is enabled
# and its port (devices pick either up at their next boot), and on a new product its name
# (a locked product's: service_change_refusal). The type never changes (a service of
# another type is another service: add it, and disable this one).
SERVICE_FIELDS_NEW = ("enabled", "port", "name")


@dataclass(frozen=True)
class ServiceChange:
    """The fields a service edit sets (None: left as it is)."""

    enabled: bool | None = None
    port: int | None = None
    name: str | None = None

    def changed_from(self, enabled: bool, port: int, name: str) -> dict[str, dict[str, object]]:
        """The fields whose value this edit changes, each as ``{"from": old, "to": new}``
        (the audit trail's shape of a change)."""
        shown: dict[str, dict[str, object]] = {}
        for field, old, new in (
            ("enabled", enabled, self.enabled),
            ("port", port, self.port),
            ("name", name, self.name),
        ):
            if new is not None and new != old:
                shown[field] = {"from": old, "to": new}
        return shown


def validate_service_change(raw: object) -> ServiceChange:
    """Validate a service edit's body: ``enabled`` (boolean), ``port`` (1-65535) and
    ``name`` (as at creation), at least one of them. ``type`` is refused (it never
    changes), as is any other field; whether the product's state allows the fields
    given is :func:`service_change_refusal`'s to say."""
    if not isinstance(raw, dict):
        raise InvalidInput("the body must be a JSON object", rule="type=object")
    if "type" in raw:
        raise InvalidInput(
            "a service's type never changes: add a service of the new type and disable this one",
            field="type",
            rule="immutable",
        )
    refuse_unknown_fields(raw, SERVICE_FIELDS_NEW, what="a service edit")
    if not raw:
        raise InvalidInput(
            f"nothing to change: give at least one of {', '.join(SERVICE_FIELDS_NEW)}", rule="required"
        )
    enabled = raw.get("enabled")
    if "enabled" in raw and not isinstance(enabled, bool):
        raise InvalidInput("enabled must be true or false", field="enabled", rule="type=boolean")
    port = raw.get("port")
    if "port" in raw and (not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535):
        raise InvalidInput("port must be a TCP port 1-65535", field="port", rule="range=1..65535")
    name = raw.get("name")
    if "name" in raw and (not isinstance(name, str) or not SERVICE_NAME.fullmatch(name)):
        raise InvalidInput(
            "name must be 1-64 ASCII letters, digits, '.', '_' or '-', not starting with '.' or '-'",
            field="name",
            rule="charset=[A-Za-z0-9_.-]",
        )
    if name == BULKSERVICE_NAME:
        raise InvalidInput(f"the name {BULKSERVICE_NAME!r} is reserved", field="name", rule="unique")
    return ServiceChange(
        enabled=enabled if isinstance(enabled, bool) else None,
        port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        name=name if isinstance(name, str) else None,
    )


def service_change_refusal(
    product_id: str, service_name: str, status: str, is_bulk_service: bool, change: ServiceChange
) -> Conflict | None:
    """Why ``change`` may not be made to a service (of a product in ``status``), or None.

    The bulk service carries the device's identity and is on every device: it is never
    changed (``bulk_service_fixed``). A locked product's services keep their name, which
    names the file on every device (``product_locked``)."""
    if is_bulk_service:
        return Conflict(
            f"service {service_name!r} is the product's bulk service: always enabled, on its fixed port",
            field="name",
            rule="bulk_service_fixed",
        )
    if status == "locked" and change.name is not None and change.name != service_name:
        return Conflict(
            f"product {product_id} is locked: a service's name no longer changes (only enabled and port)",
            field="name",
            rule="product_locked",
        )
    return None
