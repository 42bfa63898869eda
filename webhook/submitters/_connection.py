"""What a failed connection to the Argo Server means: wait and retry, or tell a human what to set.

A refused connection, a timeout or a reset is transient: the server restarts, the network
recovers. A certificate that does not verify, or a client and server that disagree on the
scheme (plain HTTP against TLS or the reverse), fails the same way on every retry, so it is a
refusal whose message names the setting to change. The scheme is judged by asking the server
once more, directly: does it complete a TLS handshake, does it answer plain HTTP? The answer
of a single failed request is ambiguous (the Argo Server in TLS mode closes a plain-HTTP
connection without a word, as a restarting server could). A host name that DNS says does not
exist (a Service name misspelt, another release's name) is a refusal too; a DNS server that
does not answer is transient.
"""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import requests

from webhook.submitters.base import RefusedSubmitError, SubmitError, TransientSubmitError

_VERIFY_FAILED = re.compile(r"certificate verify failed:?\s*([^(]*)", re.IGNORECASE)
_HTTP_PROBE = b"GET / HTTP/1.0\r\nHost: %s\r\n\r\n"


def _endpoint(url: SplitResult) -> tuple[str, int]:
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname or "", port


def speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether the server at ``host:port`` completes a TLS handshake (certificate unchecked)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=host),
        ):
            return True
    except OSError:  # ssl.SSLError is one
        return False


def speaks_plain_http(host: str, port: int, timeout: float) -> bool:
    """Whether the server at ``host:port`` answers a plain-HTTP request with an HTTP status line."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_HTTP_PROBE % host.encode("idna"))
            head = b""
            while len(head) < 5:
                chunk = sock.recv(5 - len(head))
                if not chunk:
                    break
                head += chunk
            return head == b"HTTP/"
    except (OSError, UnicodeError):
        return False


def _certificate_refusal(
    exc: requests.exceptions.SSLError, host: str, doing: str, ca_file: Path | None
) -> RefusedSubmitError:
    match = _VERIFY_FAILED.search(str(exc))
    why = (match.group(1).strip() if match else "") or "verification failed"
    against = f"submitter.argo.ca_file {ca_file}" if ca_file else "the system's CA bundle"
    if "mismatch" in why.lower():
        fix = (
            "point submitter.argo.host at a name (or address) that the certificate carries, "
            "or reissue the certificate for this one"
        )
    else:
        fix = (
            "set submitter.argo.ca_file to the PEM file of the CA that signed it (for a "
            "self-signed certificate, the certificate itself; chart: argo.ca.secret or "
            "argo.ca.configMap), or submitter.argo.verify_tls: false to skip verification"
        )
    return RefusedSubmitError(
        f"{doing}: the Argo Server {host} presented a TLS certificate that does not verify "
        f"against {against} ({why}): {fix}"
    )


def classify_connection_error(
    exc: requests.RequestException, host: str, doing: str, ca_file: Path | None, timeout: float
) -> SubmitError:
    """The error for a request to ``host`` that got no HTTP answer.

    Args:
        exc: what requests raised (a timeout, a connection error, a TLS error).
        host: the configured Argo Server URL (``submitter.argo.host``).
        doing: what the request was for, e.g. ``"creating rl-fashion-cnn-0123"``.
        ca_file: ``submitter.argo.ca_file``, named in the message when it is set.
        timeout: seconds for the one probe of the server's scheme.

    Returns:
        :class:`RefusedSubmitError` for a certificate that does not verify and for a scheme
        the server does not speak, each saying what to set; :class:`TransientSubmitError`
        otherwise.
    """
    url = urlsplit(host)
    address, port = _endpoint(url)
    if isinstance(exc, requests.exceptions.SSLError):
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return _certificate_refusal(exc, host, doing, ca_file)
        if url.scheme == "https" and speaks_plain_http(address, port, timeout):
            plain = url._replace(scheme="http").geturl()
            return RefusedSubmitError(
                f"{doing}: the Argo Server at {host} answers plain HTTP, not TLS: set "
                f"submitter.argo.host to {plain} (the argo-workflows Helm chart serves plain "
                "HTTP unless its server.secure is true)"
            )
    elif (
        isinstance(exc, requests.ConnectionError)
        and not isinstance(exc, requests.Timeout)
        and url.scheme == "http"
        and speaks_tls(address, port, timeout)
    ):
        secure = url._replace(scheme="https").geturl()
        return RefusedSubmitError(
            f"{doing}: the Argo Server at {host} speaks TLS and closed the plain-HTTP "
            f"connection: set submitter.argo.host to {secure}, and submitter.argo.ca_file to the "
            "PEM file of its CA if its certificate is self-signed (Argo's install manifests)"
        )
    if (
        isinstance(exc, requests.ConnectionError)
        and not isinstance(exc, requests.Timeout)
        and not resolves(address, port)
    ):
        return RefusedSubmitError(
            f"{doing}: the Argo Server's host name {address!r} does not exist (DNS has no such "
            f"name): set submitter.argo.host (now {host}) to its Service, e.g. "
            "http://<release>-argo-workflows-server.<namespace>.svc:2746"
        )
    return TransientSubmitError(f"Argo Server {host} did not answer {doing}: {exc}")


def resolves(host: str, port: int) -> bool:
    """False only when DNS answers that ``host`` does not exist; True when it resolves, and when
    the lookup fails in a way that may pass (no answer from the DNS server: ``EAI_AGAIN``)."""
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror as exc:
        return exc.errno not in {
            socket.EAI_NONAME,
            getattr(socket, "EAI_NODATA", socket.EAI_NONAME),
        }
    return True


__all__ = ["classify_connection_error", "speaks_plain_http", "speaks_tls"]
