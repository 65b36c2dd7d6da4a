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
    webhooks,
)

COMMAND_MODULES = [
    account,
    keys,
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
