"""What the subcommands share: ``CliError`` for a user's mistake found after parsing, and
argparse types that refuse a bad value at parse time, naming the flag (argparse adds it)."""
from __future__ import annotations

import argparse
import math
import os


class CliError(Exception):
    """A user's mistake found by a subcommand: ``main`` prints its message on one line, exit 2."""


def device(value: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    try:
        dev = torch.device(value)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{value!r}: no CUDA device is available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{value!r}: taro-ext runs on cpu or cuda devices")
    return value


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return n


def non_negative_float(value: str) -> float:
    x = float(value)
    if not (math.isfinite(x) and x >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return x


def positive_float(value: str) -> float:
    x = float(value)
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return x


def directory_to_write(value: str) -> str:
    """A directory that exists or can be created (not an existing file)."""
    if os.path.exists(value) and not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a file, not a directory")
    return value


def existing_file(value: str) -> str:
    """A file to read, checked before anything loads (a model, a dataset)."""
    if not os.path.isfile(value):
        raise argparse.ArgumentTypeError(f"{value}: " + ("a directory, not a file" if os.path.isdir(value)
                                                          else "no such file"))
    return value


def file_to_write(value: str) -> str:
    """A file path (not an existing directory) whose directory exists."""
    if os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a directory, not a file")
    parent = os.path.dirname(value) or "."
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{value}: no directory {parent}")
    return value
