"""Subcommands, one module each; every module has ``register(groups, common)``."""

from cli.commands import account, alerts, audit, auto, bulk, demo, devices, keys, migrate, product, simulate

COMMAND_MODULES = [account, keys, product, auto, bulk, devices, alerts, audit, simulate, demo, migrate]
