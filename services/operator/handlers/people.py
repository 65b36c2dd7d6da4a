"""A person's own sign-in credentials and console sessions (issue 28), as the console's
sign-in, re-authentication and account pages use them: the repository's functions
(shared.db.people_sessions), which decide nothing more than what they read and write. Who
may sign in is decided in services/operator/console/people.py and console/auth.py."""

from __future__ import annotations

from shared.db.people_sessions import (
    PersonCredentials,
    PersonSession,
    account_has_users,
    change_password,
    end_other_sessions,
    end_session,
    mark_authenticated,
    person_by_email,
    person_by_id,
    replace_recovery_codes,
    sessions_of,
    set_password,
    set_totp,
    take_totp_step,
    unused_recovery_codes,
    use_recovery_code,
)

__all__ = [
    "PersonCredentials",
    "PersonSession",
    "account_has_users",
    "change_password",
    "end_other_sessions",
    "end_session",
    "mark_authenticated",
    "person_by_email",
    "person_by_id",
    "replace_recovery_codes",
    "sessions_of",
    "set_password",
    "set_totp",
    "take_totp_step",
    "unused_recovery_codes",
    "use_recovery_code",
]
