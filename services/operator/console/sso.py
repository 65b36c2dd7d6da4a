"""Single sign-on in the console (issue 28): the outgoing half of an account's OpenID
Connect sign-in. The console's outgoing HTTP lives in console modules (docs/architecture.md);
the protocol itself (PKCE, state, nonce, the ID token's checks) is shared/oidc.py's, through
the operator's one :class:`shared.oidc.OidcClient` (services/operator/resources.py, under
the webhooks' address rules).

- :func:`single_sign_on_for`: the e-mail step found an address whose domain is an
  account's single sign-on: a page going on to the provider's authorization URL, and the
  pending sign-in (the
  state, nonce and PKCE verifier, the account, where to go afterwards) kept in a cookie of
  its own, sealed like the password steps' (console/people.py) and SameSite=Lax: the
  provider's redirect back is a cross-site navigation, on which a Strict cookie is not
  sent.
- :func:`finish`: the callback's query checked against that cookie and the provider (the
  ID token verified against its keys): who signed in, for which account.

The client secret is opened from the registry for each call and never logged; no log line
here quotes a code, a token or a state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web

from services.operator.console.auth import render, resources
from services.operator.console.people import pending, set_pending
from services.operator.handlers import sso as sso_handlers
from shared.db.sso import SsoProvider
from shared.domain.sso import domain_of
from shared.errors import InvalidInput
from shared.oidc import Identity, Pending, Provider, ProviderUnavailable

log = logging.getLogger(__name__)
SSO_COOKIE = "fleetreg_console_sso"
# What the pending sign-in is sealed to (a password step's cookie, bound to the sign-in
# form's token, never opens as this one, nor this one as that).
SSO_BINDING = "fleetreg console single sign-on"
SSO_STAGE = "sso"
CALLBACK_PATH = "/console/sso/callback"
UNAVAILABLE = (
    "Your organisation's identity provider cannot be used right now ({reason}). Try again in a "
    "minute. An owner of the account may sign in with a password meanwhile."
)


class NoSignInStarted(InvalidInput):
    """The callback came without this browser's pending sign-in (none, expired, used)."""


@dataclass(frozen=True)
class SignedIn:
    """A callback that passed every check: the account's single sign-on, the person the
    provider vouched for, and the console path to go to."""

    sso: SsoProvider
    identity: Identity
    next_path: str
    replaces: str | None = None  # a re-authentication: the session it replaces


def callback_url(request: web.Request) -> str:
    """This console's callback: FLEETREG_CONSOLE_URL's, else the address the request came to
    (what ``GET /v1/sso`` shows as ``redirect_uri``)."""
    base = resources(request).settings.console.console_url or str(request.url.origin())
    return base + CALLBACK_PATH


def _provider(request: web.Request, found: SsoProvider) -> Provider:
    try:
        secret = sso_handlers.client_secret(resources(request).settings.secret_key, found)
    except ValueError:
        log.warning("an account's SSO client secret does not open with this FLEETREG_SECRET_KEY")
        raise ProviderUnavailable(
            UNAVAILABLE.format(reason="its client secret must be set again: fleetreg sso set")
        ) from None
    return Provider(
        issuer=found.issuer,
        client_id=found.client_id,
        client_secret=secret,
        groups_claim=found.groups_claim,
        allowed_domains=found.allowed_domains,
    )


async def single_sign_on_for(request: web.Request, email: str, next_path: str) -> web.StreamResponse | None:
    """The page going on to the provider of the account whose single sign-on has ``email``'s
    domain, with the pending sign-in's cookie set; None when no account has that domain
    (the password form). ProviderUnavailable (the 503 page) when the provider cannot be
    reached, or its address or discovery document is not acceptable."""
    domain = domain_of(email)
    if domain is None:
        return None
    found = await sso_handlers.sso_for_domain(resources(request).pool, domain)
    return None if found is None else await _to_provider(request, found, next_path)


async def confirm_through_provider(
    request: web.Request, account_id: str, session_id: str, next_path: str
) -> web.StreamResponse | None:
    """Re-authentication of a person of an account with single sign-on: the page going on to
    the account's provider, which is asked to sign the person in anew (``prompt=login``);
    its callback opens a new session, authenticated now, and ends ``session_id`` (when it is
    the same person's). None: the account has none."""
    found = await sso_handlers.sso_of_account(resources(request).pool, account_id)
    if found is None:
        return None
    return await _to_provider(request, found, next_path, prompt="login", replaces=session_id)


async def _to_provider(
    request: web.Request,
    found: SsoProvider,
    next_path: str,
    prompt: str | None = None,
    replaces: str | None = None,
) -> web.StreamResponse:
    try:
        url, started = await resources(request).oidc.begin(
            _provider(request, found), callback_url(request), prompt=prompt
        )
    except (ProviderUnavailable, InvalidInput) as exc:
        # Whatever the reason, the person can do nothing about it: the account's admins can.
        log.warning(
            "single sign-on could not begin",
            extra={"account_id": found.account_id, "issuer": found.issuer, "error": exc.message},
        )
        raise ProviderUnavailable(UNAVAILABLE.format(reason=exc.message)) from None
    # A page, not a redirect: the sign-in form's CSP (form-action 'self') forbids a form's
    # answer to redirect to another site; the page's own navigation is no form's.
    response = render("sso_to_provider.html", request, None, {"url": url})
    set_pending(
        response,
        request,
        SSO_BINDING,
        {
            "stage": SSO_STAGE,
            "account_id": found.account_id,
            "oidc": started.to_dict(),
            "next": next_path,
            "replaces": replaces,
        },
        cookie=SSO_COOKIE,
        same_site="Lax",
    )
    return response


async def finish(request: web.Request) -> SignedIn:
    """The callback's person, once every check passed: this browser's pending sign-in
    (NoSignInStarted, 400, without one), the account's single sign-on still there, and the
    provider's answer (shared.oidc: SignInRefused, 401, naming the check; ProviderUnavailable,
    503). The caller drops the pending cookie whatever the outcome: it works once."""
    state = pending(request, SSO_BINDING, SSO_STAGE, cookie=SSO_COOKIE)
    if state is None:
        raise NoSignInStarted(
            "No single sign-on was started in this browser, or it took too long, or it was used "
            "already. Start again from the sign-in page.",
            field="state",
            rule="pending",
        )
    found = await sso_handlers.sso_of_account(resources(request).pool, str(state.get("account_id", "")))
    if found is None:
        raise NoSignInStarted(
            "The account no longer signs in through single sign-on. Start again from the sign-in page.",
            field="sso",
            rule="removed",
        )
    oidc = state.get("oidc")
    started = Pending.from_dict(oidc if isinstance(oidc, dict) else {})
    try:
        identity = await resources(request).oidc.finish(_provider(request, found), started, request.query)
    except InvalidInput as exc:  # the provider's address or documents: the admins', not the person's
        log.warning(
            "single sign-on could not finish",
            extra={"account_id": found.account_id, "issuer": found.issuer, "error": exc.message},
        )
        raise ProviderUnavailable(UNAVAILABLE.format(reason=exc.message)) from None
    replaces = state.get("replaces")
    replaced = replaces if isinstance(replaces, str) else None
    return SignedIn(found, identity, str(state.get("next", "")), replaced)
