"""Who made an audit event, in one line (shared.domain.accounts.actor_text), as the CLI's
audit table and the console's device page print it."""

from __future__ import annotations

import pytest

from shared.domain.accounts import Account, actor_fields, actor_text

NOBODY = {"user_id": None, "user_email": None, "role": None, "service_account": None, "session_id": None}


@pytest.mark.parametrize(
    ("event", "shown"),
    [
        (  # a person through the console
            {
                "api_key_id": None,
                "api_key_label": "",
                "actor": NOBODY | {"user_email": "alice@example.com", "role": "admin", "session_id": "s"},
            },
            "alice@example.com (admin, console session)",
        ),
        (  # a person's own key
            {
                "api_key_id": "k",
                "api_key_label": "laptop",
                "actor": NOBODY | {"user_email": "olga@example.com", "role": "operator"},
            },
            "olga@example.com (operator, key laptop)",
        ),
        (  # automation
            {
                "api_key_id": "k",
                "api_key_label": "ci",
                "actor": NOBODY | {"service_account": "default", "role": "admin"},
            },
            "service account default (admin, key ci)",
        ),
        ({"api_key_id": "k1", "api_key_label": "", "actor": NOBODY}, "key k1"),  # before people existed
        ({"api_key_id": "k1", "api_key_label": "old"}, "key old"),  # no actor at all (an old payload)
        ({"api_key_id": None, "api_key_label": "", "actor": NOBODY}, "fleetreg"),  # fleetreg's own change
    ],
)
def test_the_actor_is_named_in_one_line(event: dict[str, object], shown: str) -> None:
    assert actor_text(event) == shown


def test_fleetregs_own_changes_carry_no_role_and_a_keys_carry_its_owner() -> None:
    assert actor_fields(Account("a", "n")) == NOBODY
    keyed = Account("a", "n", key_id="k", role="operator", service_account="robots")
    assert actor_fields(keyed) == NOBODY | {"role": "operator", "service_account": "robots"}
