"""Console session tokens carry a keyed tag: a cookie this deployment never issued (made
up, or from before sessions carried a tag) is refused from memory, and counted against
its address, without the registry read that finding a session costs."""

from __future__ import annotations

import secrets
import uuid
from typing import cast

import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client import REGISTRY

from services.operator.console.sessions import STALE_SESSION, RegistryStorage, digest
from shared.db import console_sessions
from shared.db.pool import Pool
from shared.domain.credentials import Keyring, new_session_token, session_token_is_issued
from shared.throttle import REFUSED

KEYRING = Keyring(b"k" * 32)


def test_an_issued_token_verifies_and_nothing_else_does() -> None:
    token = new_session_token(KEYRING.session_tag)
    assert len(token) == 60 and token.isascii() and token != new_session_token(KEYRING.session_tag)
    assert session_token_is_issued(token, KEYRING.session_tag)
    assert not session_token_is_issued(token, Keyring(b"o" * 32).session_tag)  # another deployment
    body, _, tag = token.partition(".")
    for forged in (
        body,  # the shape of a session issued before the tag: signed out
        f"{body}.{'A' * 16}",
        f"{secrets.token_urlsafe(32)}.{tag}",
        f"{body}.{tag}x",
        f"{body}x.{tag}",
        f"{body}.{tag[:-1]}",
        f".{tag}",
        "",
        ".",
        "é" * 43 + "." + tag,
    ):
        assert not session_token_is_issued(forged, KEYRING.session_tag), forged


def _reads() -> float:
    return REGISTRY.get_sample_value("fleetreg_console_session_reads_total") or 0.0


async def test_a_cookie_never_issued_is_refused_without_a_registry_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read: list[bytes] = []

    async def load_console_session(pool: object, token_digest: bytes) -> str | None:
        read.append(token_digest)
        return None  # lapsed

    monkeypatch.setattr(console_sessions, "load", load_console_session)
    storage = RegistryStorage(  # the pool is never used: the reads are faked
        lambda _: cast(Pool, None), lambda _: KEYRING, max_age=3600, always_secure=False
    )
    before = _reads()
    made_up = (
        f"{uuid.uuid4().hex}{uuid.uuid4().hex[:11]}",  # 43 characters: the old shape
        secrets.token_urlsafe(32),
        f"{secrets.token_urlsafe(32)}.{'A' * 16}",  # the new shape, a made-up tag
        "x" * 5000,
    )
    for cookie in made_up:
        request = make_mocked_request(
            "GET", "/console/devices", headers={"Cookie": f"fleetreg_console={cookie}"}
        )
        session = await storage.load_session(request)
        assert session.new and session.identity is None
        assert request.get(REFUSED) and request.get(STALE_SESSION)  # counted, and its cookie deleted
    assert read == [] and _reads() == before

    issued = new_session_token(KEYRING.session_tag)  # issued, but its session has ended
    request = make_mocked_request("GET", "/console/devices", headers={"Cookie": f"fleetreg_console={issued}"})
    assert (await storage.load_session(request)).identity is None
    assert read == [digest(issued)] and _reads() == before + 1
    assert request.get(REFUSED)

    nothing = make_mocked_request("GET", "/console/devices")  # no cookie: no credential, not counted
    assert (await storage.load_session(nothing)).new and not nothing.get(REFUSED)
