"""The throttle's rules without I/O: which address counts, what the settings mean, and
that refusals (never healthy calls) lead to 429 with a growing Retry-After."""

from __future__ import annotations

import asyncio
import ipaddress
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from limits.aio.storage import MemoryStorage

from shared.domain.credentials import DEFAULT_STALE_CREDENTIAL_SECONDS, Keyring, stale
from shared.errors import TooManyRequests, Unauthorized
from shared.settings import Env, SettingsError
from shared.throttle import Throttle, ThrottleSettings, source_of, target_of

PROXY = (ipaddress.ip_network("10.0.0.0/8"),)


def settings(**env: str) -> ThrottleSettings:
    return ThrottleSettings.from_env(Env(env))


def test_defaults_throttle_refusals_and_keys_but_not_codes() -> None:
    s = settings()
    assert [str(i) for i in s.refusals_per_source] == [
        "30 per 1 minute",
        "300 per 1 hour",
        "1000 per 1 day",
    ]
    assert s.requests_per_key
    assert s.new_devices_per_code == ()
    assert s.trusted_proxies == ()


@pytest.mark.parametrize("value", ["lots", "30/fortnight", "30 per"])
def test_a_malformed_limit_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="FLEETREG_LIMIT_REFUSALS_PER_SOURCE"):
        settings(FLEETREG_LIMIT_REFUSALS_PER_SOURCE=value)


def test_off_turns_a_limit_off_and_proxies_are_parsed() -> None:
    s = settings(FLEETREG_LIMIT_REQUESTS_PER_KEY="off", FLEETREG_TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.1")
    assert s.requests_per_key == ()
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]
    with pytest.raises(SettingsError, match="FLEETREG_TRUSTED_PROXIES"):
        settings(FLEETREG_TRUSTED_PROXIES="not-an-address")


def test_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    assert source_of("198.51.100.7", "203.0.113.9", PROXY) == "198.51.100.7"
    assert source_of("10.1.2.3", "203.0.113.9", PROXY) == "203.0.113.9"
    # The client may put anything in front; only the hop the proxy added counts.
    assert source_of("10.1.2.3", "1.1.1.1, 203.0.113.9", PROXY) == "203.0.113.9"
    # Several trusted proxies in a row are skipped.
    assert source_of("10.1.2.3", "203.0.113.9, 10.9.9.9", PROXY) == "203.0.113.9"
    assert source_of("10.1.2.3", "garbage", PROXY) == "10.1.2.3"
    assert source_of(None, None, ()) == "unknown"


