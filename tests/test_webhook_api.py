"""Must show 1-6: the receiver's HTTP contract, served for real, against the Argo stand-in; and
its health signals (readiness, the dispatcher's heartbeat)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import requests
from prometheus_client.parser import text_string_to_metric_families

from robustloop.config import RobustloopConfig
from tests.argo_standin import ArgoStandIn
from tests.webhook_support import (
    TOKEN,
    RunningReceiver,
    firing_payload,
    get,
    metric,
    post,
    remediation,
    wait_for,
)
from webhook.models import incident_id
from workflows.contract import TEMPLATE_NAME, workflow_name_for

STARTS = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
INCIDENT = incident_id("a1b2c3d4e5f60718", STARTS)


def _rows(config: RobustloopConfig) -> list[tuple[str, str]]:
    """(id, state) of every incident, read through a connection of its own."""
    with sqlite3.connect(config.webhook.db_path) as conn:
        return list(conn.execute("SELECT id, state FROM incidents ORDER BY rowid"))


def _submitted(url: str, incident: str = INCIDENT) -> bool:
    return remediation(url, incident)["state"] in ("submitted", "running")


# -- 1. valid firing payload -----------------------------------------------------------------


def test_firing_alert_is_stored_before_the_reply_and_starts_one_workflow(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN a receiver whose dispatcher is not running yet
    running = start_receiver(webhook_config, start_dispatcher=False)

    # WHEN Alertmanager delivers a firing alert with the right token
    answer = post(running.url, firing_payload(starts_at=STARTS))

    # THEN the answer is 200 and the incident is already committed (read by another connection)
    assert answer.status_code == 200, answer.text
    assert answer.json()["alerts"] == [
        {"incident": INCIDENT, "state": "received", "duplicate": False}
    ]
    assert _rows(webhook_config) == [(INCIDENT, "received")]
    assert argo.created() == []

    # WHEN the dispatcher runs
    running.receiver.dispatcher.start()

    # THEN exactly one workflow is created: the template, its parameters, the deterministic name
    wait_for(lambda: _submitted(running.url), what="submission")
    name = workflow_name_for(INCIDENT, "fashion-cnn")
    assert argo.created() == [name]
    workflow = argo.workflows[("robustloop", name)]
    assert workflow["spec"]["workflowTemplateRef"] == {"name": TEMPLATE_NAME}
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert params == {"model": "fashion-cnn", "incident-id": INCIDENT}
    record = remediation(running.url, INCIDENT)
    assert record["workflow"] == name
    assert [event["state"] for event in record["events"]][:3] == [
        "received",
        "submitting",
        "submitted",
    ]
    assert metric(running.registry, "robustloop_webhook_submissions_total", result="created") == 1


# -- 2. duplicates -----------------------------------------------------------------------------


def test_the_same_payload_again_or_from_a_peer_starts_no_second_workflow(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    assert post(receiver.url, firing_payload(starts_at=STARTS)).status_code == 200
    wait_for(lambda: _submitted(receiver.url), what="submission")

    again = post(receiver.url, firing_payload(starts_at=STARTS))

    assert again.status_code == 200
    assert again.json()["alerts"][0]["duplicate"] is True
    peer = firing_payload(starts_at=STARTS)  # the same alert from an HA peer Alertmanager
    peer["externalURL"] = "http://alertmanager-1.example.invalid:9093"
    assert post(receiver.url, peer).json()["alerts"][0]["duplicate"] is True
    receiver.receiver.dispatcher.wake()
    wait_for(lambda: remediation(receiver.url, INCIDENT)["deliveries"] == 3)
    assert len(argo.created()) == 1
    assert argo.creates() == [200]


def test_two_identical_parallel_posts_start_one_workflow(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    barrier = threading.Barrier(2)
    answers: list[requests.Response] = []

    def deliver() -> None:
        barrier.wait()
        answers.append(post(receiver.url, firing_payload(starts_at=STARTS)))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(a.status_code for a in answers) == [200, 200]
    assert sorted(a.json()["alerts"][0]["duplicate"] for a in answers) == [False, True]
    wait_for(lambda: _submitted(receiver.url), what="submission")
    assert len(argo.created()) == 1
    assert len(_rows(receiver.config)) == 1


def test_a_409_from_argo_counts_as_submitted(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN Argo already has the incident's workflow (an earlier attempt got through)
    name = workflow_name_for(INCIDENT, "fashion-cnn")
    argo.add_workflow({"metadata": {"name": name}, "spec": {}})
    running = start_receiver(webhook_config)

    post(running.url, firing_payload(starts_at=STARTS))

    wait_for(lambda: _submitted(running.url), what="submission")
    assert argo.creates() == [409]
    assert "409" in remediation(running.url, INCIDENT)["reason"]
    assert metric(running.registry, "robustloop_webhook_submissions_total", result="exists") == 1


# -- 3. authentication -------------------------------------------------------------------------


def test_missing_or_wrong_token_is_401_and_stores_nothing(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    payload = firing_payload(starts_at=STARTS)
    for token in (None, "wrong-token", TOKEN + "x", ""):
        answer = post(receiver.url, payload, token=token)
        assert answer.status_code == 401, token
        assert "bearer token" in answer.json()["error"]
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    basic = requests.post(
        f"{receiver.url}/api/v1/alerts",
        data=json.dumps(payload),
        headers={"Authorization": f"Basic {TOKEN}"},
        timeout=10,
    )
    assert basic.status_code == 401
    assert get(receiver.url, "/api/v1/remediations", token=None).status_code == 401
    assert _rows(receiver.config) == []
    assert argo.calls == []


# -- 4. resolved alerts ------------------------------------------------------------------------


def test_resolve_lets_the_run_continue_and_a_replay_starts_nothing(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    # GIVEN a firing incident whose workflow runs
    post(receiver.url, firing_payload(starts_at=STARTS))
    wait_for(lambda: remediation(receiver.url, INCIDENT)["state"] == "running", what="running")

    # WHEN the alert resolves, and then the old firing payload is replayed
    resolved = post(receiver.url, firing_payload(starts_at=STARTS, status="resolved"))
    replay = post(receiver.url, firing_payload(starts_at=STARTS))

    # THEN both are 2xx, the run goes on, and no second workflow starts
    assert resolved.status_code == 200 and replay.status_code == 200
    record = remediation(receiver.url, INCIDENT)
    assert record["resolved_at"] is not None
    assert record["state"] == "running"
    name = record["workflow"]
    argo.set_phase(name, "Succeeded", gate_passed=True)
    wait_for(lambda: remediation(receiver.url, INCIDENT)["state"] == "succeeded")
    post(receiver.url, firing_payload(starts_at=STARTS))
    receiver.receiver.dispatcher.run_once()
    assert argo.created() == [name]
    assert remediation(receiver.url, INCIDENT)["promoted_version"] == "v0002"


def test_resolved_only_payload_is_recorded_and_starts_nothing(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    answer = post(receiver.url, firing_payload(starts_at=STARTS, status="resolved"))

    assert answer.status_code == 200
    record = remediation(receiver.url, INCIDENT)
    assert (record["state"], record["reason_code"]) == ("suppressed", "resolved")
    receiver.receiver.dispatcher.run_once()
    assert argo.created() == []


def test_alert_outside_the_allowlist_is_recorded_and_starts_nothing(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    payload = firing_payload(starts_at=STARTS, labels={"remediation": "page-a-human"})

    assert post(receiver.url, payload).status_code == 200

    record = remediation(receiver.url, INCIDENT)
    assert (record["state"], record["reason_code"]) == ("suppressed", "not-allowed")
    assert "remediation" in record["reason"]
    receiver.receiver.dispatcher.run_once()
    assert argo.created() == []


def test_an_alert_naming_an_unknown_recipe_is_recorded_and_starts_nothing(
    receiver: RunningReceiver, argo: ArgoStandIn
) -> None:
    payload = firing_payload(starts_at=STARTS, labels={"recipe": "everything"})

    assert post(receiver.url, payload).status_code == 200

    record = remediation(receiver.url, INCIDENT)
    assert (record["state"], record["reason_code"]) == ("suppressed", "not-allowed")
    assert "label recipe is 'everything'" in record["reason"]
    assert "standard, captured" in record["reason"]
    receiver.receiver.dispatcher.run_once()
    assert argo.created() == []


# -- 5. garbage --------------------------------------------------------------------------------


def test_oversized_body_is_413(receiver: RunningReceiver) -> None:
    limit = receiver.config.webhook.max_body_bytes
    payload = firing_payload(starts_at=STARTS)
    payload["commonAnnotations"]["padding"] = "x" * limit

    answer = post(receiver.url, payload)

    assert answer.status_code == 413
    assert "max_body_bytes" in answer.json()["error"]
    assert _rows(receiver.config) == []


def _chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_oversized_chunked_body_is_413_and_a_small_chunked_one_is_read(
    receiver: RunningReceiver,
) -> None:
    limit = receiver.config.webhook.max_body_bytes
    big = firing_payload(starts_at=STARTS)
    big["commonAnnotations"]["padding"] = "x" * limit
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    answer = requests.post(
        f"{receiver.url}/api/v1/alerts",
        data=_chunks(json.dumps(big).encode()),  # a generator: Transfer-Encoding: chunked
        headers=headers,
        timeout=10,
    )
    assert answer.status_code == 413
    assert _rows(receiver.config) == []

    small = requests.post(
        f"{receiver.url}/api/v1/alerts",
        data=_chunks(json.dumps(firing_payload(starts_at=STARTS)).encode(), 100),
        headers=headers,
        timeout=10,
    )
    assert small.status_code == 200, small.text
    assert [row[0] for row in _rows(receiver.config)] == [INCIDENT]


def _without(payload: dict[str, object], *path: str | int) -> dict[str, object]:
    target: object = payload
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    del target[path[-1]]  # type: ignore[attr-defined]
    return payload


def test_garbage_is_400_and_changes_nothing(receiver: RunningReceiver, argo: ArgoStandIn) -> None:
    wrong_version = firing_payload(starts_at=STARTS)
    wrong_version["version"] = "3"
    no_alerts = firing_payload(starts_at=STARTS)
    no_alerts["alerts"] = []
    cases: dict[str, tuple[bytes | dict[str, object], str]] = {
        "malformed JSON": (b'{"version": "4", "alerts": [', "not JSON"),
        "not UTF-8": (b"\xff\xfe{}", "not JSON"),
        "empty body": (b"", "empty body"),
        "a JSON list": (b"[]", "JSON object"),
        "wrong version": (wrong_version, "version"),
        "no alerts": (no_alerts, "alerts"),
        "no alerts key": (_without(firing_payload(starts_at=STARTS), "alerts"), "alerts"),
        "no fingerprint": (
            _without(firing_payload(starts_at=STARTS), "alerts", 0, "fingerprint"),
            "fingerprint",
        ),
        "no startsAt": (
            _without(firing_payload(starts_at=STARTS), "alerts", 0, "startsAt"),
            "startsAt",
        ),
    }
    for case, (body, expected) in cases.items():
        answer = post(receiver.url, body)
        assert answer.status_code == 400, case
        assert expected in answer.json()["error"], (case, answer.json())
    assert _rows(receiver.config) == []
    assert argo.calls == []
    assert metric(receiver.registry, "robustloop_webhook_requests_total", code="400") == len(cases)


# -- 6. truncated alerts -----------------------------------------------------------------------


def test_truncated_alerts_are_processed_and_counted(receiver: RunningReceiver) -> None:
    payload = firing_payload(starts_at=STARTS)
    payload["truncatedAlerts"] = 3

    answer = post(receiver.url, payload)

    assert answer.status_code == 200
    assert answer.json()["truncated_alerts"] == 3
    assert [row[0] for row in _rows(receiver.config)] == [INCIDENT]
    assert metric(receiver.registry, "robustloop_webhook_truncated_alerts_total") == 3
    scraped = requests.get(f"{receiver.url}/metrics", timeout=10).text
    assert "robustloop_webhook_truncated_alerts_total 3.0" in scraped


# -- the other endpoints -----------------------------------------------------------------------


def test_health_readiness_and_listing(receiver: RunningReceiver) -> None:
    assert requests.get(f"{receiver.url}/healthz", timeout=10).json() == {"status": "ok"}
    ready = requests.get(f"{receiver.url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["submitter"] == "argo"
    post(receiver.url, firing_payload(starts_at=STARTS))
    listing = get(receiver.url, "/api/v1/remediations").json()
    assert [r["id"] for r in listing["remediations"]] == [INCIDENT]
    assert get(receiver.url, "/api/v1/remediations?state=bogus").status_code == 400
    assert get(receiver.url, "/api/v1/remediations?limit=0").status_code == 400
    assert get(receiver.url, "/api/v1/remediations/nope").status_code == 404
    assert get(receiver.url, "/api/v1/nothing-here").status_code == 404
    assert requests.get(f"{receiver.url}/api/v1/alerts", timeout=10).status_code == 405


def test_readyz_is_503_when_the_dispatcher_is_not_running(
    webhook_config: RobustloopConfig, start_receiver: Callable[..., RunningReceiver]
) -> None:
    running = start_receiver(webhook_config, start_dispatcher=False)
    ready = requests.get(f"{running.url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["problems"] == ["dispatcher not running"]


HEARTBEAT = "robustloop_webhook_dispatcher_heartbeat_timestamp_seconds"


class SetClock:
    """A clock that says what the test set it to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _scraped_heartbeat(url: str) -> float:
    """The heartbeat gauge as Prometheus scrapes it from ``/metrics``."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == HEARTBEAT:
            (sample,) = family.samples
            return float(sample.value)
    raise AssertionError(f"{HEARTBEAT} is not exposed")


def test_the_dispatcher_heartbeat_advances_on_idle_passes_and_stops_with_the_dispatcher(
    webhook_config: RobustloopConfig, start_receiver: Callable[..., RunningReceiver]
) -> None:
    # GIVEN a receiver with nothing to do, its dispatcher reading a clock the test sets
    clock = SetClock(1_800_000_000.0)
    running = start_receiver(webhook_config, clock=clock)

    # THEN its idle passes (no delivery wakes it) set the heartbeat, and keep setting it
    wait_for(lambda: _scraped_heartbeat(running.url) == 1_800_000_000.0, what="a first pass")
    clock.now = 1_800_000_100.0
    wait_for(lambda: _scraped_heartbeat(running.url) == 1_800_000_100.0, what="an idle pass")

    # WHEN the dispatcher stops
    running.receiver.dispatcher.stop()
    last = _scraped_heartbeat(running.url)
    clock.now = 1_800_000_200.0

    # THEN the heartbeat stays at its last pass while time goes on (the alert's condition)
    assert last == 1_800_000_100.0
    assert _scraped_heartbeat(running.url) == last
    assert requests.get(f"{running.url}/readyz", timeout=10).status_code == 503


def test_error_messages_stay_short_for_huge_garbage(receiver: RunningReceiver) -> None:
    huge_version = firing_payload(starts_at=STARTS)
    huge_version["version"] = "4" * 100_000
    huge_label = firing_payload(starts_at=STARTS)
    huge_label["alerts"][0]["labels"] = {"k" * 100_000: 5}
    for payload in (huge_version, huge_label):
        answer = post(receiver.url, payload)
        assert answer.status_code == 400
        assert len(answer.json()["error"]) < 1000


def test_outbox_unavailable_is_503_so_alertmanager_resends(
    webhook_config: RobustloopConfig,
    argo: ArgoStandIn,
    start_receiver: Callable[..., RunningReceiver],
) -> None:
    # GIVEN another process holds the outbox's write lock (beyond the 5 s busy timeout)
    running = start_receiver(webhook_config, start_dispatcher=False)
    blocker = sqlite3.connect(webhook_config.webhook.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        # WHEN a delivery arrives, THEN it is a 503 (a resend is wanted) and nothing is stored
        answer = post(running.url, firing_payload(starts_at=STARTS))
        assert answer.status_code == 503
        assert "resend" in answer.json()["error"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert _rows(webhook_config) == []
    # AND Alertmanager's resend is accepted once the outbox is free
    assert post(running.url, firing_payload(starts_at=STARTS)).status_code == 200
    assert _rows(webhook_config) == [(INCIDENT, "received")]
