"""Serving the receiver over HTTP: :class:`robustloop.httpserver.HttpServer` (waitress) around
:func:`create_app`.

Alertmanager sends a handful of deliveries a minute; a few request threads are plenty, and the
receiver stays one process (one dispatcher thread, one SQLite writer). ``robustloop webhook`` runs
:func:`serve`; tests start a :class:`ReceiverServer` on a free port and always stop it.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from flask import Flask

from robustloop.config import RobustloopConfig
from robustloop.httpserver import BindError, HttpServer, body_cap, serve_until_signal
from webhook.app import Receiver, create_app, receiver_of
from webhook.errors import ConfigurationError

THREADS = 4
"""Request threads: deliveries are few, and each waits on one SQLite writer anyway."""


class ReceiverServer(HttpServer):
    """A receiver app served on ``host:port`` from a background thread.

    Args:
        app: an app made by :func:`create_app`; closed (dispatcher, outbox) by :meth:`stop`.
        host: bind address.
        port: port; 0 picks a free one (see :attr:`port`).

    Raises:
        robustloop.httpserver.AddressInUse: the port is taken (an :class:`OSError`); the app is
            left open, the caller closes it.
        robustloop.httpserver.BindError: the address cannot be bound for another reason.
    """

    receiver: Receiver
    """The app's :class:`webhook.Receiver` (dispatcher, outbox, submitter)."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        self.receiver = receiver_of(app)
        limit = self.receiver.config.webhook.max_body_bytes
        super().__init__(
            app,
            host,
            port,
            name="webhook",
            threads=THREADS,
            max_request_body_size=body_cap(limit),
        )

    def stop(self) -> None:
        """Stop serving, then stop the dispatcher and close the outbox (safe to call twice)."""
        try:
            super().stop()
        finally:
            self.receiver.close()


def serve(
    config: RobustloopConfig,
    host: str | None = None,
    port: int | None = None,
    config_path: Path | None = None,
) -> None:
    """Run the receiver until SIGINT or SIGTERM; prints ``listening on <url>`` once ready.

    Raises:
        webhook.errors.ConfigurationError: the receiver cannot start as configured, or cannot
            listen on its address (a busy port, say).
    """
    app = create_app(config, config_path=config_path)
    settings = config.webhook
    try:
        server = ReceiverServer(
            app,
            host if host is not None else settings.host,
            port if port is not None else settings.port,
        )
    except BindError as exc:
        receiver_of(app).close()
        raise ConfigurationError(str(exc)) from None

    def announce(stopping: threading.Event) -> None:
        del stopping
        auth = "bearer token" if settings.auth == "bearer" else "NO authentication"
        print(
            f"robustloop webhook: listening on {server.url}/api/v1/alerts "
            f"({auth}, submitter {config.submitter.kind}, outbox {settings.db_path}"
            f"{', DRY RUN' if settings.dry_run else ''})",
            flush=True,
        )

    try:
        serve_until_signal(server, announce)
    finally:
        sys.stdout.flush()


__all__ = ["ReceiverServer", "serve"]
