"""The Argo Server's address and TLS: a certificate that does not verify and a scheme the server
does not speak are refusals that say what to set; a CA file makes a self-signed server work; a
refused connection stays transient. Against real TLS: the Argo stand-in serving HTTPS with a
self-signed certificate made here."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from robustloop.config import RobustloopConfig
from tests.argo_standin import ArgoStandIn
from tests.webhook_support import (
    ARGO_TOKEN,
    RunningReceiver,
    firing_payload,
    metric,
    post,
    remediation,
    wait_for,
)
from webhook.models import incident_id
from webhook.submitters import ArgoSubmitter, RefusedSubmitError, Submitted, TransientSubmitError
from workflows.contract import workflow_name_for

STARTS = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
INCIDENT = incident_id("a1b2c3d4e5f60718", STARTS)
NAME = workflow_name_for(INCIDENT, "fashion-cnn")
PARAMS = {"model": "fashion-cnn", "incident-id": INCIDENT}


def _submitter(url: str, tmp_path: Path, **kwargs: object) -> ArgoSubmitter:
    token = tmp_path / "argo-token"
    token.write_text(ARGO_TOKEN, encoding="utf-8")
    return ArgoSubmitter(url, "robustloop", token_file=token, timeout=1.0, **kwargs)  # type: ignore[arg-type]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_self_signed_server_is_a_refusal_naming_the_ca_option_until_its_ca_is_given(
    argo_tls: ArgoStandIn, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    # GIVEN an Argo Server serving TLS with a self-signed certificate
    assert argo_tls.url.startswith("https://127.0.0.1:")

    # WHEN the receiver submits with default verification (the system's CAs)
    with pytest.raises(RefusedSubmitError) as refused:
        _submitter(argo_tls.url, tmp_path).submit(NAME, PARAMS)

    # THEN it is a refusal that says why and what to set; nothing reached the API
    message = refused.value.message
    assert "self-signed certificate" in message
    assert "submitter.argo.ca_file" in message and "verify_tls" in message
    assert argo_tls.received == [] and argo_tls.created() == []
    wait_for(lambda: argo_tls.tls_failures, what="the server to see the aborted handshake")

    # WHEN ca_file names the server's certificate THEN it is verified, created and read back
    submitter = _submitter(argo_tls.url, tmp_path, ca_file=certificate[0])
    assert submitter.submit(NAME, PARAMS) is Submitted.CREATED
    assert argo_tls.created() == [NAME]
    summary = submitter.status(NAME)
    assert summary is not None and summary.phase == "Running"


def test_a_ca_file_that_is_not_there_is_a_refusal_naming_it(
    argo_tls: ArgoStandIn, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(RefusedSubmitError, match=r"submitter\.argo\.ca_file .*no-such-ca\.pem"):
        _submitter(argo_tls.url, tmp_path, ca_file=missing).submit(NAME, PARAMS)
    assert argo_tls.received == []


def test_plain_http_against_a_tls_server_is_a_refusal_naming_the_https_url(
    argo_tls: ArgoStandIn, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    # GIVEN a TLS server addressed as http:// (it closes the connection without a word)
    plain_url = argo_tls.url.replace("https://", "http://")

    with pytest.raises(RefusedSubmitError) as refused:
        _submitter(plain_url, tmp_path, ca_file=certificate[0]).submit(NAME, PARAMS)

    # THEN the refusal names the URL to set
    assert f"set submitter.argo.host to {argo_tls.url}" in refused.value.message
    assert argo_tls.created() == []


def test_tls_against_a_plain_http_server_is_a_refusal_naming_the_http_url(
    argo: ArgoStandIn, tmp_path: Path
) -> None:
    # GIVEN a plain-HTTP server (the argo-workflows chart's default) addressed as https://
    tls_url = argo.url.replace("http://", "https://")

    with pytest.raises(RefusedSubmitError) as refused:
        _submitter(tls_url, tmp_path).submit(NAME, PARAMS)

    assert f"set submitter.argo.host to {argo.url}" in refused.value.message
    assert "server.secure" in refused.value.message
    assert argo.created() == []


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_refused_connection_stays_transient(scheme: str, tmp_path: Path) -> None:
    url = f"{scheme}://127.0.0.1:{_closed_port()}"
    with pytest.raises(TransientSubmitError, match="did not answer"):
        _submitter(url, tmp_path).submit(NAME, PARAMS)
    with pytest.raises(TransientSubmitError, match="did not answer"):
        _submitter(url, tmp_path).status(NAME)


def _dns_answers(errno: int) -> Callable[..., object]:
    def getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
        raise socket.gaierror(errno, "the test's DNS answer")

    return getaddrinfo


def test_a_host_name_dns_says_does_not_exist_is_a_refusal_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN DNS answers "no such name" for the configured host (a misspelt Service)
    monkeypatch.setattr(socket, "getaddrinfo", _dns_answers(socket.EAI_NONAME))
    url = "http://argo-server-misspelt.argo.svc:2746"
    # THEN the submission is a refusal that names the setting; a status read, retried like every
    # read that fails, says the same
    with pytest.raises(RefusedSubmitError, match=r"does not exist.*submitter\.argo\.host"):
        _submitter(url, tmp_path).submit(NAME, PARAMS)
    with pytest.raises(TransientSubmitError, match=r"does not exist.*submitter\.argo\.host"):
        _submitter(url, tmp_path).status(NAME)


def test_a_dns_server_that_does_not_answer_stays_transient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _dns_answers(socket.EAI_AGAIN))
    with pytest.raises(TransientSubmitError, match="did not answer"):
        _submitter("http://argo-workflows-server.argo.svc:2746", tmp_path).submit(NAME, PARAMS)


def test_a_read_that_fails_verification_is_retried_not_refused(
    argo_tls: ArgoStandIn, tmp_path: Path
) -> None:
    """A run that exists cannot be refused: reading it is retried, with the same advice."""
    with pytest.raises(TransientSubmitError, match=r"submitter\.argo\.ca_file"):
        _submitter(argo_tls.url, tmp_path).status(NAME)


def test_the_receiver_refuses_the_incident_and_runs_it_once_the_ca_is_configured(
    webhook_config: RobustloopConfig,
    argo_tls: ArgoStandIn,
    certificate: tuple[Path, Path],
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN a receiver verifying the Argo Server against the system's CAs
    webhook_config.submitter.argo.host = argo_tls.url
    webhook_config.submitter.argo.verify_tls = True
    running = start_receiver(webhook_config)

    post(running.url, firing_payload(starts_at=STARTS))

    # THEN the incident is refused, once, with the setting to change in its reason
    wait_for(lambda: remediation(running.url, INCIDENT)["state"] == "refused")
    record = remediation(running.url, INCIDENT)
    assert "submitter.argo.ca_file" in record["reason"]
    assert metric(running.registry, "robustloop_webhook_submissions_total", result="refused") == 1
    running.stop()  # also releases the outbox

    # WHEN the operator sets ca_file (a restart) and Alertmanager re-sends the firing alert
    webhook_config.submitter.argo.ca_file = certificate[0]
    fixed = start_receiver(webhook_config)
    post(fixed.url, firing_payload(starts_at=STARTS))

    # THEN the incident is decided again and its workflow created
    wait_for(lambda: remediation(fixed.url, INCIDENT)["state"] in ("submitted", "running"))
    assert argo_tls.created() == [NAME]
