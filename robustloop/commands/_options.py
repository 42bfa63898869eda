"""Options that several sub-commands share (private to the CLI)."""

from __future__ import annotations

import argparse

from robustloop.config import DEVICES


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda``: overrides the config's ``device`` for one command
    (``robustloop.cli.main`` applies it to ``args.cfg``)."""
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help="where the model runs: auto (a CUDA GPU if torch sees one, else the CPU), cpu or "
        "cuda (default: device in robustloop.yaml, auto)",
    )
