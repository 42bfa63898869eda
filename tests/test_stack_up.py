"""`robustloop up` for real: the Debian Prometheus and Alertmanager, our server and receiver.

One stack is started for the module (it trains a tiny baseline first, as `up` does on a fresh
store) and always stopped; the tests read what a user would see through the HTTP APIs.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import alert_rules
from robustloop.cli import main
from robustloop.config import RobustloopConfig
from robustloop.stack import LocalStack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
        reason="needs the Debian prometheus and prometheus-alertmanager packages",
    ),
]

ALERTS = set(alert_rules.ALERT_NAMES)


def _config(root: Path) -> RobustloopConfig:
    cfg = RobustloopConfig()
    cfg.data.eval_size = 500
    cfg.data.traffic_size = 500
    cfg.data.train_limit = 2000
    cfg.training.epochs = 1
    cfg.store.path = root / "store"
    cfg.stack.run_dir = root / "run"
    cfg.submitter.runs_dir = root / "runs"
    return cfg


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    lines: list[str] = []
    root = tmp_path_factory.mktemp("stack")
    with LocalStack(_config(root), echo=lines.append) as running:
        running.lines = lines  # type: ignore[attr-defined]
        yield running


def _until(fn, what: str, tries: int = 150):  # type: ignore[no-untyped-def]
    """Poll ``fn`` until it returns something truthy; fail naming ``what``."""
    for _ in range(tries):
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


def test_up_trains_a_baseline_on_an_empty_store_and_serves_it(stack: LocalStack) -> None:
    assert any("training a baseline" in line for line in stack.lines)  # type: ignore[attr-defined]
    assert stack.production is not None
    meta = requests.get(
        f"{stack.urls()['server']}/v2/models/{stack.cfg.model.name}", timeout=5
    ).json()
    assert stack.production in meta["versions"]


def test_every_part_answers_on_127_0_0_1(stack: LocalStack) -> None:
    urls = stack.urls()
    assert set(urls) == {"prometheus", "alertmanager", "server", "receiver"}
    assert all(url.startswith("http://127.0.0.1:") for url in urls.values())
    assert requests.get(urls["prometheus"] + "/-/ready", timeout=5).status_code == 200
    assert requests.get(urls["alertmanager"] + "/-/ready", timeout=5).status_code == 200
    assert requests.get(urls["server"] + "/v2/health/ready", timeout=5).status_code == 200


def test_prometheus_scrapes_the_server_and_holds_the_rules(stack: LocalStack) -> None:
    prom = stack.urls()["prometheus"]

    def server_up() -> bool:
        q = requests.get(
            prom + "/api/v1/query", params={"query": 'up{job="robustloop-serving"}'}, timeout=5
        ).json()["data"]["result"]
        return bool(q) and q[0]["value"][1] == "1"

    _until(server_up, "Prometheus scraping the model server")
    groups = requests.get(prom + "/api/v1/rules", timeout=5).json()["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert names >= ALERTS


def test_alertmanager_delivers_to_the_receiver_with_the_token_file(stack: LocalStack) -> None:
    status = requests.get(stack.urls()["alertmanager"] + "/api/v2/status", timeout=5).json()
    original = status["config"]["original"]
    assert f"{stack.urls()['receiver']}/api/v1/alerts" in original
    assert str(stack.folder.token_path) in original
    assert stack.folder.token() not in original


def test_the_receiver_refuses_a_caller_without_the_token(stack: LocalStack) -> None:
    url = stack.urls()["receiver"] + "/api/v1/alerts"
    resp = requests.post(url, json={"alerts": []}, timeout=5)
    assert resp.status_code == 401


def test_the_stack_reloads_the_rules_that_calibration_renders_and_calibrates_nothing_itself(
    stack: LocalStack,
) -> None:
    """After a promotion the workflow recalibrates (here, as a user would after a promotion by
    hand: `robustloop calibrate`); the stack only notices the new rules and reloads them."""
    import torch

    from training import ModelStore

    store = ModelStore(stack.cfg.store.path)
    model, manifest = store.load(stack.production or "production")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.999)  # a different model, hence a new version
    new = store.register(
        model,
        architecture=manifest.architecture,
        parent=manifest.version,
        recipe={"method": "test"},
        metrics={},
        split=manifest.split,
        provenance={"test": "stack reload"},
    )
    store.promote(new)
    reloads = stack.rules_reloads

    assert stack.poll() == new
    assert stack.rules_reloads == reloads  # nothing recalibrated the rules: nothing to reload
    assert new not in stack.folder.rules_path.read_text()

    assert main(["--config", str(stack.folder.config_path), "calibrate", "--model", new]) == 0
    assert stack.poll() is None
    assert stack.rules_reloads == reloads + 1
    # The label-free thresholds were recalibrated for, and now judge, the new version.
    assert new in stack.folder.rules_path.read_text()
    loaded = requests.get(stack.urls()["prometheus"] + "/api/v1/rules", timeout=5).text
    assert new in loaded


def test_leaving_the_block_stops_everything(stack: LocalStack, tmp_path: Path) -> None:
    """A second, short-lived stack on the same store: afterwards nothing listens any more."""
    cfg = stack.cfg.model_copy(deep=True)
    cfg.stack.run_dir = tmp_path / "run"
    with LocalStack(cfg, echo=lambda line: None) as running:
        ports = running.folder.ports
        pids = [c.process.pid for c in running.supervisor.children]
    assert running.supervisor.children == []
    for port in (ports.prometheus, ports.alertmanager, ports.serving, ports.webhook):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
