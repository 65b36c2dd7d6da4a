"""``fleetreg users invite|list|update|remove`` and ``fleetreg service-accounts
list|create|remove|create-key``: the account's people and the service accounts automation's
keys belong to (docs/operations.md, "People"). Every call needs an admin key."""

from __future__ import annotations

import argparse
from typing import Any

from cli.arguments import object_id, positive_int
from cli.client import operator_client
from cli.output import confirm, emit_json, print_table

ROLES = ("owner", "admin", "operator", "viewer")
KEY_ROLES = ("viewer", "operator", "admin")


def register(groups: Any, common: argparse.ArgumentParser) -> None:
    users = groups.add_parser("users", help="the account's people: invite, list, change roles, remove")
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    invite = actions.add_parser(
        "invite", parents=[common], help="invite a person; prints the invitation link, once"
    )
    invite.add_argument("--email", required=True, help="the person's e-mail address")
    invite.add_argument("--role", required=True, choices=ROLES, help="the role they get")
    invite.add_argument(
        "--expires-in-hours",
        type=positive_int,
        default=None,
        help="how long the link works, in hours (1 to 720; default 72)",
    )
    invite.set_defaults(run=invite_user)
    listing = actions.add_parser("list", parents=[common], help="people and open invitations")
    listing.set_defaults(run=list_users)
    update = actions.add_parser("update", parents=[common], help="change a person's role")
    update.add_argument("id", type=object_id, metavar="ID")
    update.add_argument("--role", required=True, choices=ROLES)
    update.set_defaults(run=update_user)
    remove = actions.add_parser(
        "remove", parents=[common], help="remove a person: their sessions and keys end at once"
    )
    remove.add_argument("id", type=object_id, metavar="ID")
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    remove.set_defaults(run=remove_user)
    revoke = actions.add_parser("revoke-invitation", parents=[common], help="revoke an open invitation")
    revoke.add_argument("id", type=object_id, metavar="ID")
    revoke.set_defaults(run=revoke_invitation)

    accounts = groups.add_parser("service-accounts", help="named identities whose keys automation uses")
    sa_actions = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    sa_list = sa_actions.add_parser("list", parents=[common], help="the account's service accounts")
    sa_list.set_defaults(run=list_service_accounts)
    create = sa_actions.add_parser("create", parents=[common], help="create a service account")
    create.add_argument("--name", required=True, help="1 to 64 letters, digits, spaces, '.', '_', '-'")
    create.add_argument("--role", required=True, choices=KEY_ROLES, help="the most its keys may carry")
    create.set_defaults(run=create_service_account)
    sa_remove = sa_actions.add_parser(
        "remove", parents=[common], help="remove a service account; its keys are revoked"
    )
    sa_remove.add_argument("id", type=object_id, metavar="ID")
    sa_remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    sa_remove.set_defaults(run=remove_service_account)
    key = sa_actions.add_parser(
        "create-key", parents=[common], help="a key of a service account, printed once"
    )
    key.add_argument("id", type=object_id, metavar="ID")
    key.add_argument("--label", default="", help="what the key is for (up to 100 ASCII characters)")
    key.add_argument("--role", choices=KEY_ROLES, help="by default the service account's")
    key.set_defaults(run=create_service_account_key)


async def invite_user(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"email": args.email, "role": args.role}
    if args.expires_in_hours is not None:
        body["expires_in_hours"] = args.expires_in_hours
    async with operator_client() as client:
        issued = await client.post("/v1/users", body)
    if args.json:
        emit_json(issued)
        return 0
    print(f"invited {issued['email']} as {issued['role']} (invitation {issued['id']})")
    print(f"invitation link (shown once, works once, until {issued['expires_at']}):")
    print(issued["invitation_url"])
    return 0


async def list_users(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        found = await client.get("/v1/users")
    if args.json:
        emit_json(found)
        return 0
    rows = [(u["id"], u["email"], u["role"], _sign_in(u), u["created_at"]) for u in found["users"]]
    print_table(rows, ["id", "email", "role", "sign-in", "since"])
    print(f"{len(found['users'])} user(s)")
    if found["invitations"]:
        print()
        print_table(
            [(i["id"], i["email"], i["role"], i["expires_at"], _inviter(i)) for i in found["invitations"]],
            ["invitation", "email", "role", "expires", "invited by"],
        )
        print(f"{len(found['invitations'])} open invitation(s)")
    return 0


def _sign_in(user: dict[str, Any]) -> str:
    ways = [w for w, on in (("password", user["password"]), ("sso", user["sso_linked"])) if on]
    if user["totp_enrolled"]:
        ways.append("totp")
    return "+".join(ways) or "-"


def _inviter(invitation: dict[str, Any]) -> str:
    by = invitation["invited_by"]
    if by["user_email"]:
        return str(by["user_email"])
    return f"key {by['api_key_label']!r}" if by["api_key_label"] is not None else "-"


async def update_user(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        user = await client.patch(f"/v1/users/{args.id}", {"role": args.role})
    if args.json:
        emit_json(user)
    else:
        print(f"{user['email']} is now {user['role']}")
    return 0


async def remove_user(args: argparse.Namespace) -> int:
    confirm(f"Remove user {args.id}? Their sessions and API keys end at once.", assume_yes=args.yes)
    async with operator_client() as client:
        answer = await client.delete(f"/v1/users/{args.id}")
    if args.json:
        emit_json(answer)
    else:
        print(
            f"removed {answer['email']}: {answer['api_keys_revoked']} API key(s) revoked, "
            f"{answer['sessions_ended']} session(s) ended"
        )
    return 0


async def revoke_invitation(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        answer = await client.delete(f"/v1/invitations/{args.id}")
    if args.json:
        emit_json(answer)
    else:
        print(f"invitation {answer['revoked']} revoked: its link no longer works")
    return 0


async def list_service_accounts(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        found = (await client.get("/v1/service-accounts"))["service_accounts"]
    if args.json:
        emit_json({"service_accounts": found})
        return 0
    print_table(
        [(s["id"], s["name"], s["role"], s["active_api_keys"], s["created_at"]) for s in found],
        ["id", "name", "role", "active keys", "created"],
    )
    print(f"{len(found)} service account(s)")
    return 0


async def create_service_account(args: argparse.Namespace) -> int:
    async with operator_client() as client:
        created = await client.post("/v1/service-accounts", {"name": args.name, "role": args.role})
    if args.json:
        emit_json(created)
    else:
        print(f"service account {created['id']} ({created['name']}, {created['role']}) created")
    return 0


async def remove_service_account(args: argparse.Namespace) -> int:
    confirm(f"Remove service account {args.id}? Its API keys are revoked at once.", assume_yes=args.yes)
    async with operator_client() as client:
        answer = await client.delete(f"/v1/service-accounts/{args.id}")
    if args.json:
        emit_json(answer)
    else:
        print(f"service account {answer['removed']} removed: {answer['api_keys_revoked']} API key(s) revoked")
    return 0


async def create_service_account_key(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"label": args.label}
    if args.role:
        body["role"] = args.role
    async with operator_client() as client:
        issued = await client.post(f"/v1/service-accounts/{args.id}/api-keys", body)
    if args.json:
        emit_json(issued)
    else:
        print(f"API key {issued['id']} of {issued['service_account']} ({issued['role']}) created")
        print(f"API key (shown once, store it now): {issued['api_key']}")
    return 0
