"""One test per hostile input that used to get a 5xx or slip through, over real HTTP: huge
integers, lone surrogates, a Unicode digit in a query, a body that is not JSON by its
Content-Type, an alert naming a model this receiver does not serve; a config with NaN or a key
given twice; counters that exist before their first increment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry

from robustloop.config import ConfigError, RobustloopConfig, load_config
from tests.webhook_support import TOKEN, load_fixture

AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def _alert_text(**replace: str) -> str:
    """The captured delivery as JSON text, with raw JSON spliced in for some values."""
    payload = load_fixture("alertmanager_firing.json")
    markers = {}
    for index, (path, raw) in enumerate(replace.items()):
        marker = f"@@{index}@@"
        markers[json.dumps(marker)] = raw
        if path == "groupKey":
            payload["groupKey"] = marker
        else:
            payload["alerts"][0]["labels"][path] = marker
    text = json.dumps(payload)
    for marker, raw in markers.items():
        text = text.replace(marker, raw)
    return text


@pytest.mark.parametrize(
    ("raw", "where", "message"),
    [
        ('"\\ud800"', "groupKey", "lone surrogate"),
        ('"\\udfff x"', "severity", "lone surrogate"),
        ("7" * 5000, "severity", "at most 100"),
    ],
)
def test_the_receiver_answers_hostile_json_with_a_400_and_records_nothing(
    dry_receiver: tuple[str, object], raw: str, where: str, message: str
) -> None:
    url, rx = dry_receiver
    answer = requests.post(
        f"{url}/api/v1/alerts", data=_alert_text(**{where: raw}), headers=AUTH, timeout=10
    )
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert rx.outbox.list() == []  # type: ignore[attr-defined]


def test_a_unicode_digit_in_limit_is_a_400(dry_receiver: tuple[str, object]) -> None:
    url, _ = dry_receiver
    answer = requests.get(
        f"{url}/api/v1/remediations", params={"limit": "²"}, headers=AUTH, timeout=10
    )
    assert answer.status_code == 400
    assert "limit must be an integer" in answer.json()["error"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-16"],
)
def test_a_body_that_is_not_json_by_its_type_is_a_415(
    dry_receiver: tuple[str, object], served_model: str, content_type: str
) -> None:
    url, rx = dry_receiver
    body = json.dumps(load_fixture("alertmanager_firing.json"))
    headers = {**AUTH, "Content-Type": content_type}
    answer = requests.post(f"{url}/api/v1/alerts", data=body, headers=headers, timeout=10)
    assert answer.status_code == 415 and "JSON" in answer.json()["error"]
    assert rx.outbox.list() == []  # type: ignore[attr-defined]
    infer = {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]}
    answer = requests.post(
        f"{served_model}/v2/models/fashion-cnn/infer",
        data=json.dumps(infer),
        headers={"Content-Type": content_type},
        timeout=10,
    )
    assert answer.status_code == 415
    # JSON itself, and a client that names no type (Triton's does not), are fine
    for fine in ({"Content-Type": "application/json; charset=utf-8"}, {}):
        answer = requests.post(
            f"{served_model}/v2/models/fashion-cnn/infer",
            data=json.dumps(infer),
            headers=fine,
            timeout=10,
        )
        assert answer.status_code == 200, answer.text


def test_huge_integers_and_surrogates_get_a_400_from_the_model_server(served_model: str) -> None:
    url = f"{served_model}/v2/models/fashion-cnn"
    for body in (
        '{"inputs": [{"name": "x", "shape": [1, 784], "datatype": "UINT8", "data": ['
        + "9" * 5000
        + "]}]}",
        '{"id": "\\ud800", "inputs": []}',
        '{"ids": ["a"], "labels": [' + "1" * 5000 + "]}",
    ):
        target = "feedback" if '"ids"' in body else "infer"
        answer = requests.post(
            f"{url}/{target}", data=body, headers={"Content-Type": "application/json"}, timeout=10
        )
        assert answer.status_code == 400, answer.text


def test_an_alert_naming_another_model_cannot_open_a_remediation(
    dry_receiver: tuple[str, object],
) -> None:
    url, rx = dry_receiver
    payload = load_fixture("alertmanager_firing.json")
    payload["alerts"][0]["labels"]["model"] = "some-other-model"
    answer = requests.post(f"{url}/api/v1/alerts", json=payload, headers=AUTH, timeout=10)
    assert answer.status_code == 200
    (incident,) = rx.outbox.list()  # type: ignore[attr-defined]
    assert incident.state == "suppressed"  # recorded, never submitted
    assert "not this receiver's model" in json.dumps(incident.to_dict())


def test_the_feedback_and_request_counters_exist_at_zero_before_any_traffic(
    served_model: str,
) -> None:
    text = requests.get(f"{served_model}/metrics", timeout=10).text
    for outcome in ("correct", "wrong"):
        assert any(
            line.startswith("robustloop_feedback_total{")
            and f'outcome="{outcome}"' in line
            and line.endswith(" 0.0")
            for line in text.splitlines()
        ), outcome
    assert any(
        line.startswith("robustloop_inference_requests_total{") and 'code="200"' in line
        for line in text.splitlines()
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("webhook:\n  poll_seconds: .inf\n", "webhook.poll_seconds"),
        ("remediation:\n  eps: .nan\n", "remediation.eps"),
        ("webhook:\n  auth: bearer\nwebhook:\n  auth: none\n", "key 'webhook' appears twice"),
        ("webhook:\n  auth: bearer\n  auth: none\n", "key 'auth' appears twice"),
    ],
)
def test_a_config_with_a_non_finite_number_or_a_key_twice_is_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "robustloop.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_feedback_needs_its_own_token_when_one_is_configured(
    small_config: RobustloopConfig, tmp_path: Path
) -> None:
    """A client that may classify cannot forge canary accuracy: without the feedback token its
    labels are refused with a 401 and counted nowhere; with it they count."""
    from serving import RunningServer, create_app, get_state
    from tests.support import register_model
    from training import ModelStore

    token = tmp_path / "feedback-token"
    token.write_text("labeller-secret\n", encoding="utf-8")
    small_config.serving.feedback_token_file = token
    register_model(ModelStore(small_config.store.path))
    app = create_app(small_config, registry=CollectorRegistry())
    try:
        with RunningServer(app) as server:
            base = f"{server.url}/v2/models/fashion-cnn"
            infer = {
                "inputs": [{"name": "x", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]
            }
            outputs = requests.post(f"{base}/infer", json=infer, timeout=10).json()["outputs"]
            (ids,) = [o["data"] for o in outputs if o["name"] == "sample_ids"]
            forged = {"ids": ids, "labels": [0]}
            for headers in ({}, {"Authorization": "Bearer guess"}):
                answer = requests.post(f"{base}/feedback", json=forged, headers=headers, timeout=10)
                assert answer.status_code == 401 and "feedback" in answer.json()["error"]
            metrics = requests.get(f"{server.url}/metrics", timeout=10).text
            assert not any(
                line.startswith("robustloop_feedback_total{") and not line.endswith(" 0.0")
                for line in metrics.splitlines()
            )
            good = {"Authorization": "Bearer labeller-secret"}
            counted = requests.post(f"{base}/feedback", json=forged, headers=good, timeout=10)
            assert counted.status_code == 200
            assert counted.json()["correct"] + counted.json()["wrong"] == 1
    finally:
        get_state(app).close()


def test_an_unreadable_feedback_token_file_is_one_line_and_exit_2(
    small_config: RobustloopConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from robustloop.cli import main
    from robustloop.config import dump_config

    small_config.serving.feedback_token_file = tmp_path / "missing-token"
    config = tmp_path / "c.yaml"
    config.write_text(dump_config(small_config), encoding="utf-8")
    assert main(["--config", str(config), "serve", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "serving.feedback_token_file" in err[0]
