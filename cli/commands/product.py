"""``fleetreg product create|lock|list``"""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import object_id
from cli.client import operator_client
from cli.errors import CliError
from cli.output import emit_json, print_table
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
