"""The CA certificates of an x509 auto registration, on its page (docs/device-identity.md,
"X.509 certificates"): upload a CA (its verification code is then shown on the page), verify
it with a certificate of that code signed by its key, revoke and unrevoke serials, upload its
CRL, delete it. Each form goes back to the registration's page; the API's checks and their
messages are the handlers' (services/operator/handlers/attestation.py)."""

from __future__ import annotations

from aiohttp import web

from services.operator.console.auth import Operator, Route, action, flash, resources
from services.operator.console.forms import FIELD_MAX, Form, text
from services.operator.handlers import attestation as handlers
from shared.errors import InvalidInput
from shared.http import path_id

# A pasted PEM certificate or CRL: the handlers bound each more tightly; this keeps a form
# field from being read past what any of them takes.
PEM_MAX = 1_048_576


def _pem(form: Form, name: str) -> str:
    return text(form, name)[:PEM_MAX]


def _back(registration_id: str) -> str:
    return f"/console/auto-registrations/{registration_id}#cas"


@action()
async def add_ca(request: web.Request, operator: Operator, form: Form) -> str:
    registration_id = path_id(request, "registration_id")
    added = await handlers.add_ca(
        resources(request).pool, operator.account, registration_id, {"certificate": _pem(form, "certificate")}
    )
    flash(
        operator,
        f"CA uploaded, not verified yet: sign a certificate of CN={added.verification_code} with its key "
        "and paste it below to verify it.",
    )
    return _back(registration_id)


@action()
async def verify_ca(request: web.Request, operator: Operator, form: Form) -> str:
    ca_id = path_id(request, "ca_id")
    body = {"verification_certificate": _pem(form, "verification_certificate")}
    verified = await handlers.verify_ca(resources(request).pool, operator.account, ca_id, body)
    flash(operator, "CA verified: devices with certificates it issued register now.")
    return _back(verified.registration_id)


def _serial_change(revoked: bool) -> Route:
    @action()
    async def change(request: web.Request, operator: Operator, form: Form) -> str:
        ca_id = path_id(request, "ca_id")
        body = {"serial": text(form, "serial")[:FIELD_MAX]}
        pool = resources(request).pool
        if revoked:
            found = await handlers.revoke_serial(pool, operator.account, ca_id, body)
            flash(operator, "Serial revoked: certificates of this CA with it are refused from now on.")
        else:
            found = await handlers.unrevoke_serial(pool, operator.account, ca_id, body)
            flash(operator, "Serial no longer revoked.")
        return _back(found.registration_id)

    change.__name__ = change.__qualname__ = "revoke_serial" if revoked else "unrevoke_serial"
    return change


@action()
async def upload_crl(request: web.Request, operator: Operator, form: Form) -> str:
    ca_id = path_id(request, "ca_id")
    found = await handlers.upload_crl(
        resources(request).pool, operator.account, ca_id, {"crl": _pem(form, "crl")}
    )
    flash(operator, "CRL uploaded: the certificates it lists are refused from now on.")
    return _back(found.registration_id)


@action()
async def delete_ca(request: web.Request, operator: Operator, form: Form) -> str:
    ca_id = path_id(request, "ca_id")
    if text(form, "confirm") != "yes":
        raise InvalidInput(
            "tick “I understand its devices stop registering” to delete the CA",
            field="confirm",
            rule="required",
        )
    deleted = await handlers.delete_ca(resources(request).pool, operator.account, ca_id)
    flash(operator, "CA deleted: devices whose certificates chain to it no longer register.")
    return _back(deleted.registration_id)


ROUTES: list[web.RouteDef] = [
    web.post("/auto-registrations/{registration_id}/cas", add_ca),
    web.post("/attestation-cas/{ca_id}/verify", verify_ca),
    web.post("/attestation-cas/{ca_id}/revoke", _serial_change(True)),
    web.post("/attestation-cas/{ca_id}/unrevoke", _serial_change(False)),
    web.post("/attestation-cas/{ca_id}/crl", upload_crl),
    web.post("/attestation-cas/{ca_id}/delete", delete_ca),
]
