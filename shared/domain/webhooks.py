"""Webhooks' rules, defined once: which events exist, which URLs and addresses may be
called, the retry schedule, how a refusal is summarised, and the signing secret's
encryption at rest. Pure functions (and one cipher): no registry, broker or HTTP.

Payloads follow the Standard Webhooks specification (https://www.standardwebhooks.com):
the body is ``{"type": ..., "timestamp": ISO 8601, "data": {...}}`` and each request
carries ``webhook-id`` (the same on every attempt of one delivery), ``webhook-timestamp``
(Unix seconds of the attempt) and ``webhook-signature`` (``v1,`` and the base64
HMAC-SHA256 of ``id.timestamp.body`` with the secret), which the ``standardwebhooks``
package verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.domain.dedup import QUOTAS, REASON_BULK_NOT_LISTED, Quota
from shared.errors import InvalidInput

DEVICE_REGISTERED = "device.registered"
DEVICE_PROVISIONED = "device.provisioned"
DEVICE_CLONE_DETECTED = "device.clone_detected"
DEVICE_OFFLINE = "device.offline"
DEVICE_DISABLED = "device.disabled"
BULK_PUBLISHED = "bulk.published"
REGISTRATION_REFUSED = "registration.refused"
# Every event a webhook may ask for, in the order the docs list them.
EVENT_TYPES = (
    DEVICE_REGISTERED,
    DEVICE_PROVISIONED,
    DEVICE_CLONE_DETECTED,
    DEVICE_OFFLINE,
    DEVICE_DISABLED,
    BULK_PUBLISHED,
    REGISTRATION_REFUSED,
)
# How long a delivery that must follow another event of its device (``after_event_id``: a
# confirmation after its registration, a disable after a registration just made) waits for
# that event to be consumed; past it, it goes without it (the event's record lost or long
# delayed). The claim reads it (shared.db.webhooks.claim_due), and so does the registry's
# announcement of a device change, which waits only for a registration this recent.
ORDER_WAIT_S = 300.0

MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"  # noqa: S105 -- the format's prefix, not a secret
SECRET_BYTES = 32  # the specification asks for 24 to 64 random bytes

# registration.refused counts refusals of the account's own codes by these reasons.
REFUSAL_REASONS = ("throttled", "quota", "wrong_key", "other")


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` and base64 of 32 random bytes (shown once)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def event_id(kind: str, *source: str) -> str:
    """The ``webhook-id`` of an event: derived from what caused it (a request ID, a device
    and a time, ...), so an event consumed twice gets the same ID and one delivery."""
    return "msg_" + uuid.uuid5(uuid.NAMESPACE_URL, "fleetreg:" + "\x1f".join((kind, *source))).hex


def body(kind: str, at: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of a delivery (Standard Webhooks' payload shape)."""
    return {"type": kind, "timestamp": at.astimezone(UTC).isoformat(), "data": data}


def refusal_reason(quota: Quota | None, reason: str) -> str:
    """The summary's reason for one refusal, by the limit that refused it (``quota``, as
    the refused outcome carries it: RegistrationOutcome.refused_by) or else its text:
    quota (a final limit: the registration's max_devices, the clone limit), throttled (a
    limit refusing for now: the clone rate per source; the intake's own throttling is
    counted where it happens), wrong_key or other. A new kind of limit is placed by its
    entry in shared.domain.dedup.QUOTAS (``final``), nothing here."""
    if quota is not None:
        return "quota" if QUOTAS[quota].final else "throttled"
    return "wrong_key" if reason == REASON_BULK_NOT_LISTED else "other"


def checked_events(value: object) -> tuple[str, ...]:
    """A webhook's event list: a non-empty JSON array of known event names, each once
    (kept in the order given). InvalidInput otherwise."""
    if not isinstance(value, list) or not value:
        raise InvalidInput(
            "events must be a non-empty array of event names", field="events", rule="type=array,min_items=1"
        )
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or item not in EVENT_TYPES:
            raise InvalidInput(
                f"events: each must be one of {', '.join(EVENT_TYPES)}", field="events", rule="enum"
            )
        if item not in names:
            names.append(item)
    return tuple(names)


@dataclass(frozen=True)
class Target:
    """Where a URL points: its scheme, host (a name or an address literal) and port."""

    scheme: str
    host: str
    port: int

    @property
    def literal(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address, when the host is one (no name to resolve)."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def checked_url(value: object) -> tuple[str, Target]:
    """A webhook URL: an absolute http or https URL of at most 2048 printable ASCII
    characters, with a host, without credentials or a fragment. Returns it unchanged and
    its target; InvalidInput (field ``url``) otherwise. The host's addresses are checked
    separately (:func:`address_refusal`), at creation and before every attempt."""
    if not isinstance(value, str) or not value:
        raise InvalidInput("url must be a non-empty string", field="url", rule="type=string")
    if len(value) > MAX_URL_LENGTH:
        raise InvalidInput(
            f"url is longer than {MAX_URL_LENGTH} characters",
            field="url",
            rule=f"max_length={MAX_URL_LENGTH}",
        )
    if not value.isascii() or not value.isprintable() or " " in value:
        raise InvalidInput(
            "url must be printable ASCII without spaces (encode other characters)",
            field="url",
            rule="charset=printable-ascii",
        )
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise InvalidInput(f"url is not a valid URL: {exc}", field="url", rule="format=uri") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidInput("url must start with http:// or https://", field="url", rule="scheme=http,https")
    if not host:
        raise InvalidInput("url has no host", field="url", rule="format=uri")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput(
            "url may not hold credentials: check the webhook-signature header instead",
            field="url",
            rule="no-userinfo",
        )
    if parts.fragment:
        raise InvalidInput("url may not have a #fragment", field="url", rule="no-fragment")
    if port == 0:
        raise InvalidInput("url's port must be 1 to 65535", field="url", rule="range=port")
    return value, Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))


