"""Post-rollout guard: the query, the decision, and a watch against a real Prometheus."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_api_client import PrometheusConnect
from prometheus_client import CollectorRegistry, Counter, start_http_server

from robustloop.config import RobustloopConfig, dump_config
from tests.conftest import free_port, running_prometheus
from workflows.guard import (
    CAP_REACHED,
    KEEP,
    ROLLBACK,
    SKIPPED,
    UNWATCHED,
    WAIT,
    CanaryCounts,
    GuardDecision,
    canary_queries,
    consecutive_rollbacks,
    fetch_counts,
    judge,
    watch,
)


def test_queries_select_one_version_and_sum_increases_over_the_window() -> None:
    correct, total = canary_queries("fashion-cnn", 'v0002-"x"', 12.2)
    assert correct == (
        'sum(increase(robustloop_feedback_total{model="fashion-cnn",version="v0002-\\"x\\"",'
        'outcome="correct"}[13s]))'
    )
    assert total == (
        'sum(increase(robustloop_feedback_total{model="fashion-cnn",version="v0002-\\"x\\""}[13s]))'
    )


@pytest.mark.parametrize(
    ("new", "old", "final", "action"),
    [
        (CanaryCounts(30, 100), CanaryCounts(90, 100), False, ROLLBACK),  # clearly worse
        (CanaryCounts(88, 100), CanaryCounts(90, 100), False, WAIT),  # not (yet) worse
        (CanaryCounts(88, 100), CanaryCounts(90, 100), True, KEEP),
        (CanaryCounts(95, 100), CanaryCounts(40, 100), True, KEEP),  # better
        (CanaryCounts(0, 10), CanaryCounts(90, 100), False, WAIT),  # too little feedback
        (CanaryCounts(0, 10), CanaryCounts(90, 100), True, KEEP),
    ],
)
def test_judge(new: CanaryCounts, old: CanaryCounts, final: bool, action: str) -> None:
    got, reason, _p = judge(new, old, alpha=0.05, min_samples=50, looks=4, final=final)
    assert got == action, reason


def test_repeated_looks_are_corrected() -> None:
    # p is about 0.02: enough for one look at alpha 0.05, not for one of ten looks
    new, old = CanaryCounts(80, 100), CanaryCounts(90, 100)
    assert judge(new, old, alpha=0.05, min_samples=50, looks=1)[0] == ROLLBACK
    assert judge(new, old, alpha=0.05, min_samples=50, looks=10)[0] == KEEP


def test_no_watch_window_means_no_watch(small_config: RobustloopConfig) -> None:
    small_config.rollout.watch_seconds = 0
    decision = watch(small_config, version="v2", previous="v1", workflow="w")
    assert decision.action == SKIPPED


def test_an_unreachable_prometheus_leaves_the_version_unwatched_not_rolled_back(
    small_config: RobustloopConfig,
) -> None:
    import training

    cfg = small_config
    cfg.rollout.prometheus_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg.rollout.watch_seconds = 2
    cfg.rollout.poll_seconds = 1
    store = training.ModelStore(cfg.store.path)
    common: dict[str, Any] = {
        "architecture": "cnn", "recipe": {}, "metrics": {}, "split": {}, "provenance": {}
    }  # fmt: skip
    old = store.register(training.build_model("cnn"), parent=None, **common)
    new = store.register(training.build_model("cnn"), parent=old, **common)
    store.promote(new)
    decision = watch(cfg, version=new, previous=old, workflow="w")
    assert decision.action == UNWATCHED
    assert cfg.rollout.prometheus_url in decision.reason
    assert store.production() == new


# ------------------------------------------------------------------ against a real Prometheus


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Counter]]:
    """A real Prometheus scraping a feedback counter exported on a free port, every second."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    registry = CollectorRegistry()
    feedback = Counter(
        "robustloop_feedback",
        "ground truth fed back",
        ["model", "version", "outcome"],
        registry=registry,
    )
    exporter_port = free_port()
    server, _thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    config = (
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"- job_name: serving\n  static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    try:
        with running_prometheus(tmp_path, config) as url:
            yield url, feedback
    finally:
        server.shutdown()


def test_guard_rolls_back_a_worse_version_then_stops_at_the_cap(
    small_config: RobustloopConfig, prometheus: tuple[str, Counter]
) -> None:
    import training

    url, feedback = prometheus
    cfg = small_config
    cfg.rollout.prometheus_url = url
    cfg.rollout.watch_seconds = 5
    cfg.rollout.poll_seconds = 1
    cfg.rollout.min_canary_samples = 20
    cfg.rollout.max_consecutive_rollbacks = 1
    store = training.ModelStore(cfg.store.path)
    common: dict[str, Any] = {
        "architecture": "cnn",
        "recipe": {},
        "metrics": {},
        "split": {},
        "provenance": {},
    }
    old = store.register(training.build_model("cnn"), parent=None, **common)
    new = store.register(training.build_model("cnn"), parent=old, **common)
    store.promote(new, provenance={"incident": "t"})

    # GIVEN canary feedback: the old version right 9 times in 10, the new one 3 in 10
    model = cfg.model.name
    for version in (old, new):
        for outcome in ("correct", "wrong"):
            feedback.labels(model, version, outcome).inc(0)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            feedback.labels(model, old, "correct").inc(18)
            feedback.labels(model, old, "wrong").inc(2)
            feedback.labels(model, new, "correct").inc(6)
            feedback.labels(model, new, "wrong").inc(14)
            stop.wait(0.5)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        # wait until Prometheus holds a window of the old version's feedback before "now"
        prom = PrometheusConnect(url=url, disable_ssl=True)
        for _ in range(600):
            window = cfg.rollout.watch_seconds
            if fetch_counts(prom, model, old, window, time.time()).total >= 50:
                break
            time.sleep(0.1)
        else:
            pytest.fail("Prometheus never held the old version's feedback")
        # WHEN the guard watches the new version
        first = watch(cfg, version=new, previous=old, workflow="wf-1")
        # THEN it rolls back, and the store records why
        assert first.action == ROLLBACK, first.reason
        assert store.production() == old
        last = store.history()[-1]
        assert last["action"] == "rollback"
        assert last["provenance"]["by"] == "post-rollout-guard"
        assert last["provenance"]["workflow"] == "wf-1"
        assert consecutive_rollbacks(cfg.store.path) == 1

        # WHEN the same bad version is promoted again: the cap (1) is reached
        store.promote(new, provenance={"incident": "t2"})
        second = watch(cfg, version=new, previous=old, workflow="wf-2")
        assert second.action == CAP_REACHED, second.reason
        assert "a human must decide" in second.reason
        assert store.production() == new  # not rolled back past the cap
    finally:
        stop.set()
        thread.join()


@pytest.mark.parametrize(("action", "recalibrated"), [(ROLLBACK, ["v1"]), (KEEP, [])])
def test_the_guard_step_recalibrates_after_a_rollback_only(
    small_config: RobustloopConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
    recalibrated: list[str],
) -> None:
    """After a rollback the restored version's thresholds must judge the traffic again (in a
    cluster: published to the PrometheusRule, as after a promotion); a kept version keeps the
    thresholds its promotion calibrated."""
    import workflows.guard
    import workflows.steps as steps

    config = tmp_path / "robustloop.yaml"
    config.write_text(dump_config(small_config), encoding="utf-8")
    monkeypatch.setenv(steps.CONFIG_ENV, str(config))

    def decide(cfg: RobustloopConfig, *, version: str, previous: str, workflow: str) -> Any:
        return GuardDecision(action=action, reason="test", version=version, previous=previous)

    monkeypatch.setattr(workflows.guard, "watch", decide)
    calls: list[str] = []
    monkeypatch.setattr(steps, "recalibrate", lambda cfg, version: calls.append(version))
    result = steps.guard(model=small_config.model.name, version="v2", previous="v1", workflow="w")
    assert result[0] == action
    assert calls == recalibrated
