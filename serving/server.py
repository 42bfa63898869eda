"""Run the model server: werkzeug's threaded WSGI server, for ``robustloop serve`` and tests.

For production, run the same app under gunicorn (``gunicorn 'serving.wsgi:make_app()'``, see
docs/serving.md). This module only binds, announces and stops.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class _KeepAliveHandler(WSGIRequestHandler):
    """HTTP/1.1, so that clients keep their connection open between requests."""

    protocol_version = "HTTP/1.1"


class RunningServer:
    """A Flask app served on a background thread; a context manager that always stops it.

    Args:
        app: the WSGI app (from :func:`serving.create_app`).
        host: bind address.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).

    Raises:
        OSError: the address cannot be bound (port in use, unknown host).
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        # Bind here rather than in werkzeug, which answers a busy port with sys.exit(1): an
        # OSError lets the caller say what went wrong.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, port), family=family, backlog=128) as sock:
            self._server: BaseWSGIServer = make_server(
                host,
                sock.getsockname()[1],
                app,
                threaded=True,
                request_handler=_KeepAliveHandler,
                fd=sock.fileno(),  # werkzeug serves on a duplicate of this socket
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="wsgi-server", daemon=True
        )

    @property
    def host(self) -> str:
        return str(self._server.host)

    @property
    def port(self) -> int:
        return int(self._server.port)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> RunningServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests, close the socket, wait for the serving thread."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["RunningServer"]