def address_refusal(address: str, *, allow_private: bool) -> str | None:
    """Why the notifier may not connect to ``address`` (None: it may). Refused unless
    ``allow_private`` (FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS): loopback, link-local (cloud
    metadata services live there), private, IPv6 site-local (fec0::/10), shared
    (100.64/10), multicast, unspecified and reserved addresses; an IPv4 address inside an
    IPv6 one (mapped, 6to4, Teredo) is judged as itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ID names an interface
    except ValueError:
        return f"{address!r} is not an IP address"
    if allow_private:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 (mapped, 6to4, Teredo's client) is judged as
        # itself: 2002:7f00:1:: reaches 127.0.0.1 through a 6to4 relay.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            refusal = address_refusal(str(embedded), allow_private=False)
            if refusal is not None or ip.ipv4_mapped is not None:
                return refusal and f"{ip} carries {refusal}"
    for refused, what in (
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_private, "private"),
        # fec0::/10: deprecated (RFC 3879) and so out of the special-purpose registry the
        # standard library's is_global reads, yet still routed inside some networks.
        (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local, "site-local (fec0::/10)"),
        (ip.is_reserved, "reserved"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED, "shared (carrier-grade NAT)"),
        (not ip.is_global, "not globally routable"),
    ):
        if refused:
            article = "an" if what[0] in "aeiou" else "a"
            return f"{ip} is {article} {what} address (FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS is off)"
    return None


_SHARED = ipaddress.ip_network("100.64.0.0/10")


def name_refusal(host: str) -> str:
    """The one answer for a host name that does not resolve and for one that resolves to
    an address webhooks may not call: telling them apart would let a caller map this
    network's internal names (which exist, which do not). Neither the address nor the
    resolver's error is named."""
    return (
        f"the host {host} does not resolve, or not to public addresses only "
        "(FLEETREG_WEBHOOKS_ALLOW_PRIVATE_URLS is off)"
    )


def retry_delay(attempts: int, schedule: Sequence[float]) -> float | None:
    """The pause before the next attempt after ``attempts`` failed ones (1 = the first
    failed), or None when the schedule is exhausted and the delivery has failed."""
    if attempts < 1 or attempts > len(schedule):
        return None
    return schedule[attempts - 1]


# Standard Webhooks' reference (Svix) disables an endpoint after 5 days of failed
# attempts; Stripe after several days. FLEETREG_WEBHOOK_DISABLE_AFTER_SECONDS's default
# (the notifier's settings read it).
DEFAULT_DISABLE_AFTER_S = 5 * 86400.0
GONE = 410  # RFC 9110 section 15.5.11: the target is gone, and that is likely permanent


def disable_reason(
    http_status: int | None, failing_since: datetime | None, now: datetime, disable_after_s: float
) -> str | None:
    """Why a webhook must be disabled after a failed attempt (None: it stays enabled): the
    endpoint answered 410 Gone (the receiver says it is gone for good), or every attempt
    has failed since ``failing_since``, ``disable_after_s`` seconds or more ago."""
    if http_status == GONE:
        return "the endpoint answered 410 Gone"
    if failing_since is not None and (now - failing_since).total_seconds() >= disable_after_s:
        return (
            f"every attempt failed since {failing_since.astimezone(UTC).isoformat(timespec='seconds')}, "
            f"for {disable_after_s:g} s or more (FLEETREG_WEBHOOK_DISABLE_AFTER_SECONDS)"
        )
    return None


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"5,300,1800"``: seconds to wait before each retry (ValueError naming the problem)."""
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise ValueError("not a comma-separated list of seconds") from exc
    if any(d < 0 or d != d for d in delays):  # d != d: NaN
        raise ValueError("a delay is negative or not a number")
    return delays


# The Standard Webhooks suggested schedule, as the pause before each retry: attempts at
# once, then after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h (about 27.5 hours in all).
# Written as FLEETREG_WEBHOOK_RETRY_SCHEDULE is, the one default: the notifier's settings
# read it, .env.example, docker-compose.yml and the ConfigMap repeat it (tests/unit/test_deploy.py).
DEFAULT_RETRY_SCHEDULE_TEXT = "5,300,1800,7200,18000,36000,36000"
DEFAULT_RETRY_SCHEDULE = parse_schedule(DEFAULT_RETRY_SCHEDULE_TEXT)


WEBHOOK_SECRETS = b"fleetreg webhook signing secrets v1"
CONSOLE_SESSION_KEYS = b"fleetreg console session api keys v1"


class SecretBox:
    """Encrypts secrets at rest: AES-256-GCM with a key derived (HMAC-SHA256) from
    FLEETREG_SECRET_KEY and ``purpose`` (webhook signing secrets, or the API key a console
    session forwards to the bulk API), the owner's ID as associated data (a ciphertext
    copied to another webhook or session does not decrypt). Stored as 12-byte nonce +
    ciphertext and tag."""

    def __init__(self, secret_key: bytes, purpose: bytes = WEBHOOK_SECRETS) -> None:
        key = hmac.digest(secret_key, purpose, hashlib.sha256)
        self._aead = AESGCM(key)

    def seal(self, webhook_id: str, secret: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, secret.encode(), webhook_id.encode())

    def open(self, webhook_id: str, sealed: bytes) -> str:
        """The secret; ValueError when it was sealed with another key (FLEETREG_SECRET_KEY
        rotated) or for another webhook."""
        try:
            return self._aead.decrypt(sealed[:12], sealed[12:], webhook_id.encode()).decode()
        except InvalidTag as exc:
            raise ValueError("the webhook's secret does not decrypt with this FLEETREG_SECRET_KEY") from exc
