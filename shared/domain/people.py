"""The rules of an account's people (issue 28), pure: e-mail addresses, invitations, who
may grant, change or remove which role, and service accounts' names.

Who may do what to a person (docs/security.md, "People"): admins and owners manage people;
only an owner grants, changes or removes ``owner``, except in an account that has no owner
yet (every account from before people existed), where an admin may make its first owner;
nobody changes their own role or removes themselves (another admin does it, so that nobody
locks themselves out by a slip); the last owner is neither removed nor demoted (that is
checked in the registry, under the account's row lock).
"""

from __future__ import annotations

import hashlib
import re
import secrets

from email_validator import EmailNotValidError, validate_email

from shared.domain.roles import KEY_ROLES, Role, at_least
from shared.errors import Forbidden, InvalidInput

# RFC 5321's limit on a path (254 characters between the angle brackets); checked before the
# library, so that an over-long value is refused without being parsed.
EMAIL_MAX_LENGTH = 254
INVITATION_HOURS_DEFAULT = 72  # three days: a week-end between the invitation and its use
INVITATION_HOURS_MAX = 720  # thirty days
# A service account's name: what the audit trail and the key list show for its keys.
SERVICE_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")


def checked_email(value: object, *, field: str = "email") -> str:
    """The address ``value`` names, normalised (the domain in lower case and IDNA-checked,
    Unicode in NFC: the email-validator library's form, which the uniqueness of users,
    compared case-insensitively, relies on). InvalidInput naming ``field`` for a value that
    is not a string, longer than 254 characters, holds a control character, or is not an
    address (the library's reason). Deliverability is not checked: no DNS from here."""
    if value is None:
        raise InvalidInput(f"{field} is required", field=field, rule="required")
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field, rule="type=string")
    if len(value) > EMAIL_MAX_LENGTH:
        raise InvalidInput(
            f"{field} is longer than {EMAIL_MAX_LENGTH} characters",
            field=field,
            rule=f"max_length={EMAIL_MAX_LENGTH}",
        )
    if any(not c.isprintable() for c in value):  # NUL and the other control characters
        raise InvalidInput(f"{field} may not hold control characters", field=field, rule="format=email")
    try:
        found = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(
            f"{field} is not an e-mail address: {exc}", field=field, rule="format=email"
        ) from None
    return str(found.normalized)


def checked_hours(value: object) -> int:
    """An invitation's lifetime in hours (``expires_in_hours``): a whole number from 1 to
    720, 72 when absent (None); InvalidInput otherwise."""
    if value is None:
        return INVITATION_HOURS_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INVITATION_HOURS_MAX:
        raise InvalidInput(
            f"expires_in_hours must be a whole number from 1 to {INVITATION_HOURS_MAX}",
            field="expires_in_hours",
            rule=f"range=1..{INVITATION_HOURS_MAX}",
        )
    return value


def checked_service_account_name(value: object) -> str:
    """A service account's name: 1 to 64 letters, digits, spaces, dots, underscores and
    hyphens, starting with a letter or digit; InvalidInput naming ``name`` otherwise."""
    if not isinstance(value, str):
        raise InvalidInput("name must be a string", field="name", rule="type=string")
    if not SERVICE_ACCOUNT_NAME.fullmatch(value) or value != value.rstrip():
        raise InvalidInput(
            "name must be 1 to 64 letters, digits, spaces, '.', '_' or '-', starting with a letter "
            "or digit and not ending with a space",
            field="name",
            rule="pattern=[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}",
        )
    return value


def new_invitation_token() -> str:
    """An invitation link's token: 256 random bits, URL-safe; shown once, stored as a digest."""
    return secrets.token_urlsafe(32)


def invitation_digest(token: str) -> bytes:
    """What the registry keeps of a token (SHA-256: the token is random and long, so a plain
    digest cannot be reversed by guessing, as for API keys)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def refused(actor_role: str, message: str, needed: str = Role.OWNER) -> Forbidden:
    """The 403 of a change to people the actor's role does not allow (a viewer's says it is
    read-only, as every refusal of a read-only key does)."""
    if actor_role == Role.VIEWER:
        return Forbidden(
            "this API key is read-only: it cannot change anything; use a full key",
            field="Authorization",
            rule="scope=read-only",
        )
    return Forbidden(message, field="Authorization", rule=f"role>={needed}")


def check_may_grant(actor_role: str, role: str, *, account_has_owner: bool) -> None:
    """Whether an actor may invite someone as ``role`` (or make a person ``role``): an admin
    any role but owner; owner only an owner, or an admin while the account has no owner
    (its first owner). Forbidden otherwise."""
    if not at_least(actor_role, Role.ADMIN):
        raise refused(
            actor_role, f"managing people needs the admin role; the caller's is {actor_role}", "admin"
        )
    if role == Role.OWNER and actor_role != Role.OWNER and account_has_owner:
        raise refused(actor_role, "only an owner makes someone an owner (the account has one)")


def check_may_change(
    actor_role: str,
    actor_user_id: str | None,
    target_id: str,
    target_role: str,
    new_role: str | None,
    *,
    account_has_owner: bool,
) -> None:
    """Whether an actor may change a person's role to ``new_role`` (None: remove them).
    Forbidden for a change of one's own role or one's own removal, for an admin's change or
    removal of an owner, and for a role the actor may not grant (:func:`check_may_grant`).
    The last owner's rule is the registry's (it needs the account's lock)."""
    if not at_least(actor_role, Role.ADMIN):
        raise refused(
            actor_role, f"managing people needs the admin role; the caller's is {actor_role}", "admin"
        )
    if actor_user_id is not None and actor_user_id == target_id:
        what = "remove yourself" if new_role is None else "change your own role"
        raise Forbidden(
            f"nobody may {what}: another admin or owner does it",
            field="id",
            rule="not-self",
        )
    if target_role == Role.OWNER and actor_role != Role.OWNER:
        raise refused(actor_role, "only an owner changes or removes an owner")
    if new_role is not None:
        check_may_grant(actor_role, new_role, account_has_owner=account_has_owner)


def roles_above(role: str) -> list[str]:
    """The key roles ranked above ``role``: a person's keys are capped to their new role."""
    return [str(r) for r in KEY_ROLES if not at_least(role, r)]
