"""What every HTTP stand-in of an external API shares (tests/argo_standin.py,
tests/kube_standin.py): a real threaded server on 127.0.0.1 at a free port, run in the
background as a context manager, that keeps handler errors for the test instead of printing
them, and a handler base that answers JSON.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class QuietServer(ThreadingHTTPServer):
    """Threaded server that keeps handler errors in :attr:`errors` instead of printing them.

    A client that gave up (a timeout) leaves a broken pipe: expected, ignored. Anything else is
    kept for the test to assert on. (The default prints a traceback from the handler thread,
    which Python 3.11 formats with ``ast.parse``, racing with imports elsewhere: gh-106905.)
    """

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.errors: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        del request, client_address
        error = sys.exc_info()[1]
        if not isinstance(error, (BrokenPipeError, ConnectionResetError)):
            self.errors.append(repr(error))


class JSONHandler(BaseHTTPRequestHandler):
    """A quiet HTTP/1.1 handler with :meth:`answer_json`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        del format, args

    def answer_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class StandInServer:
    """Serves ``handler`` on 127.0.0.1 at a free port while used as a context manager."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def errors(self) -> list[str]:
        """Unexpected errors in the handlers (a broken pipe is not one)."""
        return self._server.errors

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
