"""Subcommands, one module each; every module has ``register(groups, common)``."""

from cli.commands import (
    account,
    alerts,
    audit,
    auto,
    bulk,
    demo,
    devices,
    keys,
    migrate,
    product,
    simulate,
    sso,
    users,
    webhooks,
)

COMMAND_MODULES = [
    account,
    keys,
    users,
    product,
    auto,
    bulk,
    devices,
    alerts,
    audit,
    webhooks,
    sso,
    simulate,
    demo,
    migrate,
]
