"""The ``robustloop`` command line.

Each area registers its sub-commands from one module under :mod:`robustloop.commands`; those
modules import heavy libraries (torch) inside their handlers only, so that ``robustloop webhook``
runs in the slim receiver image that has no torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from robustloop import __version__
from robustloop.commands import COMMAND_MODULES
from robustloop.commands.base import CommandError
from robustloop.config import ConfigError, load_config, override


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustloop",
        description="Detect evasion attacks on a served classifier, harden it by adversarial "
        "training, gate and roll out: on one machine or on Argo Workflows.",
    )
    parser.add_argument("--version", action="version", version=f"robustloop {__version__}")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="path of robustloop.yaml (default: ./robustloop.yaml if present, else defaults)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    _add_common_options(parser, top=True)
    return parser


def _add_common_options(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """Accept --config and -v after any (nested) sub-command too: `robustloop train --config X`."""
    if not top:
        parser.add_argument(
            "--config", type=Path, default=argparse.SUPPRESS, help="path of robustloop.yaml"
        )
        parser.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
        )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_common_options(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if getattr(args, "needs_config", True):
            args.cfg = load_config(args.config)
            if getattr(args, "device", None) is not None:  # --device of this command
                args.cfg = override(args.cfg, {"device": args.device})
        result = args.handler(args)
    except (ConfigError, CommandError) as exc:
        print(f"robustloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustloop: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
