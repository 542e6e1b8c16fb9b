"""`scpnode users …` and `scpnode web`: the console's accounts and the console alone.

Passwords come from a prompt (asked twice) or, for scripts, the first line of standard input
(`--password-stdin`); never from an argument, which other users could read in `ps`.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from scpnode.cli import EXIT_OK, UsageError, database_from, print_json, settings_from
from scpnode.tables import print_table

ROLES = ("admin", "viewer")


def register(sub: Any, with_config: Any) -> None:
    p = with_config(sub.add_parser("web", help="the admin console alone (serve starts it)"))
    p.set_defaults(handler=cmd_web)
    users = sub.add_parser("users", help="console users").add_subparsers(
        dest="users_command", required=True, metavar="ACTION"
    )
    p = with_config(users.add_parser("add", help="create a console user"))
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES, required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(handler=cmd_users_add)
    p = with_config(users.add_parser("passwd", help="set a user's password (ends their sessions)"))
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true")
    p.set_defaults(handler=cmd_users_passwd)
    p = with_config(users.add_parser("remove", help="delete a user and their sessions"))
    p.add_argument("name")
    p.set_defaults(handler=cmd_users_remove)
    p = with_config(users.add_parser("list", help="users, roles, last sign-in"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_users_list)


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("passwords differ")
    return first


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _run(action: Any) -> int:
    from scpnode.web.users import UserError

    try:
        action()
    except UserError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def cmd_users_add(args: argparse.Namespace) -> int:
    from scpnode.clock import utcnow
    from scpnode.web.users import Role, add_user

    password = read_password(args.password_stdin)

    def act() -> None:
        with database_from(args).session() as session:
            add_user(session, args.name, Role(args.role), password, now=utcnow(), actor=_actor())
        print(f"user {args.name} added ({args.role})")

    return _run(act)


def cmd_users_passwd(args: argparse.Namespace) -> int:
    from scpnode.clock import utcnow
    from scpnode.web.users import set_password

    password = read_password(args.password_stdin)

    def act() -> None:
        with database_from(args).session() as session:
            set_password(session, args.name, password, now=utcnow(), actor=_actor())
        print(f"password of {args.name} set; their sessions ended")

    return _run(act)


def cmd_users_remove(args: argparse.Namespace) -> int:
    from scpnode.clock import utcnow
    from scpnode.web.users import remove_user

    def act() -> None:
        with database_from(args).session() as session:
            remove_user(session, args.name, now=utcnow(), actor=_actor())
        print(f"user {args.name} removed")

    return _run(act)


def cmd_users_list(args: argparse.Namespace) -> int:
    from scpnode.web.users import list_users

    with database_from(args).snapshot() as session:
        rows = list_users(session)
    if args.json:
        print_json(rows)
    else:
        print_table(
            rows,
            [
                ("name", "NAME"),
                ("role", "ROLE"),
                ("created_at", "CREATED"),
                ("last_login_at", "LAST SIGN-IN"),
            ],
        )
    return EXIT_OK


def cmd_web(args: argparse.Namespace) -> int:
    from scpnode.web.server import run_console

    return run_console(settings_from(args))


def association_outcomes() -> list[str]:
    from scpnode.domain import AssociationOutcome

    return [o.value for o in AssociationOutcome]


def cmd_audit_associations(args: argparse.Namespace) -> int:
    """The console's Associations page on the command line (same query, same filters)."""
    from scpnode.web.queries import list_associations

    with database_from(args).snapshot() as session:
        rows = list_associations(
            session,
            calling_aet=args.calling_aet,
            outcome=args.outcome,
            offset=0,
            limit=args.limit,
        )
    if args.json:
        print_json(rows)
    else:
        print_table(
            rows,
            [
                ("started_at", "STARTED"),
                ("calling_aet", "FROM"),
                ("peer", "PEER"),
                ("outcome", "OUTCOME"),
                ("instances", "N"),
                ("failures", "FAILED"),
                ("bytes", "BYTES"),
                ("detail", "DETAIL"),
            ],
        )
    return EXIT_OK
