"""Entry point of the ``fleetreg`` command: parse, run one subcommand, exit 0 or 1.

Every subcommand accepts ``--json`` (one JSON document on stdout, progress and
logs on stderr). Errors end with exit code 1 and one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from cli.commands import COMMAND_MODULES
from cli.errors import CliError
from shared.service import use_fast_event_loop


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser = argparse.ArgumentParser(
        prog="fleetreg", description="Operate a fleetreg deployment: products, codes, devices."
    )
    groups = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(groups, common)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    use_fast_event_loop()
    try:
        code = asyncio.run(args.run(args))
    except CliError as exc:
        print(f"fleetreg: {exc}", file=sys.stderr)
        if exc.document is not None and getattr(args, "json", False):
            from cli.output import emit_json

            emit_json(exc.document)
        sys.exit(1)
    except KeyboardInterrupt:
        print("fleetreg: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
