"""``robustloop webhook``: serve the Alertmanager webhook receiver (no torch needed)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add ``robustloop webhook`` to the robustloop parser."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "webhook",
        help="serve the Alertmanager webhook receiver",
        description="Serve POST /api/v1/alerts for Alertmanager: bearer token, durable SQLite "
        "outbox, cooldown and budget, submission to Argo or the local executor. Refuses to "
        "start without a token (webhook.token_file or $ROBUSTLOOP_WEBHOOK_TOKEN) unless "
        "`webhook.auth: none`, and while another receiver holds the same outbox "
        "(webhook.db_path; one receiver per outbox).",
    )
    parser.add_argument("--host", default=None, help="bind address (default: webhook.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: webhook.port)")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from robustloop.commands.base import CommandError
    from webhook.errors import ConfigurationError
    from webhook.server import serve

    try:
        serve(args.cfg, host=args.host, port=args.port, config_path=args.config)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    return 0


__all__ = ["register"]
