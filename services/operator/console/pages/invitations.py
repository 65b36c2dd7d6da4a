"""An invitation's link (issue 28): ``/console/invitations/<token>``, the link
``fleetreg users invite`` shows once.

Opening it (GET) shows the invitation (the account, the address, the role, until when) and
the form to choose a password; it consumes nothing. Sending the form (POST) checks the
password against the policy, accepts the invitation (consumed in the same transaction that
makes the user: of two parallel accepts one wins) and signs the new person in. A link of no
open invitation (unknown, used, revoked, expired) is one clear page, the same whatever the
reason, and counts as a refusal of the caller's address as a wrong key does. Before any
session exists the form's CSRF token is the sign-in form's double-submit cookie."""

from __future__ import annotations

from aiohttp import web

from services.operator.console import people
from services.operator.console.auth import parsed_form, resources
from services.operator.console.pages.signin import SIGN_IN_COOKIE, check_sign_in_csrf, sign_in_page
from services.operator.handlers import users
from shared.domain.passwords import checked_password
from shared.errors import Conflict, InvalidInput, NotFound
from shared.throttle import mark_refused

GONE = (
    "This invitation link no longer works: it was accepted, withdrawn or has expired. "
    "Ask whoever invited you for a new one."
)


def _gone(request: web.Request) -> web.Response:
    mark_refused(request)
    return sign_in_page(request, GONE, status=404, template="invitation.html", context={"invitation": None})


async def show(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    invitation = await users.invitation_for(resources(request).pool, token)
    if invitation is None:
        return _gone(request)
    return sign_in_page(request, template="invitation.html", context={"invitation": invitation})


async def accept(request: web.Request) -> web.StreamResponse:
    form = await parsed_form(request)
    check_sign_in_csrf(request, form)
    token = request.match_info["token"]
    pool = resources(request).pool
    invitation = await users.invitation_for(pool, token)
    if invitation is None:
        return _gone(request)
    password = people.secret_field(form, "new_password")

    def refused(message: str, status: int) -> web.Response:
        return sign_in_page(
            request, message, status, template="invitation.html", context={"invitation": invitation}
        )

    if password != people.secret_field(form, "repeat_password"):
        return refused("The password and its repetition differ.", 400)
    try:
        checked = checked_password(password, email=invitation.email)
    except InvalidInput as exc:
        return refused(f"Choose another password: {exc.message}.", 400)
    people.refuse_if_blocked(request)
    try:
        user = await users.accept_invitation(
            pool, token, password_hash=await people.new_password_hash(checked)
        )
    except NotFound:
        return _gone(request)
    except Conflict as exc:
        return refused(exc.message, 409)
    await people.start_session(request, account_id=user.account_id, user_id=user.id)
    response = web.HTTPSeeOther("/console/account")
    response.del_cookie(SIGN_IN_COOKIE, path="/console/")
    raise response


ROUTES: list[web.RouteDef] = [
    web.get("/invitations/{token}", show),
    web.post("/invitations/{token}", accept),
]
