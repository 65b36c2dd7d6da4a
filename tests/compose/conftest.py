"""Fixtures of the container tests: the images (built by `make compose-test` before pytest,
checked here), one compose project per module, and an account in it.

FLEETREG_COMPOSE_SCALE: ``full`` (make compose-test: 2,000 devices, a 1,000-row bulk file, the
console, kills, SIGTERMs, a stop and start, an upgrade) or ``short`` (.ci/run: 200 devices and
100 rows, up and down). Figures land in var/compose/figures.json and are printed at the end."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.compose.stack import LOCAL_IMAGE, ROOT, ComposeStack
from tests.support.api import Operator

FULL = os.environ.get("FLEETREG_COMPOSE_SCALE", "full") == "full"
FIGURES: dict[str, Any] = {}

# Storms come from one address (the test host, through podman's port forwarding): the clone
# bounds per source would refuse a factory's worth of clones, as they should (docs/security.md).
STORM_SETTINGS = {
    "FLEETREG_CLONE_LIMIT": "100000",
    "FLEETREG_CLONE_RATE_PER_SOURCE": "100000",
}


def image_exists(image: str) -> bool:
    found = subprocess.run(["podman", "image", "exists", image], check=False)  # noqa: S607 - podman from the PATH
    return found.returncode == 0


@pytest.fixture(scope="session", autouse=True)
def figures() -> Iterator[dict[str, Any]]:
    yield FIGURES
    out = ROOT / "var" / "compose" / "figures.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(FIGURES, indent=2, sort_keys=True), encoding="utf-8")
    print("\ncompose figures:", json.dumps(FIGURES, indent=2, sort_keys=True))


@pytest.fixture(scope="session")
def images() -> None:
    for image in (LOCAL_IMAGE, "localhost/fleetreg-kafka:4.1.1", "localhost/fleetreg-postgres:15-bookworm"):
        if not image_exists(image):
            pytest.fail(f"{image} is missing: run deploy/container/images.sh all (make compose-test does)")


@pytest.fixture(scope="session")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def new_account(stack: ComposeStack, session: aiohttp.ClientSession) -> Operator:
    created = await stack.fleetreg("account", "create", "--name", f"acct-{uuid.uuid4().hex[:8]}")
    return Operator(session, stack.operator_url, created["api_key"], created["id"])


@pytest.fixture(scope="module")
async def stack(images: None) -> AsyncIterator[ComposeStack]:
    """A project on the working tree's image, up and healthy; taken down (with its volumes)
    afterwards."""
    project = ComposeStack(f"fct{uuid.uuid4().hex[:6]}", settings=STORM_SETTINGS)
    try:
        FIGURES.setdefault("up_seconds", round(await project.up(), 1))
        yield project
    finally:
        await project.down()
