"""Serving the receiver over HTTP: a threaded WSGI server around :func:`create_app`.

Alertmanager sends a handful of deliveries a minute; Werkzeug's threaded server is enough and
keeps the receiver one process (one dispatcher thread). ``robustloop webhook`` runs
:func:`serve`; tests start a :class:`ReceiverServer` on a free port and always stop it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from robustloop.config import RobustloopConfig
from webhook.app import create_app, receiver_of

log = logging.getLogger(__name__)


class ReceiverServer:
    """A receiver app served on ``host:port`` from a background thread.

    Args:
        app: an app made by :func:`create_app`; closed (dispatcher, outbox) by :meth:`stop`.
        host: bind address.
        port: port; 0 picks a free one (see :attr:`port`).
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self.host = host
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="webhook-http",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9095``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ReceiverServer:
        """Serve from a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, then stop the dispatcher and close the outbox."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()
        receiver_of(self.app).close()

    def __enter__(self) -> ReceiverServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    config: RobustloopConfig,
    host: str | None = None,
    port: int | None = None,
    config_path: Path | None = None,
) -> None:
    """Run the receiver until SIGINT or SIGTERM; prints ``listening on <url>`` once ready.

    Raises:
        webhook.errors.ConfigurationError: the receiver cannot start as configured.
    """
    app = create_app(config, config_path=config_path)
    settings = config.webhook
    server = ReceiverServer(
        app,
        host if host is not None else settings.host,
        port if port is not None else settings.port,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("signal %d: stopping the receiver", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        auth = "bearer token" if settings.auth == "bearer" else "NO authentication"
        print(
            f"robustloop webhook: listening on {server.url}/api/v1/alerts "
            f"({auth}, submitter {config.submitter.kind}, outbox {settings.db_path}"
            f"{', DRY RUN' if settings.dry_run else ''})",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stdout.flush()


__all__ = ["ReceiverServer", "serve"]
