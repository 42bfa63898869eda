"""What every sub-command shares: the error a user can fix, and the common options."""

from __future__ import annotations

import argparse

from robustloop.config import Device, check_eps, choices


class CommandError(Exception):
    """A command failed for a reason the user can fix; printed as one line, exit 2."""


def eps_option(text: str) -> float:
    """argparse type of an ``--eps``: the config's one rule for an L-inf radius."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return check_eps(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda``: overrides the config's ``device`` for one command
    (``robustloop.cli.main`` applies it to ``args.cfg``)."""
    parser.add_argument(
        "--device",
        choices=choices(Device),
        default=None,
        help="where the model runs: auto (a CUDA GPU if torch sees one, else the CPU), cpu or "
        "cuda (default: device in robustloop.yaml, auto)",
    )
