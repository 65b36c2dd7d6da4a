"""Subcommands, one module each; every module has ``register(groups, common)``."""

from cli.commands import account, auto, demo, devices, migrate, product, simulate

COMMAND_MODULES = [account, product, auto, devices, simulate, demo, migrate]
