"""Subcommands, one module each; every module has ``register(groups, common)``."""

from cli.commands import account, auto, devices, migrate, product, simulate

COMMAND_MODULES = [account, product, auto, devices, migrate, simulate]
