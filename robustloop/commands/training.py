"""``robustloop init`` (and, from the training issue, train/harden/evaluate/models)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from robustloop.config import DEFAULT_CONFIG_PATH, RobustloopConfig, dump_config


def register(sub: Any) -> None:
    """Add the training sub-commands."""
    p = sub.add_parser("init", help="write robustloop.yaml with every default, commented")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=_init, needs_config=False)


def _init(args: argparse.Namespace) -> int:
    from robustloop.cli import CommandError

    path = Path(args.config) if args.config else DEFAULT_CONFIG_PATH
    if path.exists() and not args.force:
        raise CommandError(f"{path} exists; pass --force to overwrite it")
    path.write_text(dump_config(RobustloopConfig()), encoding="utf-8")
    print(f"wrote {path}")
    return 0
