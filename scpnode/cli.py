"""`scpnode` command line: the composition root (DESIGN §4 is the contract).

Exit status: 0 success, 2 bad usage or invalid configuration (the message names the key),
1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scpnode import __version__
from scpnode.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from scpnode.db import Database

log = logging.getLogger("scpnode")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or configuration: exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from scpnode.logs import configure

    configure(args.log_level)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (ConfigError, UsageError) as exc:
        print(f"scpnode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        from scpnode.app import StartupError

        if isinstance(exc, StartupError):
            print(f"scpnode: {exc}", file=sys.stderr)
            return EXIT_USAGE
        log.exception("command failed")
        print(f"scpnode: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def database_from(args: argparse.Namespace) -> Database:
    """The configured database, migrated; commands read it through `.snapshot()` and write
    through `.session()`."""
    from scpnode.app import open_database

    return open_database(settings_from(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scpnode", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"scpnode {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from scpnode import commands

    commands.register(sub, with_config)
    return parser


def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="node.toml (default: $SCPNODE_CONFIG, then built-in defaults)",
    )
    return p


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    raise SystemExit(main())
