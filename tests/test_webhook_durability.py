"""Must show 9: crashes lose nothing and duplicate nothing.

The receiver runs as a real process (``python -m robustloop webhook``) and is killed with
SIGKILL: between recording an incident and submitting it, after Argo created the workflow but
before the receiver recorded that, and in the middle of a stream of writes. After a restart
on the same outbox, the state is readable and each incident has exactly one workflow. And one
receiver per outbox: a second one, in another process or in the same one, refuses to start.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry

from robustloop.config import RobustloopConfig, dump_config
from tests.argo_standin import ArgoStandIn, Fault
from tests.conftest import REPO_ROOT, free_port
from tests.webhook_support import (
    RunningReceiver,
    firing_payload,
    post,
    remediation,
    wait_for,
)
from webhook import create_app
from webhook.errors import OutboxInUse
from webhook.models import incident_id
from workflows.contract import workflow_name_for

STARTS = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
INCIDENT = incident_id("a1b2c3d4e5f60718", STARTS)
NAME = workflow_name_for(INCIDENT, "fashion-cnn")


class ReceiverProcess:
    """``python -m robustloop --config CFG webhook --port P``, started and SIGKILLed at will."""

    def __init__(self, config: RobustloopConfig, tmp_path: Path) -> None:
        self.config_path = tmp_path / "robustloop.yaml"
        self.config_path.write_text(dump_config(config), encoding="utf-8")
        self.log_path = tmp_path / "receiver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> ReceiverProcess:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "robustloop",
                    "--config",
                    str(self.config_path),
                    "webhook",
                    "--port",
                    str(port),
                ],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, timeout=60, what="the receiver process to be ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"receiver exited {self.proc.returncode}: {self.log_path.read_text()}")
        try:
            return requests.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def receiver_process(
    webhook_config: RobustloopConfig, tmp_path: Path
) -> Iterator[Callable[[], ReceiverProcess]]:
    made: list[ReceiverProcess] = []

    def make() -> ReceiverProcess:
        made.append(ReceiverProcess(webhook_config, tmp_path))
        return made[-1]

    yield make
    for process in made:
        process.stop()


def _state(config: RobustloopConfig, incident: str) -> str | None:
    with sqlite3.connect(config.webhook.db_path) as conn:
        row = conn.execute("SELECT state FROM incidents WHERE id = ?", (incident,)).fetchone()
    return None if row is None else str(row[0])


@pytest.mark.slow
@pytest.mark.parametrize("created_before_crash", [False, True], ids=["not-created", "created"])
def test_kill9_around_the_submission_gives_exactly_one_workflow(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    receiver_process: Callable[[], ReceiverProcess],
    created_before_crash: bool,
) -> None:
    # GIVEN a receiver process whose call to Argo hangs: before Argo stores anything, or after
    webhook_config.webhook.submit_timeout_seconds = 60
    argo.inject(
        Fault(
            "POST",
            delay=60,
            status=None if created_before_crash else 503,
            store_first=created_before_crash,
        )
    )
    first = receiver_process().start()
    assert post(first.url, firing_payload(starts_at=STARTS)).status_code == 200
    wait_for(lambda: argo.received, what="the submission to reach Argo")
    assert _state(webhook_config, INCIDENT) == "submitting"
    assert argo.created() == ([NAME] if created_before_crash else [])

    # WHEN the receiver is killed with SIGKILL in the middle of the call, and restarted
    first.kill9()
    second = receiver_process().start()

    # THEN the intent is carried out, and there is exactly one workflow
    wait_for(lambda: remediation(second.url, INCIDENT)["state"] == "submitted", timeout=30)
    assert argo.created() == [NAME]
    expected = [409] if created_before_crash else [200]
    assert [s for s in argo.creates()] == expected
    record = remediation(second.url, INCIDENT)
    assert any("resumed after a restart" in e["detail"] for e in record["events"])


@pytest.mark.slow
def test_kill9_during_a_stream_of_writes_loses_and_duplicates_nothing(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    receiver_process: Callable[[], ReceiverProcess],
) -> None:
    # GIVEN four clients delivering distinct incidents (of distinct models) as fast as they can
    webhook_config.webhook.models = [f"m-{n}-{i}" for n in range(4) for i in range(2000)]
    first = receiver_process().start()
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    base = datetime.now(UTC)

    def client(n: int) -> None:
        for i in range(10_000):
            if stop.is_set():
                return
            fingerprint = f"{n:04x}{i:012x}"
            starts = base - timedelta(seconds=i)
            payload = firing_payload(fingerprint, starts, labels={"model": f"m-{n}-{i}"})
            try:
                answer = post(first.url, payload)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                return  # the receiver died before or while it answered: not acknowledged
            if answer.status_code == 200:
                with lock:
                    acked.append(incident_id(fingerprint, starts))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    wait_for(lambda: len(acked) >= 40, timeout=60, what="40 acknowledged deliveries")

    # WHEN the receiver is killed with SIGKILL while writes are in flight
    first.kill9()
    stop.set()
    for thread in clients:
        thread.join(10)

    # THEN after a restart the outbox is sound, holds every acknowledged incident, and every
    # incident ends with exactly one workflow
    second = receiver_process().start()
    with sqlite3.connect(webhook_config.webhook.db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in conn.execute("SELECT id FROM incidents")}
    assert set(acked) <= stored

    def all_submitted() -> bool:
        return {_state(webhook_config, i) for i in stored} <= {"submitted", "running"}

    wait_for(all_submitted, timeout=120, what="every stored incident to be submitted")
    names = sorted(workflow_name_for(i, _model_of(webhook_config, i)) for i in stored)
    assert sorted(argo.created()) == names
    assert argo.creates().count(200) == len(names)
    del second


def _model_of(config: RobustloopConfig, incident: str) -> str:
    with sqlite3.connect(config.webhook.db_path) as conn:
        return str(
            conn.execute("SELECT model FROM incidents WHERE id = ?", (incident,)).fetchone()[0]
        )


def test_a_second_receiver_process_on_the_same_outbox_refuses_to_start(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    receiver_process: Callable[[], ReceiverProcess],
) -> None:
    # GIVEN a receiver process serving the outbox, with an incident in it
    first = receiver_process().start()
    assert first.proc is not None
    assert post(first.url, firing_payload(starts_at=STARTS)).status_code == 200

    # WHEN a second receiver is started on the same outbox (on a port of its own)
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "robustloop",
            "--config",
            str(first.config_path),
            "webhook",
            "--port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # THEN it exits 2 with one line naming the outbox and the receiver holding it, and the
    # first one serves on
    assert second.returncode == 2, second.stderr
    assert second.stdout == ""
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert f"outbox {webhook_config.webhook.db_path} is in use by another receiver" in lines[0]
    assert f"pid {first.proc.pid}" in lines[0]
    assert requests.get(f"{first.url}/readyz", timeout=10).status_code == 200
    assert remediation(first.url, INCIDENT)["deliveries"] == 1

    # AND once the first one is gone (even killed), a receiver starts on the outbox again
    first.kill9()
    third = receiver_process().start()
    assert remediation(third.url, INCIDENT)["deliveries"] == 1


def test_a_second_receiver_in_the_same_process_is_refused_until_the_first_closes(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN a receiver serving the outbox
    first = start_receiver(webhook_config, start_dispatcher=False)
    assert post(first.url, firing_payload(starts_at=STARTS)).status_code == 200

    # WHEN another receiver is created on the same outbox in the same process
    with pytest.raises(OutboxInUse, match="in use by another receiver") as refused:
        create_app(webhook_config, registry=CollectorRegistry(), start_dispatcher=False)

    # THEN it is refused with one line, and the first one records on
    assert "\n" not in str(refused.value)
    assert f"pid {os.getpid()}" in str(refused.value)
    assert post(first.url, firing_payload(starts_at=STARTS)).status_code == 200
    assert remediation(first.url, INCIDENT)["deliveries"] == 2

    # AND once the first one is closed, the outbox can be opened again, its incidents kept
    first.stop()
    second = start_receiver(webhook_config, start_dispatcher=False)
    assert remediation(second.url, INCIDENT)["deliveries"] == 2
