"""Product definitions: docs "Product definition" (service types, wire codes, bulk service)."""

from __future__ import annotations

import pytest

from shared.domain.products import (
    BULK_SERVICE_TYPE,
    MAX_SERVICES,
    SERVICE_TYPES,
    ServiceSpec,
    bulk_service,
    parse_service,
    registration_kind_refusal,
    validate_product,
    validate_service,
)
from shared.errors import Conflict, InvalidInput

# The list in docs/domain.md#products-and-service-types, copied by hand: the wire codes the reference client understands.
DOMAIN_PAGE_CODES = {
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


# ---------------------------------------------------------------- service types


def test_service_type_codes_equal_the_domain_page_exactly() -> None:
    assert SERVICE_TYPES == DOMAIN_PAGE_CODES


def test_the_bulk_service_is_rmt3_code_35_enabled_with_a_valid_port() -> None:
    bulk = bulk_service()
    assert (bulk.name, bulk.service_type, bulk.type_code, bulk.enabled) == ("bulk", "rmt3", 35, True)
    assert bulk.service_type == BULK_SERVICE_TYPE
    assert 1 <= bulk.port <= 65535
    assert bulk_service() == bulk


# ---------------------------------------------------------------- the CLI form TYPE:PORT[:disabled]


def test_parse_service_type_and_port_is_enabled_and_named_after_its_type() -> None:
    service = parse_service("ssh:22")
    assert service == ServiceSpec(name="ssh", service_type="ssh", port=22, enabled=True)
    assert service.type_code == 28


def test_parse_service_disabled_suffix_disables_it() -> None:
    service = parse_service("web:80:disabled")
    assert service == ServiceSpec(name="web", service_type="web", port=80, enabled=False)
    assert service.type_code == 7


@pytest.mark.parametrize("text", ["ssh", "", "ssh:22:enabled", "ssh:22:disabled:x", "ssh:22:DISABLED"])
def test_parse_service_refuses_other_forms(text: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_service(text)
    assert refused.value.field == "service"
    assert "TYPE:PORT" in refused.value.message


@pytest.mark.parametrize("text", ["ssh:abc", "ssh:", "ssh:22.0"])
def test_parse_service_refuses_a_port_that_is_not_a_number(text: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_service(text)
    assert refused.value.field == "service"
    assert "not a number" in refused.value.message


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_parse_service_refuses_a_port_out_of_range(port: int) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_service(f"ssh:{port}")
    assert (refused.value.field, refused.value.rule) == ("services[0].port", "range=1..65535")


@pytest.mark.parametrize("port", [1, 65535])
def test_parse_service_accepts_the_ends_of_the_port_range(port: int) -> None:
    assert parse_service(f"tcp:{port}").port == port


def test_parse_service_refuses_an_unknown_type() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_service("ftp:21")
    assert (refused.value.field, refused.value.rule) == ("services[0].type", "enum")


def test_parse_service_refuses_the_bulk_service_type() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_service("rmt3:35")
    assert (refused.value.field, refused.value.rule) == ("services[0].type", "bulk_service_is_automatic")


# ---------------------------------------------------------------- one service of a product body


@pytest.mark.parametrize(
    ("raw", "field", "rule"),
    [
        ("ssh:22", "services[4]", "type=object"),
        ({"port": 22}, "services[4].type", "enum"),
        ({"type": "ssh", "port": "22"}, "services[4].port", "range=1..65535"),
        ({"type": "ssh", "port": True}, "services[4].port", "range=1..65535"),
        ({"type": "ssh", "port": 22, "name": ""}, "services[4].name", "charset=[A-Za-z0-9_.-]"),
        ({"type": "ssh", "port": 22, "name": "my ssh"}, "services[4].name", "charset=[A-Za-z0-9_.-]"),
        ({"type": "ssh", "port": 22, "name": "s" * 65}, "services[4].name", "charset=[A-Za-z0-9_.-]"),
        # A folder on the device and an argument of its scripts (the agent refuses these):
        ({"type": "ssh", "port": 22, "name": ".."}, "services[4].name", "charset=[A-Za-z0-9_.-]"),
        ({"type": "ssh", "port": 22, "name": "."}, "services[4].name", "charset=[A-Za-z0-9_.-]"),
        ({"type": "ssh", "port": 22, "name": ".ssh"}, "services[4].name", "charset=[A-Za-z0-9_.-]"),
        ({"type": "ssh", "port": 22, "name": "-rf"}, "services[4].name", "charset=[A-Za-z0-9_.-]"),
        ({"type": "ssh", "port": 22, "enabled": "yes"}, "services[4].enabled", "type=boolean"),
    ],
)
def test_validate_service_names_the_bad_field_with_its_index(raw: object, field: str, rule: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_service(raw, index=4)
    assert (refused.value.field, refused.value.rule) == (field, rule)


def test_service_names_may_hold_dots_and_dashes_after_their_first_character() -> None:
    for name in ("ssh.2", "a..b", "_x", "9-web", "s" * 64):
        assert validate_service({"type": "ssh", "port": 22, "name": name}, index=0).name == name


def test_a_service_name_with_a_trailing_newline_is_refused() -> None:
    """The name becomes a file name and a ``service_name`` line of the provisioning file."""
    with pytest.raises(InvalidInput) as refused:
        validate_service({"type": "ssh", "port": 22, "name": "ssh\n"}, index=0)
    assert refused.value.field == "services[0].name"


# ---------------------------------------------------------------- products


def test_validate_product_returns_the_stripped_name_and_services_in_order() -> None:
    name, services = validate_product(
        {
            "name": "  Gateway v2  ",
            "services": [
                {"type": "ssh", "port": 22},
                {"type": "web", "port": 8080, "name": "admin", "enabled": False},
            ],
        }
    )
    assert name == "Gateway v2"
    assert services == [
        ServiceSpec(name="ssh", service_type="ssh", port=22, enabled=True),
        ServiceSpec(name="admin", service_type="web", port=8080, enabled=False),
    ]


def test_a_product_without_services_is_valid() -> None:
    assert validate_product({"name": "Bare"}) == ("Bare", [])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing"),
        pytest.param({"name": ""}, id="empty"),
        pytest.param({"name": "   "}, id="blank"),
        pytest.param({"name": 5}, id="not-a-string"),
        pytest.param({"name": "p" * 101}, id="101-chars"),
        pytest.param({"name": "Pumpe Süd"}, id="non-ascii"),
    ],
)
def test_a_product_name_is_required_ascii_and_at_most_100_characters(body: dict[str, object]) -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_product(body)
    assert refused.value.field == "name"
    assert "100" in refused.value.message


def test_a_product_name_of_100_characters_is_accepted() -> None:
    assert validate_product({"name": "p" * 100})[0] == "p" * 100


def test_a_product_body_must_be_an_object() -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_product(["name"])
    assert refused.value.rule == "type=object"


def test_product_services_must_be_a_list() -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_product({"name": "P", "services": {"type": "ssh", "port": 22}})
    assert (refused.value.field, refused.value.rule) == ("services", "type=array")


def test_a_product_has_at_most_32_services() -> None:
    services = [{"type": "tcp", "port": 1000 + n, "name": f"tcp{n}"} for n in range(MAX_SERVICES + 1)]
    assert MAX_SERVICES == 32
    assert len(validate_product({"name": "P", "services": services[:32]})[1]) == 32
    with pytest.raises(InvalidInput) as refused:
        validate_product({"name": "P", "services": services})
    assert (refused.value.field, refused.value.rule) == ("services", "max_items=32")


def test_a_bad_service_of_a_product_is_named_by_its_index() -> None:
    with pytest.raises(InvalidInput) as refused:
        validate_product({"name": "P", "services": [{"type": "ssh", "port": 22}, {"type": "ssh", "port": 0}]})
    assert refused.value.field == "services[1].port"


def test_a_duplicate_service_name_is_refused_at_its_second_index() -> None:
    body = {
        "name": "P",
        "services": [{"type": "ssh", "port": 22}, {"type": "web", "port": 80}, {"type": "ssh", "port": 2222}],
    }
    with pytest.raises(InvalidInput) as refused:
        validate_product(body)
    assert (refused.value.field, refused.value.rule) == ("services[2].name", "unique")


def test_two_services_of_one_type_with_distinct_names_are_accepted() -> None:
    body = {
        "name": "P",
        "services": [{"type": "ssh", "port": 22}, {"type": "ssh", "port": 2222, "name": "ssh2"}],
    }
    assert [s.name for s in validate_product(body)[1]] == ["ssh", "ssh2"]


def test_the_reserved_service_name_bulk_is_refused_with_its_index() -> None:
    body = {
        "name": "P",
        "services": [{"type": "ssh", "port": 22}, {"type": "tcp", "port": 9000, "name": "bulk"}],
    }
    with pytest.raises(InvalidInput) as refused:
        validate_product(body)
    assert (refused.value.field, refused.value.rule) == ("services[1].name", "unique")


def test_the_bulk_service_cannot_be_part_of_a_product_body() -> None:
    body = {"name": "P", "services": [{"type": "ssh", "port": 22}, {"type": "rmt3", "port": 65535}]}
    with pytest.raises(InvalidInput) as refused:
        validate_product(body)
    assert (refused.value.field, refused.value.rule) == ("services[1].type", "bulk_service_is_automatic")


# ---------------------------------------------------------------- which registrations a product serves

PRODUCT = "3f1e2d4c-0000-4000-8000-000000000001"
NEVER_BOTH = "a product is used by one auto registration or by bulk registrations, never both"


@pytest.mark.parametrize("kind", ["auto", "bulk"])
def test_a_new_product_serves_no_registration_until_it_is_locked(kind: str) -> None:
    refusal = registration_kind_refusal(PRODUCT, "new", None, kind)
    assert isinstance(refusal, Conflict)
    assert (refusal.message, refusal.field, refusal.rule) == (
        f"product {PRODUCT} must be locked first",
        "product_id",
        "product_locked",
    )
    assert refusal.status == 409


@pytest.mark.parametrize("kind", ["auto", "bulk"])
def test_a_locked_product_serving_no_kind_yet_takes_either(kind: str) -> None:
    assert registration_kind_refusal(PRODUCT, "locked", None, kind) is None


@pytest.mark.parametrize("kind", ["auto", "bulk"])
def test_a_locked_product_takes_more_of_the_kind_it_serves(kind: str) -> None:
    """(One auto registration per product is the database's unique index, not this rule.)"""
    assert registration_kind_refusal(PRODUCT, "locked", kind, kind) is None


def test_a_product_serving_bulk_refuses_an_auto_registration() -> None:
    refusal = registration_kind_refusal(PRODUCT, "locked", "bulk", "auto")
    assert refusal is not None
    assert (refusal.message, refusal.field, refusal.rule) == (
        f"product {PRODUCT} serves bulk registration already; {NEVER_BOTH}",
        "product_id",
        "one_registration_kind",
    )


def test_a_product_serving_auto_refuses_a_bulk_upload() -> None:
    """The words shared/db/bulk.py answers with, at the start and at the end of an upload."""
    refusal = registration_kind_refusal(PRODUCT, "locked", "auto", "bulk")
    assert refusal is not None
    assert (refusal.message, refusal.field, refusal.rule) == (
        f"product {PRODUCT} serves an auto registration; {NEVER_BOTH}",
        "product_id",
        "one_registration_kind",
    )


def test_locking_comes_first_whatever_the_product_serves() -> None:
    refusal = registration_kind_refusal(PRODUCT, "new", "auto", "bulk")
    assert refusal is not None and refusal.rule == "product_locked"
