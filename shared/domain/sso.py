"""An account's single sign-on (issue 28): what an operator may configure, checked.

The account names its OpenID Connect provider (``issuer``, this application's
``client_id`` and ``client_secret`` there), the e-mail domains whose people sign in through
it (sign-in is e-mail first: a domain belongs to one account at most), how the provider's
groups map to roles (``groups_claim``, ``group_roles``; ``default_role`` for a person of
an allowed domain in no mapped group, or None: refused), and whether it is ``required``
(everyone but owners signs in through it: an owner keeps a password and TOTP, the
break-glass way in when the provider is down or misconfigured). A group never maps to
owner: owners are invited, by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email

from shared.domain.inputs import refuse_unknown_fields
from shared.domain.roles import KEY_ROLES, Role, parse_role
from shared.domain.webhooks import checked_url
from shared.errors import InvalidInput

SSO_CLIENT_SECRETS = b"fleetreg sso client secrets v1"  # the SecretBox purpose of client secrets
MAX_DOMAINS = 20
MAX_GROUPS = 50
MAX_TEXT = 200  # a client ID, a claim or a group name
MAX_SECRET = 500
FIELDS = (
    "issuer",
    "client_id",
    "client_secret",
    "allowed_domains",
    "groups_claim",
    "group_roles",
    "default_role",
    "required",
)


@dataclass(frozen=True)
class SsoSettings:
    """A checked configuration; ``client_secret`` None keeps the stored one (an update)."""

    issuer: str
    client_id: str
    client_secret: str | None
    allowed_domains: tuple[str, ...]
    groups_claim: str
    group_roles: dict[str, Role]
    default_role: Role | None
    required: bool


def checked_settings(body: dict[str, Any], *, creating: bool) -> SsoSettings:
    """The settings a ``PUT /v1/sso`` body asks for; InvalidInput (400) naming the field for
    an unknown field, a missing one, a wrong type, an issuer that is no http(s) URL (the
    webhooks' rules: its address is checked again whenever it is fetched), a domain that is
    not one, a group mapped to a role other than viewer, operator or admin. The client
    secret is required when ``creating`` and optional otherwise (kept when absent)."""
    refuse_unknown_fields(body, FIELDS, what="single sign-on")
    issuer = _text(body, "issuer", MAX_TEXT * 5)
    try:
        checked_url(issuer)
    except InvalidInput as exc:
        raise InvalidInput(f"issuer: {exc.message}", field="issuer", rule=exc.rule or "url") from None
    if issuer.endswith("/"):
        # The issuer is compared with the ID token's `iss` exactly (OpenID Connect Discovery
        # 1.0 section 4.3): a trailing slash the provider does not write would never match.
        raise InvalidInput(
            "issuer must be written exactly as the provider names itself, without a trailing '/'",
            field="issuer",
            rule="no-trailing-slash",
        )
    secret = body.get("client_secret")
    if secret is None and creating:
        raise InvalidInput("client_secret is required", field="client_secret", rule="required")
    if secret is not None:
        secret = _text(body, "client_secret", MAX_SECRET)
    groups = body.get("group_roles", {})
    if not isinstance(groups, dict) or len(groups) > MAX_GROUPS:
        raise InvalidInput(
            f"group_roles must be an object of up to {MAX_GROUPS} groups, each a role",
            field="group_roles",
            rule="type=object",
        )
    group_roles = {}
    for name, role in groups.items():
        if not name or len(name) > MAX_TEXT or not name.isprintable():
            raise InvalidInput(
                f"a group name must be 1 to {MAX_TEXT} printable characters",
                field="group_roles",
                rule="group",
            )
        group_roles[name] = parse_role(role, field=f"group_roles.{name[:40]}", allowed=KEY_ROLES)
    default = body.get("default_role")
    required = body.get("required", False)
    if not isinstance(required, bool):
        raise InvalidInput("required must be true or false", field="required", rule="type=boolean")
    return SsoSettings(
        issuer=issuer,
        client_id=_text(body, "client_id", MAX_TEXT),
        client_secret=secret,
        allowed_domains=checked_domains(body.get("allowed_domains")),
        groups_claim=_text(body, "groups_claim", MAX_TEXT) if "groups_claim" in body else "groups",
        group_roles=group_roles,
        default_role=None
        if default is None
        else parse_role(default, field="default_role", allowed=KEY_ROLES),
        required=required,
    )


def checked_domains(value: object) -> tuple[str, ...]:
    """1 to MAX_DOMAINS e-mail domains, each as email-validator reads the domain of an
    address (IDNA, lower case; no DNS asked), without repeats."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_DOMAINS:
        raise InvalidInput(
            f"allowed_domains must be a list of 1 to {MAX_DOMAINS} e-mail domains",
            field="allowed_domains",
            rule=f"items=1..{MAX_DOMAINS}",
        )
    domains: list[str] = []
    for item in value:
        domain = domain_of(f"x@{item}") if isinstance(item, str) and "@" not in item else None
        if domain is None:
            raise InvalidInput(
                "each of allowed_domains must be an e-mail domain such as example.com",
                field="allowed_domains",
                rule="domain",
            )
        if domain not in domains:
            domains.append(domain)
    return tuple(domains)


def domain_of(email: str) -> str | None:
    """The domain of an e-mail address, lower case in its ASCII (IDNA) form, or None when
    the text is no address. What picks an account's single sign-on at sign-in."""
    try:
        checked = validate_email(email, check_deliverability=False)
    except (EmailNotValidError, ValueError):
        return None
    return str(checked.ascii_domain).lower()


def domain_spellings(domains: tuple[str, ...]) -> list[str]:
    """Each of ``domains`` (the IDNA form :func:`domain_of` gives) in both the forms an
    address may be stored with: the ASCII one, and the Unicode one the people's addresses are
    normalised to (``shared.domain.people.checked_email``), lower case."""
    spellings: list[str] = []
    for domain in domains:
        try:
            unicode_form = str(validate_email(f"x@{domain}", check_deliverability=False).domain).lower()
        except (EmailNotValidError, ValueError):
            unicode_form = domain
        spellings += [form for form in (domain, unicode_form) if form not in spellings]
    return spellings


def role_from_groups(groups: object, group_roles: dict[str, Role], default: Role | None) -> Role | None:
    """The highest role any of a person's ``groups`` (the provider's claim: a list of
    strings; anything else is no group) maps to, else ``default``; None: no entry."""
    mapped = (
        [group_roles[g] for g in groups if isinstance(g, str) and g in group_roles]
        if isinstance(groups, list)
        else []
    )
    ranked = [role for role in KEY_ROLES if role in mapped]
    return ranked[-1] if ranked else default


def _text(body: dict[str, Any], field: str, limit: int) -> str:
    """A field's text, trimmed; InvalidInput naming the field and the rule it broke."""
    value = body.get(field)
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field, rule="type=string")
    if "\0" in value:  # Postgres's text cannot hold it
        raise InvalidInput(f"{field} may not hold a NUL character", field=field, rule="charset=no-NUL")
    if not value.strip() or len(value) > limit:
        raise InvalidInput(
            f"{field} must be a text of 1 to {limit} characters", field=field, rule=f"max_length={limit}"
        )
    return value.strip()
