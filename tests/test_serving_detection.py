"""The signals a user reads from /metrics move when the traffic turns adversarial.

A real server (on 127.0.0.1, a free port) serves a briefly trained CNN; the traffic generator
sends clean traffic and then adaptive FGSM traffic, feeding back every label. Between two
scrapes of /metrics we compute what the alert rules compute: canary accuracy from the feedback
counters, and the mean entropy and squeeze score from the histograms' _sum and _count.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import requests
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from robustloop.config import RobustloopConfig
from serving import RunningServer, create_app, get_state
from serving.traffic import Mode, TrafficOptions, run_traffic
from training import ModelStore, build_model, make_splits, train_standard

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Scrape:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(values: Scrape, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and wanted <= set(ls))


class Window:
    """What changed between two scrapes, as PromQL's increase() would see it."""

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after

    def increase(self, name: str, **labels: str) -> float:
        return total(self.after, name, **labels) - total(self.before, name, **labels)

    def canary_accuracy(self) -> float:
        correct = self.increase("robustloop_feedback_total", outcome="correct")
        wrong = self.increase("robustloop_feedback_total", outcome="wrong")
        assert correct + wrong > 0, "no feedback arrived in this window"
        return correct / (correct + wrong)

    def mean(self, histogram: str) -> float:
        count = self.increase(f"{histogram}_count")
        assert count > 0, f"no observations of {histogram} in this window"
        return self.increase(f"{histogram}_sum") / count


@pytest.fixture
def trained_server(small_config: RobustloopConfig) -> Iterator[tuple[RunningServer, ModelStore]]:
    splits = make_splits(small_config.data)
    torch.manual_seed(0)
    result = train_standard(
        build_model("cnn"),
        splits.train,
        epochs=2,
        batch_size=32,
        lr=2e-3,
        seed=0,
        progress=False,
    )
    store = ModelStore(small_config.store.path)
    store.register(
        result.model,
        architecture="cnn",
        parent=None,
        recipe={"test": "brief"},
        metrics={},
        split=splits.describe(),
        provenance={"test": True},
    )
    small_config.serving.squeeze_fraction = 1.0
    app = create_app(small_config, store=store, registry=CollectorRegistry())
    try:
        with RunningServer(app) as server:
            yield server, store
    finally:
        get_state(app).close()


def test_fgsm_traffic_lowers_canary_accuracy_and_shifts_entropy_and_squeeze(
    small_config: RobustloopConfig, trained_server: tuple[RunningServer, ModelStore]
) -> None:
    server, store = trained_server

    def send(mode: Mode) -> None:
        options = TrafficOptions(
            url=server.url, rate=1000, mode=mode, batch=8, feedback_fraction=1.0, requests=60
        )  # 60 requests of 8 images, as fast as the server answers
        summary = run_traffic(small_config, options, io.StringIO(), store=store)
        assert summary.errors == 0
        assert summary.images == 480

    # GIVEN clean traffic
    start = scrape(server.url)
    send("clean")
    after_clean = scrape(server.url)
    # WHEN the traffic turns into an adaptive FGSM attack (eps 0.1)
    send("fgsm")
    after_attack = scrape(server.url)

    # THEN /metrics shows it: accuracy from the feedback counters falls, entropy and squeeze rise
    clean, attack = Window(start, after_clean), Window(after_clean, after_attack)
    seen = {
        name: (clean_value, attack_value)
        for name, clean_value, attack_value in [
            ("canary accuracy", clean.canary_accuracy(), attack.canary_accuracy()),
            *[
                (h, clean.mean(h), attack.mean(h))
                for h in (
                    "robustloop_prediction_entropy",
                    "robustloop_squeeze_score",
                    "robustloop_max_probability",
                )
            ],
        ]
    }
    print("(clean, fgsm) per signal:", seen)
    accuracy = seen["canary accuracy"]
    assert accuracy[0] > 0.6, f"the briefly trained model should classify clean data: {seen}"
    assert accuracy[1] < accuracy[0] - 0.2, seen
    entropy, squeeze, top = (
        seen[f"robustloop_{n}"] for n in ("prediction_entropy", "squeeze_score", "max_probability")
    )
    assert entropy[1] > entropy[0], seen
    assert squeeze[1] > squeeze[0], seen
    assert top[1] < top[0], seen
