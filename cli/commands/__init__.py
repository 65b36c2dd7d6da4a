"""Subcommands, one module each; every module has ``register(groups, common)``."""

from cli.commands import migrate

COMMAND_MODULES = [migrate]
