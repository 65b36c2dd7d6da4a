"""Re-authentication (issue 28): the most sensitive actions (revealing or rotating a code,
rotating a group key, creating keys, changing roles: ``reauth=True`` in console/auth.py) need
the person to have proved who they are within ``auth.REAUTH_SECONDS``. Here they do it again
(the password, and a TOTP or recovery code when enrolled); the session's ``authenticated_at``
is moved to now and the browser goes back where it was. A key's session is never asked."""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from services.operator.console import people, sso
from services.operator.console.auth import Context, Operator, action, flash, page, resources
from services.operator.console.forms import Form, text
from services.operator.console.pages.signin import safe_next
from services.operator.handlers import people as people_sessions
from shared.throttle import mark_refused, target_of


@page("re_auth.html")
async def reauth_form(request: web.Request, operator: Operator) -> Context:
    next_path = safe_next(request.query.get("next"))
    if operator.account.user_id is None:  # a key's session: nothing to prove
        raise web.HTTPSeeOther(next_path)
    person = await people_sessions.person_by_id(resources(request).pool, operator.account.user_id)
    return {
        "next": next_path,
        "needs_code": person is not None and person.totp_sealed is not None,
        # A person single sign-on made has no password: their provider confirms who they are.
        "through_provider": person is not None and person.password_hash is None,
    }


@action(write=False)
async def reauthenticate(request: web.Request, operator: Operator, form: Form) -> str:
    next_path = safe_next(text(form, "next"))
    user_id, session_id = operator.account.user_id, operator.account.session_id
    if user_id is None or session_id is None:
        return next_path
    target = target_of("person", (operator.account.user_email or "").casefold())
    people.refuse_if_blocked(request, target)
    pool = resources(request).pool
    person = await people_sessions.person_by_id(pool, user_id)
    proved = await people.password_matches(request, person, people.secret_field(form, "password"))
    if proved and person is not None and person.totp_sealed is not None:
        proved = await people.second_factor_passes(request, person, text(form, "code"))
    if not proved:
        mark_refused(request, target)
        flash(operator, "The password or the code is wrong.", "error")
        return "/console/re-auth?next=" + quote(next_path, safe="/")
    await people_sessions.mark_authenticated(pool, session_id)
    flash(operator, "Confirmed: go ahead.")
    return next_path


@action(write=False)
async def reauthenticate_through_provider(
    request: web.Request, operator: Operator, form: Form
) -> str | web.StreamResponse:
    """On to the account's identity provider, asked to sign the person in anew; its callback
    (pages/sso_signin.py) opens a new session and comes back to ``next``."""
    next_path = safe_next(text(form, "next"))
    if operator.account.user_id is None or operator.account.session_id is None:
        return next_path
    answer = await sso.confirm_through_provider(
        request, operator.account.id, operator.account.session_id, next_path
    )
    if answer is None:
        flash(operator, "This account no longer signs in through an identity provider.", "error")
        return "/console/re-auth?next=" + quote(next_path, safe="/")
    return answer


ROUTES: list[web.RouteDef] = [
    web.get("/re-auth", reauth_form),
    web.post("/re-auth", reauthenticate),
    web.post("/re-auth/sso", reauthenticate_through_provider),
]
