"""The ``taro-ext`` command line. Each feature module contributes its subcommands through
``add_commands(subparsers)``; heavy imports happen inside the handlers, so ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib

# Modules that define add_commands(subparsers). Each sets `func` on its parsers.
COMMAND_MODULES = [
    "taro_ext.cli.generate",
    "taro_ext.cli.evaluate",
    "taro_ext.cli.train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taro-ext", description="TARo test-time alignment: decode, train, evaluate")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
