"""Where the CLI finds the running system: the environment, else var/endpoints.env."""

from __future__ import annotations

import os
from pathlib import Path


class ConfigError(Exception):
    """The CLI lacks a setting it needs to reach the system."""


def _endpoints_file() -> Path:
    explicit = os.environ.get("FLEETREG_ENDPOINTS_FILE")
    if explicit:
        return Path(explicit)
    return Path.cwd() / "var" / "endpoints.env"


def parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip().strip("'\"")
    return values


def load_endpoints() -> dict[str, str]:
    """Variables from var/endpoints.env, overridden by the same names in the environment."""
    path = _endpoints_file()
    values = parse_env_file(path) if path.is_file() else {}
    for name, value in os.environ.items():
        if name.startswith(("FLEETREG_", "KAFKA_", "DATABASE_")):
            values[name] = value
    return values


def require(values: dict[str, str], name: str) -> str:
    value = values.get(name)
    if not value:
        raise ConfigError(f"{name} is not set: run 'make up' (it writes var/endpoints.env) or export {name}")
    return value
