"""``python -m service serve|push ...``: the same subcommands as ``ken serve|push``, without the ken CLI installed."""

from __future__ import annotations

import argparse
import sys

from service.cli import register_push, register_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service")
    subparsers = parser.add_subparsers(required=True, metavar="COMMAND")
    register_serve(subparsers)
    register_push(subparsers)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
