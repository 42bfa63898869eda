"""The model server's Prometheus metrics (names fixed in docs/ARCHITECTURE.md, "Metric names").

Every series carries ``model`` and ``version`` labels, so that alert rules and dashboards can say
which model version they judge; after a hot reload new observations land under the new version.
The signals are exported as histograms (distributions over a window), never as pre-averaged
gauges: the alert rules take ``rate(..._sum) / rate(..._count)`` over their own window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.signals import (
    ENTROPY_BUCKETS,
    LATENCY_BUCKETS,
    MAX_PROBABILITY_BUCKETS,
    SQUEEZE_BUCKETS,
)

LABELS = ("model", "version")


@dataclass(frozen=True)
class VersionMetrics:
    """The per-image series of one (model, version), bound once: ``labels()`` is not free."""

    samples: Any
    duration: Any
    entropy: Any
    max_probability: Any
    squeeze: Any


class ServingMetrics:
    """All metrics of one server, registered on ``registry`` (a fresh one in each test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "robustloop_inference_requests",
            "Infer requests, by HTTP status code.",
            (*LABELS, "code"),
            registry=registry,
        )
        self.samples = Counter(
            "robustloop_inference_samples",
            "Images classified.",
            LABELS,
            registry=registry,
        )
        self.duration = Histogram(
            "robustloop_request_duration_seconds",
            "Infer request latency, from body read to response built.",
            LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.entropy = Histogram(
            "robustloop_prediction_entropy",
            "Softmax entropy / ln(K) of each classified image, in [0, 1].",
            LABELS,
            buckets=ENTROPY_BUCKETS,
            registry=registry,
        )
        self.max_probability = Histogram(
            "robustloop_max_probability",
            "Top softmax probability of each classified image.",
            LABELS,
            buckets=MAX_PROBABILITY_BUCKETS,
            registry=registry,
        )
        self.squeeze = Histogram(
            "robustloop_squeeze_score",
            "Feature-squeezing L1 score (Xu et al. 2018) of each image of sampled requests.",
            LABELS,
            buckets=SQUEEZE_BUCKETS,
            registry=registry,
        )
        self.feedback = Counter(
            "robustloop_feedback",
            "Ground-truth labels fed back for earlier predictions, by outcome (correct/wrong).",
            (*LABELS, "outcome"),
            registry=registry,
        )
        self.model_info = Gauge(
            "robustloop_model_info",
            "1 for the model version being served, with its weights' sha256.",
            (*LABELS, "sha256"),
            registry=registry,
        )
        self.reload_failures = Counter(
            "robustloop_model_reload_failures",
            "Hot reloads of a new production version that failed (the old one kept serving).",
            ("model",),
            registry=registry,
        )
        self._info: tuple[str, str, str] | None = None
        self._bound: dict[tuple[str, str], VersionMetrics] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

    def count_request(self, model: str, version: str, code: int, amount: int = 1) -> None:
        """Count one infer request answered with HTTP status ``code``."""
        key = (model, version, code)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(model, version, str(code))
        child.inc(amount)

    def bound(self, model: str, version: str) -> VersionMetrics:
        """The series of ``model`` at ``version`` (cached; a dict read under the GIL)."""
        key = (model, version)
        found = self._bound.get(key)
        if found is None:
            found = VersionMetrics(
                samples=self.samples.labels(model, version),
                duration=self.duration.labels(model, version),
                entropy=self.entropy.labels(model, version),
                max_probability=self.max_probability.labels(model, version),
                squeeze=self.squeeze.labels(model, version),
            )
            self._bound[key] = found
        return found

    def set_served(self, model: str, version: str, sha256: str) -> None:
        """Point ``robustloop_model_info`` at the version now served (the old series goes)."""
        if self._info is not None:
            self.model_info.remove(*self._info)
        self._info = (model, version, sha256)
        self.model_info.labels(model, version, sha256).set(1)
        # Every series of the new version exists from the start, at zero, so that rate() and
        # increase() see its first increments (client_python's advice for labelled metrics).
        self.bound(model, version)
        for outcome in ("correct", "wrong"):
            self.feedback.labels(model, version, outcome)
        self.count_request(model, version, 200, amount=0)


__all__ = ["LABELS", "ServingMetrics", "VersionMetrics"]
