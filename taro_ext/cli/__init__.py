"""The ``taro-ext`` command line. Each feature module contributes its subcommands through
``add_commands(subparsers)``; heavy imports happen inside the handlers, so ``--help`` is fast.

A user's mistake (a bad flag value, a missing or malformed file, a record that cannot be
used) is one line on stderr and exit status 2; Ctrl-C is one line and 130. User errors are
``CliError``, ``ValueError`` (``data.DataError``, ``json.JSONDecodeError`` and
``UnicodeDecodeError`` among them) and ``OSError`` (a missing file, a full disk): the library
raises those, naming the argument, file or line. Anything else is a bug and keeps its
traceback. ``--debug`` (or ``TARO_EXT_DEBUG=1``) shows the traceback of user errors too.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .args import CliError

USER_ERRORS = (CliError, ValueError, OSError)

# Modules that define add_commands(subparsers). Each sets `func` on its parsers.
COMMAND_MODULES = [
    "taro_ext.cli.generate",
    "taro_ext.cli.evaluate",
    "taro_ext.cli.train",
]


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad flag reported on one line (not the usage block, then the error)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taro-ext", description="TARo test-time alignment: decode, train, evaluate")
    debug_help = "show the traceback of an error (also: TARO_EXT_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    for command in sub.choices.values():  # `taro-ext generate --debug ...` works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # argparse reports a bad flag itself, exit 2
    debug = args.debug or os.environ.get("TARO_EXT_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("taro-ext: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"taro-ext {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
