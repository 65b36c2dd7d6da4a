"""People: users, open invitations (never a token; a new one's link shown once) and service
accounts with their keys (a new key shown once)."""

from __future__ import annotations

from services.operator.views.common import Json, time
from shared.db.accounts import IssuedApiKey
from shared.db.service_accounts import ServiceAccount
from shared.db.users import Invitation, IssuedInvitation, Removal, User


def user(found: User) -> Json:
    return {
        "id": found.id,
        "email": found.email,
        "role": found.role,
        "created_at": time(found.created_at),
        "password": found.has_password,
        "totp_enrolled": found.totp_enrolled,
        "sso_linked": found.sso_linked,
    }


def invitation(found: Invitation) -> Json:
    """An invitation: who to, until when and by whom (a person's e-mail, or a key's label)."""
    return {
        "id": found.id,
        "email": found.email,
        "role": found.role,
        "created_at": time(found.created_at),
        "expires_at": time(found.expires_at),
        "invited_by": {"user_email": found.invited_by_email, "api_key_label": found.invited_by_key_label},
    }


def people(users: list[User], invitations: list[Invitation]) -> Json:
    return {"users": [user(u) for u in users], "invitations": [invitation(i) for i in invitations]}


def issued_invitation(issued: IssuedInvitation, url: str) -> Json:
    return {
        **invitation(issued.invitation),
        "invitation_url": url,
        "note": "the link is shown once: send it to the person now; it works once, until it expires",
    }


def removed_user(removal: Removal) -> Json:
    return {
        "removed": removal.user.id,
        "email": removal.user.email,
        "api_keys_revoked": removal.api_keys_revoked,
        "sessions_ended": removal.sessions_ended,
    }


def revoked_invitation(invitation_id: str) -> Json:
    return {"revoked": invitation_id}


def service_account(found: ServiceAccount) -> Json:
    return {
        "id": found.id,
        "name": found.name,
        "role": found.role,
        "created_at": time(found.created_at),
        "active_api_keys": found.active_api_keys,
    }


def service_accounts(found: list[ServiceAccount]) -> Json:
    return {"service_accounts": [service_account(s) for s in found]}


def removed_service_account(service_account_id: str, revoked: int) -> Json:
    return {"removed": service_account_id, "api_keys_revoked": revoked}


def issued_service_account_key(issued: IssuedApiKey, name: str) -> Json:
    return {
        "id": issued.id,
        "api_key": issued.key,
        "label": issued.label,
        "read_only": issued.read_only,
        "role": issued.role,
        "service_account": name,
        "note": "shown once: store it now, it cannot be shown again",
    }
