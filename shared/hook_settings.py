"""A registration hook's settings as an operator gives them, checked, for every kind of
registration that has one (an auto registration on the operator API, a bulk registration
on the bulk API): the URL under the webhooks' rules and its host's addresses, the timeout
and the failure policy, and a new signing secret sealed at rest for the registration
(docs/registration-hook.md, "Configuration")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.addresses import check_addresses
from shared.db import registrations
from shared.db.pool import Pool
from shared.db.registrations import Hook
from shared.domain import hooks, webhooks
from shared.domain.accounts import Account
from shared.domain.products import RegistrationKind
from shared.domain.roles import Role, at_least
from shared.errors import Forbidden, InvalidInput
from shared.settings import Secret


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


def require_hook_role(actor: Account, body: Mapping[str, Any]) -> None:
    """Forbidden (403) naming the first hook field of ``body`` when ``actor`` is below admin:
    a registration hook is an admin's (docs/security.md, "Roles"), as webhooks are: it sends
    every claim to an outside address and decides who registers. An operator creates and
    changes registrations without these fields."""
    given = [name for name in hooks.HOOK_FIELDS if name in body]
    if given and not at_least(actor.role, Role.ADMIN):
        raise Forbidden(
            f"{given[0]} needs the admin role (a registration hook is an admin's setting); "
            f"the caller's role is {actor.role}",
            field=given[0],
            rule=f"role>={Role.ADMIN}",
        )


async def hook_change(
    body: Mapping[str, Any],
    registration_id: str,
    *,
    actor: Account,
    secret_key: Secret,
    allow_private: bool,
    creation: bool = False,
) -> HookChange:
    """The hook fields of ``body`` (``hook_url``: an http(s) URL under the webhooks' rules,
    its host's addresses checked as a webhook's, or null to remove the hook;
    ``hook_timeout_ms``: 50-10000; ``hook_failure``: closed or open). A URL gets a new
    signing secret, sealed for ``registration_id``. Forbidden (403) naming the field when
    ``actor`` is below admin (:func:`require_hook_role`), before anything is checked;
    InvalidInput naming the field; on a ``creation``, rule ``required`` (field
    ``hook_url``) for a timeout or policy without a URL, which would have no hook to set."""
    require_hook_role(actor, body)
    timeout_ms = hooks.checked_timeout_ms(body["hook_timeout_ms"]) if "hook_timeout_ms" in body else None
    failure = hooks.checked_failure(body["hook_failure"]) if "hook_failure" in body else None
    if body.get("hook_url") is None:
        if creation and (timeout_ms is not None or failure is not None):
            raise InvalidInput(
                "hook_timeout_ms and hook_failure need a hook_url", field="hook_url", rule="required"
            )
        return HookChange(url_changes="hook_url" in body, timeout_ms=timeout_ms, failure=failure)
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


async def store_hook_change(
    pool: Pool, actor: Account, kind: RegistrationKind, registration_id: str, change: HookChange
) -> None:
    """Apply ``change`` to the hook of the actor's registration of ``kind`` (nothing for an
    empty change); audited by shared.db.registrations.set_hook. NotFound outside the
    actor's account."""
    if change.empty:
        return
    await registrations.set_hook(
        pool,
        actor,
        kind,
        registration_id,
        url_changes=change.url_changes,
        url=change.hook.url if change.hook else None,
        secret_sealed=change.hook.secret_sealed if change.hook else None,
        timeout_ms=change.timeout_ms,
        failure=change.failure,
    )
