"""robustloop.httpserver over real HTTP on 127.0.0.1 free ports: a tiny WSGI app served by
waitress, keep-alive, a busy port answered with a clear OSError (never SystemExit), stop() that
returns promptly with an idle keep-alive connection open and lets a request in flight finish,
idle connections closed after channel_timeout, and the foreground helper's signal handling."""

from __future__ import annotations

import errno
import http.client
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import pytest
import requests

from robustloop.httpserver import AddressInUse, BindError, HttpServer, serve_until_signal

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

JOIN_TIMEOUT = 15.0
"""Generous: stop() must have finished long before (no timing threshold is asserted)."""


class App:
    """Echoes POST bodies; ``/slow`` waits until released (a request in flight)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/slow":
            self.entered.set()
            self.release.wait(JOIN_TIMEOUT)
            payload = b"slow done"
        elif environ["REQUEST_METHOD"] == "POST":
            payload = b"echo " + environ["wsgi.input"].read()
        else:
            payload = b"hello"
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(payload)))]
        )
        return [payload]


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def server(app: App) -> Iterator[HttpServer]:
    with HttpServer(app, name="test") as running:
        yield running


def _connect(server: HttpServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=JOIN_TIMEOUT)


def _get(connection: http.client.HTTPConnection, path: str = "/") -> bytes:
    connection.request("GET", path)
    response = connection.getresponse()
    assert response.status == 200
    return response.read()


def _closed_by_server(sock: socket.socket) -> bool:
    """Wait (at most JOIN_TIMEOUT) for the server's end of a connection: EOF or a reset."""
    sock.settimeout(JOIN_TIMEOUT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _wait_until_refused(server: HttpServer) -> None:
    """Wait (at most JOIN_TIMEOUT) until the server refuses new connections."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=JOIN_TIMEOUT).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.01)
    raise AssertionError("the server still accepts connections")


def _stop_in_thread(server: HttpServer) -> threading.Thread:
    stopper = threading.Thread(target=server.stop, name="stopper", daemon=True)
    stopper.start()
    return stopper


def test_serves_a_wsgi_app_on_a_free_port(server: HttpServer) -> None:
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.running
    assert requests.get(server.url, timeout=JOIN_TIMEOUT).text == "hello"
    answer = requests.post(f"{server.url}/x", data=b"abc", timeout=JOIN_TIMEOUT)
    assert answer.text == "echo abc"
    chunked = requests.post(server.url, data=iter([b"ab", b"cd"]), timeout=JOIN_TIMEOUT)
    assert chunked.text == "echo abcd"


def test_http_1_1_keep_alive_serves_requests_on_one_connection(server: HttpServer) -> None:
    connection = _connect(server)
    try:
        assert _get(connection) == b"hello"
        first = connection.sock
        assert _get(connection) == b"hello"
        assert connection.sock is first, "the server closed the keep-alive connection"
    finally:
        connection.close()


def test_a_busy_port_is_a_clear_oserror_not_systemexit(app: App) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(AddressInUse) as caught:
            HttpServer(app, "127.0.0.1", port)
    error = caught.value
    assert isinstance(error, OSError) and isinstance(error, BindError)
    assert error.errno == errno.EADDRINUSE
    assert (error.host, error.port) == ("127.0.0.1", port)
    assert str(error) == (
        f"cannot listen on 127.0.0.1:{port}: port {port} is in use; "
        "stop the other process or pick another port with --port"
    )


def test_an_address_of_another_machine_is_a_bind_error(app: App) -> None:
    with pytest.raises(BindError, match=r"192\.0\.2\.1:0: .*not an address of this machine"):
        HttpServer(app, "192.0.2.1", 0)  # TEST-NET-1: never local


def test_stop_returns_with_an_idle_keep_alive_connection_open(server: HttpServer) -> None:
    connection = _connect(server)
    try:
        assert _get(connection) == b"hello"  # the connection stays open, idle
        stopper = _stop_in_thread(server)
        stopper.join(JOIN_TIMEOUT)
        assert not stopper.is_alive(), "stop() hung on an idle keep-alive connection"
        assert not server.running
        assert _closed_by_server(connection.sock)
    finally:
        connection.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=JOIN_TIMEOUT)


def test_stop_lets_a_request_in_flight_finish(app: App, server: HttpServer) -> None:
    answers: list[requests.Response] = []
    client = threading.Thread(
        target=lambda: answers.append(requests.get(f"{server.url}/slow", timeout=JOIN_TIMEOUT)),
        daemon=True,
    )
    client.start()
    assert app.entered.wait(JOIN_TIMEOUT)
    stopper = _stop_in_thread(server)
    _wait_until_refused(server)  # stop() has closed the listening socket, and waits
    assert stopper.is_alive()
    app.release.set()
    stopper.join(JOIN_TIMEOUT)
    client.join(JOIN_TIMEOUT)
    assert not stopper.is_alive() and not client.is_alive()
    assert [(a.status_code, a.text) for a in answers] == [(200, "slow done")]


def test_an_idle_connection_is_closed_after_channel_timeout(app: App) -> None:
    with HttpServer(app, channel_timeout=1) as server:
        connection = _connect(server)
        try:
            assert _get(connection) == b"hello"
            assert _closed_by_server(connection.sock)
        finally:
            connection.close()
        # the server itself carries on
        assert requests.get(server.url, timeout=JOIN_TIMEOUT).text == "hello"


def test_a_body_over_the_cap_is_refused_on_its_headers(app: App) -> None:
    with HttpServer(app, max_request_body_size=1024) as server:
        connection = _connect(server)
        try:
            connection.putrequest("POST", "/")
            connection.putheader("Content-Length", "1025")
            connection.endheaders()  # no body sent
            response = connection.getresponse()
            assert response.status == 413
            response.read()
        finally:
            connection.close()
        answer = requests.post(server.url, data=b"x" * 1024, timeout=JOIN_TIMEOUT)
        assert answer.text == "echo " + "x" * 1024


def test_stop_twice_before_start_and_restart_are_safe(app: App) -> None:
    never_started = HttpServer(app)
    port = never_started.port
    never_started.stop()
    never_started.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        never_started.start()
    # the port was released: it can be bound again
    again = HttpServer(app, port=port).start()
    again.stop()
    again.stop()
    assert not again.running
    with HttpServer(app, port=port) as third:  # and released again after serving
        assert requests.get(third.url, timeout=JOIN_TIMEOUT).text == "hello"
        with pytest.raises(RuntimeError, match="already started"):
            third.start()


def test_serve_until_signal_stops_on_sigterm_and_restores_handlers(app: App) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    server = HttpServer(app)
    seen: list[str] = []

    def on_ready(stopping: threading.Event) -> None:
        seen.append(requests.get(server.url, timeout=JOIN_TIMEOUT).text)
        signal.raise_signal(signal.SIGTERM)  # as kubelet does
        assert stopping.wait(JOIN_TIMEOUT)

    assert serve_until_signal(server, on_ready) is signal.SIGTERM
    assert seen == ["hello"]
    assert not server.running
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_serve_until_signal_stops_the_server_when_on_ready_fails(app: App) -> None:
    server = HttpServer(app)

    def on_ready(stopping: threading.Event) -> None:
        raise LookupError("no model")

    with pytest.raises(LookupError):
        serve_until_signal(server, on_ready)
    assert not server.running
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=JOIN_TIMEOUT)


def test_serve_until_signal_returns_none_when_on_ready_sets_stopping(app: App) -> None:
    server = HttpServer(app)
    assert serve_until_signal(server, lambda stopping: stopping.set()) is None
    assert not server.running
