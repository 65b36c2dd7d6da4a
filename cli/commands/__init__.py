"""Subcommands, one module each; every module has ``register(groups, common)``."""

from cli.commands import account, alerts, auto, bulk, demo, devices, migrate, product, simulate, webhooks

COMMAND_MODULES = [account, product, auto, bulk, devices, alerts, webhooks, simulate, demo, migrate]
