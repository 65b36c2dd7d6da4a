"""The single sign-on callback (issue 28): the account's identity provider sends the person's
browser back here with a code, and the console signs them in.

What is trusted, and in which order (docs/security.md, "Single sign-on: the console"):

1. this browser's pending sign-in (console/sso.py: a sealed cookie, set when the e-mail step
   sent the browser to the provider, worth one callback within ``people.PENDING_SECONDS``);
   none: 400;
2. the provider's answer, checked by shared/oidc.py: the state is the pending one, the code
   is exchanged with the PKCE verifier and the client secret, the ID token verified against
   the provider's keys (issuer, audience, expiry, nonce), a verified e-mail address of one
   of the account's domains. A refusal is a 401 page naming the check, counted against the
   caller's address as any refused sign-in is;
3. the role the person's groups map to (``role_from_groups``), and the person made or
   updated by ``sign_in_through_sso`` (an owner stays one; no role, or an address of another
   account: 403);
4. a new session of the person (no fixation), then on to where they were going.

The last step is a page, not a redirect: the session cookie is SameSite=Strict, and a
browser does not send it on a redirect chain a cross-site page (the provider's) started; the
page's own navigation (a meta refresh, and a link) is same-site.
"""

from __future__ import annotations

from aiohttp import web

from services.operator.console import people, sso
from services.operator.console.auth import render, resources
from services.operator.console.pages.signin import safe_next
from services.operator.handlers import people as people_sessions
from services.operator.handlers import sso as sso_handlers
from shared.domain.sso import role_from_groups
from shared.errors import DomainError
from shared.oidc import SignInRefused
from shared.throttle import mark_refused


def _error(request: web.Request, status: int, message: str) -> web.Response:
    return render("error.html", request, None, {"status": status, "message": message}, status=status)


async def callback(request: web.Request) -> web.StreamResponse:
    """``GET /console/sso/callback?state=...&code=...``: the person signed in, or a page
    saying why not (400 no sign-in started, 401 refused, 403 no role here, 503 provider)."""
    response: web.StreamResponse
    try:
        signed = await sso.finish(request)
        role = role_from_groups(list(signed.identity.groups), signed.sso.group_roles, signed.sso.default_role)
        joined = await sso_handlers.sign_in_through_sso(
            resources(request).pool,
            signed.sso.account_id,
            signed.identity.email,
            signed.identity.subject,
            role,
        )
    except SignInRefused as exc:
        mark_refused(request)  # a tampered or replayed callback counts as a wrong password does
        response = _error(request, 401, f"The single sign-on was refused: {exc.message}.")
    except DomainError as exc:  # 400 nothing started, 403 no role here, 503 provider
        response = _error(request, exc.status, exc.message)
        response.headers.update(exc.headers())
    else:
        await people.start_session(request, account_id=signed.sso.account_id, user_id=joined.user.id)
        if signed.replaces is not None:
            # A re-authentication: the session it confirmed for ends (only if it is this
            # person's), its cookie not sent on the provider's cross-site redirect chain.
            await people_sessions.end_session(resources(request).pool, joined.user.id, signed.replaces)
        next_path = safe_next(signed.next_path)
        response = render(
            "sso_signed_in.html", request, None, {"next": next_path, "email": joined.user.email}
        )
    people.drop_pending(response, sso.SSO_COOKIE)  # one callback per sign-in, whatever it said
    return response


ROUTES: list[web.RouteDef] = [web.get("/sso/callback", callback)]
