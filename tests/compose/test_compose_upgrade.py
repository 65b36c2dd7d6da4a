"""Upgrade in place (issue 23): a stack running the image of the release v0.3.0 takes a storm,
then its services are replaced with the working tree's image one by one, in the documented
order (deploy/container/compose.sh upgrade; docs/operations.md, "Upgrades"), while devices keep
booting: nothing lost, nothing duplicated, each migration applied once. Later releases keep this
test: the release it starts from moves forward only when the upgrade path does."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest

from cli.simulate import plan_fleet
from shared.db.migrations import available_migrations
from tests.compose.conftest import FIGURES, FULL, STORM_SETTINGS, image_exists, new_account
from tests.compose.fleet import KeepBooting, assert_whole, auto_product, registry_matches, storm
from tests.compose.stack import LOCAL_IMAGE, ROOT, SERVICES, ComposeStack, run_images

RELEASE = "v0.3.0"
# The commit the tag names, for a clone that came without tags.
RELEASE_COMMIT = "dcb8a31fa08d47619fc823cc4d2a241f6e776971"
RELEASE_IMAGE = f"localhost/fleetreg:{RELEASE}"


def release_ref() -> str:
    tagged = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{RELEASE}^{{commit}}"],  # noqa: S607 - git from the PATH
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert tagged.returncode != 0 or tagged.stdout.strip() == RELEASE_COMMIT, "v0.3.0 was moved"
    return RELEASE if tagged.returncode == 0 else RELEASE_COMMIT


DEVICES = 1000 if FULL else 100

pytestmark = pytest.mark.skipif(not FULL, reason="the full form only (make compose-test)")


@pytest.fixture(scope="module")
async def released(images: None) -> AsyncIterator[ComposeStack]:
    """A project on the release's image (built from its tag when missing), up and healthy."""
    if not image_exists(RELEASE_IMAGE):
        started = time.monotonic()
        await asyncio.to_thread(run_images, "fleetreg", release_ref(), RELEASE)
        FIGURES["release_image_build_s"] = round(time.monotonic() - started, 1)
    project = ComposeStack(f"fcu{uuid.uuid4().hex[:6]}", image=RELEASE_IMAGE, settings=STORM_SETTINGS)
    try:
        await project.up()
        yield project
    finally:
        await project.down()


async def test_upgrading_in_place_while_devices_boot_loses_and_duplicates_nothing(
    released: ComposeStack, session: aiohttp.ClientSession
) -> None:
    operator = await new_account(released, session)
    product_id, code = await auto_product(operator)
    before = await storm(released, plan_fleet(code, DEVICES, clone_rate=0.05))
    assert not before.failed, before.failed
    during_product, during_code = await auto_product(operator)

    booting = KeepBooting(released, during_code)
    await asyncio.sleep(1)
    started = time.monotonic()
    await released.compose("upgrade", LOCAL_IMAGE)
    upgraded_in = time.monotonic() - started
    assert booting.in_flight
    await booting.stop()

    FIGURES["upgrade"] = {
        "from": RELEASE,
        "replace_all_s": round(upgraded_in, 1),
        "devices_booted_meanwhile": booting.devices,
        "retries": booting.retries,
        "failed": booting.failed,
        "devices": booting.timeline.recovery(started),
    }
    for service in SERVICES:
        assert await released.inspect(service, "{{.ImageName}}") == LOCAL_IMAGE, service
    assert not booting.failed, booting.failed
    assert_whole(await registry_matches(operator, product_id, before), DEVICES)
    assert_whole(await registry_matches(operator, during_product, booting.told), booting.devices)
    # every migration of this tree applied, each exactly once
    shipped = len(available_migrations())
    rows = await released.psql("SELECT count(*) || ' ' || count(DISTINCT version) FROM schema_migrations")
    assert rows == f"{shipped} {shipped}"
