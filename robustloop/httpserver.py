"""The one HTTP server of robustloop: any WSGI app served by waitress from a background thread.

The model server (:class:`serving.RunningServer`) and the webhook receiver
(:class:`webhook.ReceiverServer`) are thin wrappers of :class:`HttpServer`; ``robustloop serve``
and ``robustloop webhook`` run one in the foreground until SIGINT or SIGTERM
(:func:`serve_until_signal`).

What it adds to waitress:

- it binds in the constructor, so that a busy port is a :class:`AddressInUse` (an
  :class:`OSError`) that names the address and says what to do, never a ``sys.exit``; port 0
  picks a free port (read it back from :attr:`HttpServer.port`);
- it runs waitress' event loop on its own thread and stops it from any other thread: stop
  accepting, let the requests in flight finish (at most ``shutdown_timeout`` seconds), close
  every connection (idle keep-alive ones included), join the thread;
- timeouts and limits: an idle connection is closed after ``channel_timeout`` seconds, at most
  ``connection_limit`` connections are open, a body over ``max_request_body_size`` is refused
  with a 413 while it is read (the apps keep their own, smaller limits).

This module is the floor: it imports the standard library and waitress, and no component of
robustloop (a contract of import-linter, see pyproject.toml).
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Self

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

log = logging.getLogger(__name__)

DEFAULT_THREADS = 8
"""Request threads of one server: requests are served concurrently, one per thread."""
DEFAULT_CHANNEL_TIMEOUT = 60
"""Seconds an idle connection (no request in progress) is kept open."""
DEFAULT_CONNECTION_LIMIT = 100
"""Open connections at most; past it the server stops accepting until one closes."""
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
"""Seconds :meth:`HttpServer.stop` waits for the requests in flight."""
_LOOP_TIMEOUT = 1
"""Seconds one poll of the event loop waits at most (waitress' own default)."""


def body_cap(app_limit: int) -> int:
    """The ``max_request_body_size`` for an app that refuses bodies over ``app_limit`` bytes.

    waitress reads a whole body (spooling a large one to a temporary file) before the app sees
    it. Twice the app's limit plus 1 MiB lets any plausible overshoot reach the app, which
    answers with its own 413 and message, while a huge upload is refused (a plain-text 413 from
    waitress, connection closed) as soon as it passes the cap.
    """
    return 2 * app_limit + (1 << 20)


class BindError(OSError):
    """The server cannot listen on ``host:port``; ``str()`` names the address and the remedy.

    Attributes:
        host: the bind address asked for.
        port: the port asked for.
        errno: the errno of the failed ``bind`` (``None`` for an unknown host).
        strerror: what went wrong and what to do, without the address.
    """

    def __init__(self, host: str, port: int, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        """``host:port`` (``[host]:port`` for an IPv6 address)."""
        return f"{_bracket(self.host)}:{self.port}"

    def __str__(self) -> str:
        return f"cannot listen on {self.address}: {self.strerror}"


class AddressInUse(BindError):
    """Another socket already listens on ``host:port`` (``EADDRINUSE``)."""


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound (not yet listening) to ``host:port``.

    Raises:
        AddressInUse: the port is taken.
        BindError: any other reason (unknown host, not an address of this machine, no permission).
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(
            host,
            port,
            None,
            f"unknown host {host!r} ({exc.strerror}); give an address of this machine with "
            "--host, such as 127.0.0.1 or 0.0.0.0 (all interfaces)",
        ) from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        # A restarted server can take its port back while old connections sit in TIME_WAIT;
        # on Linux this never lets two servers listen on one port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise _bind_error(host, port, exc) from None
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> BindError:
    if exc.errno == errno.EADDRINUSE:
        return AddressInUse(
            host,
            port,
            exc.errno,
            f"port {port} is in use; stop the other process or pick another port with --port",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        reason = (
            f"{host} is not an address of this machine; listen on 127.0.0.1 (this machine) or "
            "0.0.0.0 (all interfaces) with --host"
        )
    elif exc.errno == errno.EACCES:
        reason = (
            f"no permission to listen on port {port} (ports below 1024 need privileges); "
            "pick a port above 1024 with --port"
        )
    else:
        reason = exc.strerror or str(exc)
    return BindError(host, port, exc.errno, reason)


class _WaitressServer(TcpWSGIServer):
    """waitress' TCP server whose trigger is never pulled once closed.

    Worker threads pull the trigger (a pipe) to wake the event loop; after :meth:`close_trigger`
    a late pull is dropped rather than written to a closed (maybe reused) file descriptor.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._trigger_lock = threading.Lock()
        self._trigger_closed = False
        super().__init__(*args, **kwargs)

    def pull_trigger(self, thunk: Callable[[], None] | None = None) -> None:
        with self._trigger_lock:
            if not self._trigger_closed:
                self.trigger.pull_trigger(thunk)

    def close_trigger(self) -> None:
        with self._trigger_lock:
            self._trigger_closed = True
            self.trigger.close()


class HttpServer:
    """A WSGI app served by waitress on ``host:port`` from a background thread.

    The address is bound by the constructor; :meth:`start` starts serving; :meth:`stop` (or
    leaving the ``with`` block) stops. HTTP/1.1 keep-alive is on.

    Args:
        app: any WSGI application.
        host: bind address (a name is resolved; the first address is used).
        port: TCP port; 0 picks a free one (see :attr:`port`).
        name: names the serving thread and the log lines.
        threads: requests served at once.
        channel_timeout: seconds after which an idle connection is closed (at least 1).
        connection_limit: open connections at most.
        max_request_body_size: bodies over this many bytes are refused with a 413 while they are
            read (waitress' default is 1 GiB); the app may enforce a smaller limit of its own.
        shutdown_timeout: seconds :meth:`stop` waits for the requests in flight.

    Raises:
        AddressInUse: the port is taken (an :class:`OSError`).
        BindError: the address cannot be bound for another reason.
    """

    def __init__(
        self,
        app: WSGIApplication,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "http",
        threads: int = DEFAULT_THREADS,
        channel_timeout: int = DEFAULT_CHANNEL_TIMEOUT,
        connection_limit: int = DEFAULT_CONNECTION_LIMIT,
        max_request_body_size: int | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1 (got {threads})")
        if channel_timeout < 1:
            raise ValueError(f"channel_timeout must be at least 1 s (got {channel_timeout})")
        self.app = app
        self.name = name
        self.shutdown_timeout = shutdown_timeout
        self._settings: dict[str, Any] = {
            "threads": threads,
            "channel_timeout": channel_timeout,
            # how often idle connections are looked for: often enough for the timeout to hold
            "cleanup_interval": max(1, min(30, channel_timeout // 2)),
            "connection_limit": connection_limit,
            "asyncore_loop_timeout": _LOOP_TIMEOUT,
            "asyncore_use_poll": True,  # no select() limit of 1024 descriptors
        }
        if max_request_body_size is not None:
            # waitress refuses a body of exactly its setting: one more lets that size in
            self._settings["max_request_body_size"] = max_request_body_size + 1
        self._host = host
        self._socket = _bind(host, port)
        self._port = int(self._socket.getsockname()[1])
        self._lock = threading.Lock()
        self._server: _WaitressServer | None = None
        self._map: dict[int, Any] = {}
        self._thread: threading.Thread | None = None
        self._exit = False
        self._stopped = False

    @property
    def host(self) -> str:
        """The bind address as given."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port (the one picked when 0 was given)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{_bracket(self.host)}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the serving thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        """Start serving from a background thread; returns ``self``.

        Raises:
            RuntimeError: already started, or stopped.
        """
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"{self.name} server on {self.url} was stopped; make a new one")
            if self._server is not None:
                raise RuntimeError(f"{self.name} server on {self.url} is already started")
            dispatcher = ThreadedTaskDispatcher()
            dispatcher.set_thread_count(self._settings["threads"])
            try:
                self._server = _WaitressServer(
                    self.app,
                    map=self._map,
                    _sock=self._socket,
                    dispatcher=dispatcher,
                    adj=Adjustments(sockets=[self._socket], **self._settings),
                    bind_socket=False,
                    sockinfo=(
                        self._socket.family,
                        self._socket.type,
                        self._socket.proto,
                        self._socket.getsockname(),
                    ),
                )
            except BaseException:
                dispatcher.shutdown(timeout=0)
                wasyncore.close_all(self._map, ignore_all=True)  # its trigger, if made
                raise
            self._thread = threading.Thread(
                target=self._loop, name=f"{self.name}-http", daemon=True
            )
            self._thread.start()
        log.debug("%s: serving on %s", self.name, self.url)
        return self

    def _loop(self) -> None:
        """The event loop (this thread alone touches the connections); closes them at the end."""
        try:
            while self._map and not self._exit:
                wasyncore.poll2(_LOOP_TIMEOUT, self._map)
        except BaseException:
            log.exception("%s: the HTTP event loop failed", self.name)
        finally:
            self._close_all()

    def _close_all(self) -> None:
        server = self._server
        for dispatcher in list(self._map.values()):
            try:
                if dispatcher is server:
                    wasyncore.dispatcher.close(dispatcher)  # not its close(): the trigger
                elif isinstance(dispatcher, HTTPChannel):
                    # also drops its buffers and wakes a worker waiting to write
                    dispatcher.handle_close()
                elif server is None or dispatcher is not server.trigger:
                    dispatcher.close()
            except OSError:
                pass
        self._map.clear()
        if server is not None:
            server.close_trigger()

    def _stop_accepting(self) -> None:
        """In the loop thread: close the listening socket, keep the connections."""
        server = self._server
        if server is not None and server.socket is not None:
            wasyncore.dispatcher.close(server)

    def stop(self) -> None:
        """Stop: refuse new connections, let the requests in flight finish (at most
        ``shutdown_timeout`` seconds), close every connection, join the thread.

        Safe to call twice, and before :meth:`start` (it then only closes the socket).
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            server, thread = self._server, self._thread
        if server is None or thread is None:
            self._socket.close()
            return
        if thread.is_alive():
            server.pull_trigger(self._stop_accepting)
            # Lets the tasks in flight finish; the loop still sends their answers meanwhile.
            server.task_dispatcher.shutdown(cancel_pending=True, timeout=self.shutdown_timeout)
            self._exit = True
            server.pull_trigger()  # wakes the loop, which sees _exit and closes everything
            thread.join(self.shutdown_timeout + 2 * _LOOP_TIMEOUT)
        if thread.is_alive():
            log.warning("%s: the HTTP event loop did not stop in time", self.name)
        else:
            self._socket.close()  # already closed by the loop; closing twice is harmless
        log.debug("%s: stopped serving on %s", self.name, self.url)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_until_signal(
    server: HttpServer,
    on_ready: Callable[[threading.Event], object] | None = None,
    *,
    signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
) -> signal.Signals | None:
    """Serve in the foreground until one of ``signals`` arrives, then stop the server.

    The handlers are installed before the server starts and restored at the end. Once it
    accepts connections, ``on_ready(stopping)`` is called (say where it listens, wait for
    something): ``stopping`` is set by the first signal, and ``on_ready`` may set it itself to
    stop. The server is stopped even when ``on_ready`` raises. Call it from the main thread
    (Python runs signal handlers there only).

    Returns:
        The signal that stopped the server, or ``None`` if ``stopping`` was set otherwise.
    """
    stopping = threading.Event()
    received: list[signal.Signals] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        received.append(signal.Signals(signum))
        log.info("%s: %s, stopping", server.name, signal.Signals(signum).name)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        server.start()
        if on_ready is not None:
            on_ready(stopping)
        while not stopping.wait(1.0):
            pass
    finally:
        try:
            server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return received[0] if received else None


__all__ = [
    "DEFAULT_CHANNEL_TIMEOUT",
    "DEFAULT_CONNECTION_LIMIT",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_THREADS",
    "AddressInUse",
    "BindError",
    "HttpServer",
    "body_cap",
    "serve_until_signal",
]