@pytest.mark.parametrize(
    ("hop", "source"),
    [
        ("203.0.113.9:5555", "203.0.113.9"),  # Azure Application Gateway writes IP:port
        ("[2001:db8:1:2::9]:443", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9", "2001:db8:1:2::/64"),  # bare: its colons are the address's
        ("[fe80::1%eth0]:80", "fe80::/64"),
        ("[::ffff:192.0.2.5]:1", "192.0.2.5"),
        ("203.0.113.9:", "10.0.0.5"),  # unparsable: the proxy's own address
        ("203.0.113.9:http", "10.0.0.5"),
        ("[2001:db8::1]x", "10.0.0.5"),
        ("[2001:db8::1", "10.0.0.5"),
        ("[203.0.113.9:80]", "10.0.0.5"),
    ],
)
def test_a_forwarded_for_hop_may_carry_a_port(hop: str, source: str) -> None:
    assert source_of("10.0.0.5", hop, PROXY) == source
    assert source_of("10.0.0.5", f"1.1.1.1, {hop}", PROXY) == source  # the rightmost hop counts


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    one = source_of("2001:db8:1:2:aaaa::1", None, ())
    two = source_of("2001:db8:1:2:ffff::9", None, ())
    assert one == two == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1", None, ()) != one
    assert source_of("::ffff:192.0.2.5", None, ()) == "192.0.2.5"


async def test_refusals_past_the_limit_answer_429_with_retry_after() -> None:
    throttle = Throttle(
        settings(FLEETREG_LIMIT_REFUSALS_PER_SOURCE="3/minute;5/hour"), "test", MemoryStorage()
    )
    for _ in range(3):  # three refusals are the allowance ...
        throttle.check_source("192.0.2.1")
        await throttle.refused("192.0.2.1")
    with pytest.raises(TooManyRequests) as raised:
        throttle.check_source("192.0.2.1")
    assert 1 <= raised.value.retry_after <= 60
    assert raised.value.headers() == {"Retry-After": str(raised.value.retry_after)}
    throttle.check_source("192.0.2.2")  # another address is not affected


async def test_persistence_makes_the_wait_grow_to_the_longer_window() -> None:
    throttle = Throttle(
        settings(FLEETREG_LIMIT_REFUSALS_PER_SOURCE="3/minute;5/hour"), "test", MemoryStorage()
    )
    for _ in range(5):  # the hourly allowance used up as well
        await throttle.refused("192.0.2.1")
    with pytest.raises(TooManyRequests) as raised:
        throttle.check_source("192.0.2.1")
    assert raised.value.retry_after > 60


async def test_another_instance_learns_a_block_from_its_announcement() -> None:
    announced: list[str] = []

    async def announce(source: str, until: float) -> None:
        announced.append(f"source:{source} {until:.3f}")

    first = Throttle(settings(FLEETREG_LIMIT_REFUSALS_PER_SOURCE="1/minute"), "a", MemoryStorage(), announce)
    second = Throttle(settings(), "b", MemoryStorage())
    await first.refused("2001:db8::/64")
    assert len(announced) == 1
    assert second.apply_announcement(announced[0])
    with pytest.raises(TooManyRequests):
        second.check_source("2001:db8::/64")
    assert not second.apply_announcement("device:abc")


async def test_key_rate_is_per_key() -> None:
    throttle = Throttle(settings(FLEETREG_LIMIT_REQUESTS_PER_KEY="5/minute"), "test")
    for _ in range(5):
        await throttle.check_key("key-one")
    with pytest.raises(TooManyRequests) as raised:
        await throttle.check_key("key-one")
    assert raised.value.rule == "requests_per_key"
    await throttle.check_key("key-two")


async def test_new_devices_per_code_counts_only_new_devices() -> None:
    throttle = Throttle(settings(FLEETREG_LIMIT_NEW_DEVICES_PER_CODE="2/minute"), "test")
    for _ in range(5):
        await throttle.check_code("CODE")  # checks alone (reboots, retries) do not count
    await throttle.count_new_device("CODE")
    await throttle.count_new_device("CODE")
    with pytest.raises(TooManyRequests, match="bulk identification code"):
        await throttle.check_code("CODE")
    await throttle.check_code("OTHER")


def test_every_forwarded_for_line_is_read_from_the_right() -> None:
    """A proxy that adds a line of its own after the client's (HAProxy's option
    forwardfor) must not let the client's forged first line decide the source."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from shared.throttle import THROTTLE, request_source

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        ("10.0.0.5", 4000) if name == "peername" else default
    )
    app = {THROTTLE: Throttle(ThrottleSettings((), (), (), PROXY), "test")}
    headers = CIMultiDict([("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.9")])
    request = make_mocked_request("GET", "/v1/account", headers=headers, transport=transport, app=app)
    assert request_source(request) == "203.0.113.9"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        ("Bearer\tabc", "abc"),
        ("Basic abc", None),
        ("Bearer ", None),
        ("Bearerabc", None),
        (None, None),
    ],
)
def test_the_bearer_scheme_is_case_insensitive(header: str | None, token: str | None) -> None:
    """RFC 9110 11.1: the scheme name is case-insensitive; the same token is authenticated
    and counted against its key's rate."""
    from shared.http import bearer

    assert bearer(header) == token


async def test_a_target_s_allowance_blocks_that_pair_only_and_travels_to_other_instances() -> None:
    announced: list[str] = []

    async def announce(key: str, until: float) -> None:
        announced.append(f"source:{key} {until:.3f}")

    throttle = Throttle(
        settings(
            FLEETREG_LIMIT_REFUSALS_PER_SOURCE="10/minute", FLEETREG_LIMIT_REFUSALS_PER_TARGET="2/minute"
        ),
        "test",
        MemoryStorage(),
        announce,
    )
    guessed = target_of("device", "7b0c0d3e-0000-7000-8000-000000000001")
    for _ in range(2):
        await throttle.refused("192.0.2.1", guessed)
    with pytest.raises(TooManyRequests) as raised:
        throttle.check_source("192.0.2.1", guessed)
    assert raised.value.rule == "refusals_per_target"
    throttle.check_source("192.0.2.1")  # the address's other failing calls: not yet
    throttle.check_source("192.0.2.1", target_of("device", "another"))
    throttle.check_source("192.0.2.2", guessed)  # the same target from another address
    other = Throttle(settings(), "b", MemoryStorage())
    assert other.apply_announcement(announced[-1])
    assert other.retry_after("192.0.2.1", guessed) is not None
    assert other.retry_after("192.0.2.1") is None


def test_targets_are_digests_of_what_was_guessed() -> None:
    code = "0A1B2C3D-0000-4000-8000-000000000000"
    target = target_of("code", code)
    assert target.startswith("code:") and code not in target and code.lower() not in target
    assert target_of("key", "frk_a") != target_of("key", "frk_A")  # keys are case-sensitive
    assert "|" not in target and " " not in target  # (the announcement's separators)


def test_settings_of_targets_and_stale_credentials() -> None:
    s = settings()
    assert [str(i) for i in s.refusals_per_target] == ["10 per 1 minute", "100 per 1 hour", "300 per 1 day"]
    assert s.stale_credential_seconds == DEFAULT_STALE_CREDENTIAL_SECONDS == 7 * 24 * 3600
    assert settings(FLEETREG_STALE_CREDENTIAL_SECONDS="60").stale_credential_seconds == 60


def test_every_401_carries_a_bearer_challenge() -> None:
    presented = Unauthorized("wrong", realm="fleetreg devices")
    assert presented.headers() == {
        "WWW-Authenticate": 'Bearer realm="fleetreg devices", error="invalid_token"'
    }
    assert presented.counted
    missing = Unauthorized("send one", realm="fleetreg operators", presented=False)
    assert missing.headers() == {"WWW-Authenticate": 'Bearer realm="fleetreg operators"'}
    assert not missing.counted  # no credential at all: not a guess
    stale_one = Unauthorized("replaced", counted=False, code="credentials_replaced")
    assert not stale_one.counted and stale_one.to_dict()["error"] == "credentials_replaced"


def test_an_older_generation_s_secret_is_recognised_within_the_window() -> None:
    keyring = Keyring(b"k" * 32)
    device = "7b0c0d3e-0000-7000-8000-000000000001"
    assert keyring.older_generation(device, 4, keyring.device_secret(device, 3)) == 3
    assert keyring.older_generation(device, 4, keyring.device_secret(device, 1)) == 1
    assert keyring.older_generation(device, 4, keyring.device_secret(device, 4)) is None  # current
    assert keyring.older_generation(device, 1, keyring.device_secret(device, 1)) is None
    assert keyring.older_generation(device, 4, "guess") is None
    now = datetime(2026, 1, 8, tzinfo=UTC)
    assert stale(now - timedelta(days=7), now, DEFAULT_STALE_CREDENTIAL_SECONDS)
    assert not stale(now - timedelta(days=7, seconds=1), now, DEFAULT_STALE_CREDENTIAL_SECONDS)
    assert not stale(None, now, DEFAULT_STALE_CREDENTIAL_SECONDS)


async def test_an_unknown_key_never_reaches_the_key_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random bearer tokens left moving windows in the limiter's memory, one per token
    (the operator went from 68 to 628 MB): a key is counted only once account_for found
    it, and a known key past its rate is refused before its next lookup."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from shared.db import accounts
    from shared.db.pool import Pool
    from shared.domain.accounts import Account
    from shared.http import account_for, api_key
    from shared.throttle import THROTTLE, throttle_middleware

    throttle = Throttle(settings(FLEETREG_LIMIT_REQUESTS_PER_KEY="3/minute"), "test")
    counted: list[str] = []
    lookups: list[str] = []
    check_key = throttle.check_key

    async def counting(key: str) -> None:
        counted.append(key)
        await check_key(key)

    async def account_for_key(pool: object, key: str) -> Account | None:
        lookups.append(key)
        return Account("a0000000-0000-4000-8000-000000000000", "acme") if key == "frk_valid" else None

    monkeypatch.setattr(throttle, "check_key", counting)
    monkeypatch.setattr(accounts, "account_for_key", account_for_key)
    app = web.Application()
    app[THROTTLE] = throttle
    middleware = throttle_middleware(per_key=True)

    async def route(request: web.Request) -> web.Response:
        await account_for(api_key(request), cast(Pool, None), request=request)  # the lookup is faked
        return web.Response()

    def call(key: str) -> web.Request:
        return make_mocked_request("GET", "/v1/account", app=app, headers={"Authorization": f"Bearer {key}"})

    for n in range(500):
        with pytest.raises(Unauthorized):
            await middleware(call(f"frk_{n:040x}"), route)
    assert counted == []
    memory = throttle._moving.storage
    assert isinstance(memory, MemoryStorage) and not memory.events and not memory.locks

    for _ in range(3):  # the key's rate: 3 a minute, counted once the key is known
        assert (await middleware(call("frk_valid"), route)).status == 200
    with pytest.raises(TooManyRequests):
        await middleware(call("frk_valid"), route)
    looked_up = len(lookups)
    with pytest.raises(TooManyRequests) as held:  # held before its lookup now
        await middleware(call("frk_valid"), route)
    assert held.value.rule == "requests_per_key" and held.value.retry_after >= 1
    assert len(lookups) == looked_up and counted == ["frk_valid"] * 4


async def test_a_clone_rate_wait_holds_the_id_and_its_spellings_on_every_instance() -> None:
    announced: list[str] = []

    async def announce(key: str, until: float) -> None:
        announced.append(f"source:{key} {until:.3f}")

    first = Throttle(settings(), "a", MemoryStorage(), announce)
    second = Throttle(settings(), "b", MemoryStorage())
    for _ in range(30):  # a flood's in-flight refusals land together: announced once
        await first.hold_clone_rate("192.0.2.1", "CODE", "B827EB-01", 17)
    assert len(announced) == 1
    assert second.apply_announcement(announced[0])
    # (the announcement carries milliseconds: rounded up, a whole second more at most)
    waits = {17, 18}
    for throttle in (first, second):
        # Any case, and a spelling whose family head is the refused ID: held.
        assert throttle.clone_rate_wait("192.0.2.1", "CODE", "b827eb-01") in waits
        assert throttle.clone_rate_wait("192.0.2.1", "CODE", "b827eb-01-1") in waits
        # A sibling (a distinct dashed ID), its parent, another code or address: not held.
        assert throttle.clone_rate_wait("192.0.2.1", "CODE", "b827eb-02") is None
        assert throttle.clone_rate_wait("192.0.2.1", "CODE", "b827eb") is None
        assert throttle.clone_rate_wait("192.0.2.1", "OTHER", "b827eb-01") is None
        assert throttle.clone_rate_wait("192.0.2.2", "CODE", "b827eb-01") is None
        # It is no refusal of the address: nothing else it does is held.
        assert throttle.retry_after("192.0.2.1") is None


async def test_attempts_are_counted_before_evaluation_and_a_burst_gets_only_the_allowance() -> None:
    """Attack 3, G1: each attempt is one atomic hit, so calls arriving together each see
    their own count; past it the pair's own wait (never the source's, G5), from memory."""
    announced: list[str] = []

    async def announce(key: str, until: float) -> None:
        announced.append(key)

    throttle = Throttle(
        settings(
            FLEETREG_LIMIT_REFUSALS_PER_SOURCE="1/day",
            FLEETREG_LIMIT_REFUSALS_PER_TARGET="10/minute;100/hour",
        ),
        "test",
        MemoryStorage(),
        announce,
    )
    guessed = target_of("hardware", "CODE", "h")
    await throttle.refused("192.0.2.1")  # the source is blocked for a day
    waits = await asyncio.gather(*(throttle.attempt("192.0.2.1", guessed) for _ in range(300)))
    assert waits.count(None) == 10
    assert {w is not None and 1 <= w <= 60 for w in waits if w is not None} == {True}
    # One announcement for the pair (and the source's), however many attempts saw it over (G6).
    assert announced.count(f"192.0.2.1|{guessed}") == 1
    assert await throttle.attempt("192.0.2.2", guessed) is None  # another address: its own
