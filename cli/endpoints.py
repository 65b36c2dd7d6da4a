"""Prepare the local demo account and write var/endpoints.env (run by ``make up``).

The demo account's API key exists in clear only in var/demo_api_key (mode 600),
because the registry stores keys hashed. The demo product (ssh and web, locked,
with an active auto registration) gives ``fleetreg simulate`` a code to boot with.
Until the account has a person, its first owner (:data:`DEMO_OWNER`) is invited and the
invitation's link kept in var/demo_owner_invitation (mode 600): opening it in the console
and choosing a password makes the owner, who then signs in by e-mail.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from cli import wait_ready
from cli.config import parse_env_file
from shared.db import accounts, products, registrations, users
from shared.db.pool import Pool, open_pool
from shared.domain.accounts import Account
from shared.domain.products import parse_service
from shared.domain.roles import Role
from shared.settings import DatabaseSettings, Secret

DEMO_ACCOUNT = "demo"
DEMO_PRODUCT = "demo-gateway"
DEMO_OWNER = "owner@demo.example.com"
OWNER_INVITATION_FILE = "demo_owner_invitation"


def _write_private(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)


async def prepare(var: Path) -> dict[str, str]:
    infra = parse_env_file(var / "infra.env")
    pool = await open_pool(DatabaseSettings(url=Secret(infra["DATABASE_URL"]), pool_min=1, pool_max=2))
    try:
        key_file = var / "demo_api_key"
        account = await accounts.find_account(pool, DEMO_ACCOUNT)
        if account is None:
            account, key = await accounts.create_account(pool, DEMO_ACCOUNT)
            _write_private(key_file, key)
        elif not key_file.exists():
            issued = await accounts.create_api_key(pool, account, "local demo")
            _write_private(key_file, issued.key)
        found = [p for p in await products.list_products(pool, account.id) if p.name == DEMO_PRODUCT]
        product = (
            found[0]
            if found
            else await products.create_product(
                pool, account, DEMO_PRODUCT, [parse_service("ssh:22"), parse_service("web:80")]
            )
        )
        if product.status == "new":
            product = await products.lock_product(pool, account, product.id)
        if not await registrations.list_registrations(pool, account.id, "auto"):
            await registrations.create_registration(pool, account, product.id, "auto", "active")
        product = await products.get_product(pool, account.id, product.id)
        link_file = var / OWNER_INVITATION_FILE
        _keep_link(link_file, await _invite_owner(pool, account, _read_link(link_file), _operator_url()))
    finally:
        await pool.close()
    ports = {
        name: os.environ.get(f"FLEETREG_{name.upper()}_PORT", default)
        for name, default in (
            ("intake", "18080"),
            ("operator", "18081"),
            ("ingestion", "18084"),
            ("compat", "18443"),
        )
    }
    # Each service's operations listener (health, readiness, metrics): not on the URLs above.
    ops_urls = {
        f"FLEETREG_{name.upper()}_OPS_URL": f"http://127.0.0.1:{wait_ready.ops_port(name)}"
        for name in wait_ready.PORTS
    }
    return {
        "FLEETREG_DEVICE_URL": f"http://127.0.0.1:{ports['intake']}",
        "FLEETREG_ADMIN_URL": f"http://127.0.0.1:{ports['operator']}",
        "FLEETREG_BULK_URL": f"http://127.0.0.1:{ports['ingestion']}",
        "FLEETREG_COMPAT_URL": f"https://127.0.0.1:{ports['compat']}",
        "FLEETREG_TLS_CA": str((var / "tls" / "ca.pem").resolve()),
        "FLEETREG_ADMIN_TOKEN": key_file.read_text(encoding="utf-8").strip(),
        "FLEETREG_DEMO_PRODUCT_ID": product.id,
        "FLEETREG_DEMO_CODE": product.bulk_identification_code or "",
        "KAFKA_BOOTSTRAP_SERVERS": infra["KAFKA_BOOTSTRAP_SERVERS"],
        "DATABASE_URL": infra["DATABASE_URL"],
        **ops_urls,
    }


def _operator_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('FLEETREG_OPERATOR_PORT', '18081')}"


async def _invite_owner(
    pool: Pool, account: Account, saved: str | None, operator_url: str, email: str = DEMO_OWNER
) -> str | None:
    """The owner invitation's link to keep while the demo account has no person: ``saved``
    (the link kept before) while its invitation is still open, else a new one (replacing
    any); None once the account has a person (the link is used up)."""
    if await users.list_users(pool, account.id):
        return None
    if saved and await users.invitation_for(pool, saved.rsplit("/", 1)[-1]) is not None:
        return saved
    issued = await users.invite(pool, account, email, Role.OWNER, 72)
    return f"{operator_url}/console/invitations/{issued.token}"


def _keep_link(path: Path, link: str | None) -> None:
    if link is None:
        path.unlink(missing_ok=True)
    else:
        _write_private(path, link + "\n")


def _read_link(path: Path) -> str | None:
    return path.read_text(encoding="utf-8").strip() if path.exists() else None


def main(var: Path) -> None:
    values = asyncio.run(prepare(var))
    _write_private(var / "endpoints.env", "".join(f"{k}={v}\n" for k, v in values.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
