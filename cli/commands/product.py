"""``fleetreg product create|lock|list|service|delete``"""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import object_id
from cli.client import operator_client
from cli.errors import CliError
from cli.output import confirm, emit_json, print_table
from shared.domain.products import parse_service
from shared.errors import InvalidInput


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    product = groups.add_parser("product", help="product definitions and their codes")
    actions = product.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[common], help="define a product and its services")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="TYPE:PORT[:disabled]",
        help="a service, e.g. ssh:22 or web:80:disabled (repeat for more); the bulk service is added for you",
    )
    create.set_defaults(run=create_product)
    lock = actions.add_parser("lock", parents=[common], help="lock a product: creates its codes (one-way)")
    lock.add_argument("id", type=object_id)
    lock.set_defaults(run=lock_product)
    listing = actions.add_parser("list", parents=[common], help="list the account's products")
    listing.set_defaults(run=list_products)
    service = actions.add_parser(
        "service",
        parents=[common],
        help="enable or disable a service, or change its port (devices pick it up at their next boot)",
    )
    service.add_argument("id", type=object_id, metavar="PRODUCT_ID")
    service.add_argument("name", metavar="NAME", help="the service's name (see product list --json)")
    switch = service.add_mutually_exclusive_group()
    switch.add_argument("--enable", dest="enabled", action="store_const", const=True, help="enable it")
    switch.add_argument("--disable", dest="enabled", action="store_const", const=False, help="disable it")
    service.add_argument("--port", type=int, metavar="N", help="the service's TCP port (1-65535)")
    service.add_argument(
        "--rename", metavar="NEW_NAME", help="a new name (only while the product is not locked)"
    )
    service.set_defaults(run=change_service)
    delete = actions.add_parser(
        "delete",
        parents=[common],
        help="delete a product no registration and no device uses (with its codes)",
    )
    delete.add_argument("id", type=object_id)
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(run=delete_product)


def show_product(product: dict[str, Any]) -> None:
    print(f"product {product['id']}  {product['name']}  ({product['status']})")
    if product.get("bulk_identification_code"):
        print(f"  bulk identification code: {product['bulk_identification_code']}")
        print(f"  product code:             {product['product_code']}")
    rows = [
        (
            s["name"],
            s["type"],
            s["type_code"],
            s["port"],
            "yes" if s["enabled"] else "no",
            s["provisioning_id"],
        )
        for s in product["services"]
    ]
    print_table(rows, ["service", "type", "code", "port", "enabled", "provisioning id"])


async def create_product(args: argparse.Namespace) -> int:
    try:
        services = [parse_service(text) for text in args.service]
    except InvalidInput as exc:
        raise CliError(exc.message) from exc
    body = {
        "name": args.name,
        "services": [
            {"name": s.name, "type": s.service_type, "port": s.port, "enabled": s.enabled} for s in services
        ],
    }
    async with operator_client() as client:
        product = await client.post("/v1/products", body)
    emit_json(product) if args.json else show_product(product)
    return 0


async def lock_product(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        product = await client.post(f"/v1/products/{args.id}/lock")
    emit_json(product) if args.json else show_product(product)
    return 0


async def list_products(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        products = (await client.get("/v1/products"))["products"]
    if args.json:
        emit_json({"products": products})
        return 0
    rows = [
        (p["id"], p["name"], p["status"], p.get("registration_kind") or "-", len(p["services"]))
        for p in products
    ]
    print_table(rows, ["id", "name", "status", "used by", "services"])
    return 0


async def change_service(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.enabled is not None:
        body["enabled"] = args.enabled
    if args.port is not None:
        body["port"] = args.port
    if args.rename is not None:
        body["name"] = args.rename
    if not body:
        raise CliError("nothing to change: give --enable, --disable, --port or --rename")
    async with operator_client() as client:
        found = await client.get(f"/v1/products/{args.id}")
        named = [s for s in found["services"] if s["name"] == args.name]
        if not named:
            known = ", ".join(s["name"] for s in found["services"])
            raise CliError(f"product {args.id} has no service named {args.name!r} (its services: {known})")
        product = await client.patch(f"/v1/products/{args.id}/services/{named[0]['provisioning_id']}", body)
    emit_json(product) if args.json else show_product(product)
    return 0


async def delete_product(args: argparse.Namespace) -> int:
    confirm(
        f"Delete product {args.id} with its services and codes? Devices presenting its code are refused.",
        assume_yes=args.yes,
    )
    async with operator_client() as client:
        gone = await client.delete(f"/v1/products/{args.id}")
    if args.json:
        emit_json(gone)
    else:
        print(f"deleted product {gone['id']}  {gone['name']}  ({gone['status']})")
    return 0
