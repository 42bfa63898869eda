"""Serve the model server app over HTTP: :class:`robustloop.httpserver.HttpServer` (waitress).

``robustloop serve`` runs a :class:`RunningServer` in the foreground; tests start one on a free
port and always stop it. The Prometheus registry lives in the process (Prometheus scrapes each
replica and the rules sum them); so does the feedback map, unless sample ids are signed
(``serving.feedback_signing_key_file``), which lets several replicas judge each other's
predictions (docs/serving.md).
"""

from __future__ import annotations

from flask import Flask

from robustloop.httpserver import DEFAULT_THREADS, HttpServer, body_cap
from serving.app import get_state


class RunningServer(HttpServer):
    """A model server app served on a background thread; a context manager that always stops it.

    Args:
        app: the WSGI app (from :func:`serving.create_app`).
        host: bind address.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        threads: requests served at once.

    Raises:
        robustloop.httpserver.AddressInUse: the port is taken (an :class:`OSError`).
        robustloop.httpserver.BindError: the address cannot be bound for another reason.
    """

    def __init__(
        self,
        app: Flask,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        limit = get_state(app).config.serving.max_body_bytes
        super().__init__(
            app,
            host,
            port,
            name="serve",
            threads=threads,
            max_request_body_size=body_cap(limit),
        )


__all__ = ["RunningServer"]
