"""An auto registration's inputs, checked: its attestation, where an x509 device names its
hardware ID, its device quota and its registration hook (the URL checked as a webhook's,
a new signing secret sealed at rest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.operator.handlers.addresses import check_addresses
from shared.db.registrations import Hook
from shared.domain import derived_keys, hooks, webhooks, x509_attestation
from shared.errors import InvalidInput
from shared.settings import Secret

# The column's range (a Postgres integer): a larger quota is no quota, so it is refused.
MAX_DEVICES_LIMIT = 2_147_483_647


def attestation_of(value: object) -> str:
    """The ``attestation`` of a new auto registration: ``code`` (the default),
    ``derived_key`` or ``x509`` (a mode not in AVAILABLE_ATTESTATIONS is refused,
    InvalidInput ``rule: available``)."""
    if value is None:
        return "code"
    if value not in derived_keys.ATTESTATIONS:
        raise InvalidInput(
            f"attestation must be one of {', '.join(derived_keys.ATTESTATIONS)}",
            field="attestation",
            rule="enum=" + ",".join(derived_keys.ATTESTATIONS),
        )
    if value not in derived_keys.AVAILABLE_ATTESTATIONS:
        raise InvalidInput(
            f"attestation {value} is not available yet: use "
            + " or ".join(derived_keys.AVAILABLE_ATTESTATIONS),
            field="attestation",
            rule="available=" + ",".join(derived_keys.AVAILABLE_ATTESTATIONS),
        )
    return str(value)


def hardware_id_from_of(body: dict[str, Any], attestation: str) -> str:
    """Where an x509 registration reads a device's hardware ID (``hardware_id_from``:
    shared.domain.x509_attestation.HARDWARE_ID_SOURCES, ``cn`` by default); refused for
    another attestation, which takes the hardware ID the device sends."""
    value = body.get("hardware_id_from")
    if value is None:
        return "cn"
    if attestation != "x509":
        raise InvalidInput(
            "hardware_id_from is an x509 registration's setting",
            field="hardware_id_from",
            rule="attestation=x509",
        )
    if value not in x509_attestation.HARDWARE_ID_SOURCES:
        raise InvalidInput(
            f"hardware_id_from must be one of {', '.join(x509_attestation.HARDWARE_ID_SOURCES)}",
            field="hardware_id_from",
            rule="enum=" + ",".join(x509_attestation.HARDWARE_ID_SOURCES),
        )
    return str(value)


def max_devices_of(value: object) -> int | None:
    """An auto registration's device quota: a whole number 1..MAX_DEVICES_LIMIT, or null (none)."""
    if value is None:
        return None
    if isinstance(value, float) and abs(value) > MAX_DEVICES_LIMIT:
        value = MAX_DEVICES_LIMIT + 1  # a whole number too large for the JSON parser's integers
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(
            "max_devices must be a whole number or null", field="max_devices", rule="type=integer"
        )
    if not 1 <= value <= MAX_DEVICES_LIMIT:
        raise InvalidInput(
            f"max_devices must be 1-{MAX_DEVICES_LIMIT} (null: no quota)",
            field="max_devices",
            rule=f"range=1..{MAX_DEVICES_LIMIT}",
        )
    return value


@dataclass(frozen=True)
class HookChange:
    """The hook settings a body asks for: ``url_changes`` with ``hook`` (None: remove the
    hook) and ``secret`` (the new signing secret, in clear only here, shown once); a
    ``timeout_ms`` or ``failure`` given alone changes that setting."""

    url_changes: bool = False
    hook: Hook | None = None
    secret: str = ""
    timeout_ms: int | None = None
    failure: hooks.HookFailure | None = None

    @property
    def empty(self) -> bool:
        return not self.url_changes and self.timeout_ms is None and self.failure is None


HOOKS_NOT_CONSULTED = (
    " is refused: no registration consults a registration hook in this release yet (issue 27 is "
    "built in slices, docs/registration-hook.md), so a hook would approve nothing; "
    "FLEETREG_REGISTRATION_HOOKS_PREVIEW=true on the operator stores one for trying the configuration"
)


async def hook_change(
    body: dict[str, Any], registration_id: str, *, secret_key: Secret, allow_private: bool, preview: bool
) -> HookChange:
    """The hook fields of ``body`` (``hook_url``: an http(s) URL under the webhooks' rules,
    its host's addresses checked as a webhook's, or null to remove the hook;
    ``hook_timeout_ms``: 50-10000; ``hook_failure``: closed or open). A URL gets a new
    signing secret, sealed for ``registration_id``. InvalidInput naming the field; rule
    ``preview`` for any hook field but a removal unless ``preview``
    (FLEETREG_REGISTRATION_HOOKS_PREVIEW)."""
    if not preview:
        for name in ("hook_url", "hook_timeout_ms", "hook_failure"):
            if name in body and not (name == "hook_url" and body[name] is None):
                raise InvalidInput(name + HOOKS_NOT_CONSULTED, field=name, rule="preview")
    timeout_ms = hooks.checked_timeout_ms(body["hook_timeout_ms"]) if "hook_timeout_ms" in body else None
    failure = hooks.checked_failure(body["hook_failure"]) if "hook_failure" in body else None
    if "hook_url" not in body:
        return HookChange(timeout_ms=timeout_ms, failure=failure)
    if body["hook_url"] is None:
        return HookChange(url_changes=True, timeout_ms=timeout_ms, failure=failure)
    try:
        url, target = webhooks.checked_url(body["hook_url"])
        await check_addresses(target, allow_private)
    except InvalidInput as exc:
        message = exc.message.removeprefix("url")
        raise InvalidInput("hook_url" + message, field="hook_url", rule=exc.rule) from None
    secret = webhooks.new_secret()
    sealed = webhooks.SecretBox(secret_key.reveal().encode(), hooks.HOOK_SECRETS).seal(
        registration_id, secret
    )
    hook = Hook(
        url,
        timeout_ms if timeout_ms is not None else hooks.DEFAULT_TIMEOUT_MS,
        failure or hooks.DEFAULT_FAILURE,
        sealed,
    )
    return HookChange(True, hook, secret, timeout_ms, failure)
