"""Post-rollout guard: watch canary accuracy after a promotion; roll back if the new model is worse.

The gate judged the candidate offline; the guard judges it on live traffic. The model server counts
ground truth fed back for a sample of requests (``robustloop_feedback_total{model, version,
outcome}``). Within ``rollout.watch_seconds`` after the promotion, the guard compares the new
version's canary accuracy since the promotion with the old version's over an equally long window
before it, with a one-sided two-proportion test (the versions saw different requests, so the test
is unpaired). It rolls back as soon as the new version is significantly worse (Bonferroni-corrected
for the repeated looks), keeps it otherwise, and never rolls back more than
``rollout.max_consecutive_rollbacks`` times in a row: past the cap it stops and says so, for a
human to decide, since repeated rollbacks mean the loop itself is misjudging. If Prometheus cannot
be asked during the whole window, the new version stays and the decision says it went unwatched.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from robustloop.atomic import atomic_write_json
from robustloop.config import RobustloopConfig
from workflows._stats import two_proportion_p_worse

log = logging.getLogger(__name__)

FEEDBACK_METRIC = "robustloop_feedback_total"
STATE_FILE = "guard-state.json"
"""File in the store folder counting consecutive automatic rollbacks."""

KEEP = "keep"
ROLLBACK = "rollback"
WAIT = "wait"
CAP_REACHED = "cap-reached"
SKIPPED = "skipped"
SUPERSEDED = "superseded"
UNWATCHED = "unwatched"


@dataclass(frozen=True)
class CanaryCounts:
    """Canary feedback of one version over a window: correct answers and all answers."""

    correct: float
    total: float

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total > 0 else None


@dataclass
class GuardDecision:
    """What the guard did and why (JSON via :meth:`as_dict`)."""

    action: str
    reason: str
    version: str
    previous: str
    new: CanaryCounts | None = None
    old: CanaryCounts | None = None
    p_value: float | None = None
    consecutive_rollbacks: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def canary_queries(model: str, version: str, window_seconds: float) -> tuple[str, str]:
    """PromQL for the correct and total canary feedback of one version over a window.

    ``increase`` over a counter handles restarts of the server; ``sum`` folds the server's
    replicas (and instances) into one figure.
    """
    window = f"{max(1, math.ceil(window_seconds))}s"
    selector = f'model="{_label(model)}",version="{_label(version)}"'
    correct = f'sum(increase({FEEDBACK_METRIC}{{{selector},outcome="correct"}}[{window}]))'
    total = f"sum(increase({FEEDBACK_METRIC}{{{selector}}}[{window}]))"
    return correct, total


def judge(
    new: CanaryCounts,
    old: CanaryCounts,
    *,
    alpha: float,
    min_samples: int,
    looks: int = 1,
    final: bool = True,
) -> tuple[str, str, float | None]:
    """Decide on one look: roll back, keep, or wait for more feedback.

    Args:
        new: canary feedback of the new version since the promotion.
        old: canary feedback of the previous version before the promotion.
        alpha: significance level of the whole watch.
        min_samples: feedback needed on each side before anything is judged.
        looks: planned number of looks (the level of each is alpha / looks).
        final: whether this is the last look (then ``wait`` becomes ``keep``).

    Returns:
        (action, reason, p-value or None).
    """
    if new.total < min_samples or old.total < min_samples:
        reason = (
            f"not enough canary feedback to judge (new {new.total:.0f}, old {old.total:.0f}, "
            f"need {min_samples} each)"
        )
        return (KEEP if final else WAIT), reason, None
    p = two_proportion_p_worse(
        round(new.correct), round(new.total), round(old.correct), round(old.total)
    )
    level = alpha / max(1, looks)
    summary = (
        f"canary accuracy new {new.accuracy:.3f} (n={new.total:.0f}) vs old {old.accuracy:.3f} "
        f"(n={old.total:.0f}); p(new worse) {p:.2g}"
    )
    if p < level:
        return ROLLBACK, f"{summary} < {level:.2g}: the new version is worse", p
    if final:
        return KEEP, f"{summary} >= {level:.2g}: the new version is not worse", p
    return WAIT, summary, p


def _query_errors() -> tuple[type[BaseException], ...]:
    import requests
    from prometheus_api_client.exceptions import PrometheusApiClientException

    return (
        OSError,
        ValueError,
        KeyError,
        IndexError,
        requests.RequestException,
        PrometheusApiClientException,
    )


_QUERY_ERRORS = _query_errors()


class _Prometheus(Protocol):
    def custom_query(self, query: str, params: dict[str, Any] | None = None) -> Any: ...


def fetch_counts(
    prom: _Prometheus, model: str, version: str, window_seconds: float, at: float
) -> CanaryCounts:
    """Query Prometheus for one version's canary counts over ``window_seconds`` ending at ``at``."""
    correct_q, total_q = canary_queries(model, version, window_seconds)
    values = []
    for query in (correct_q, total_q):
        result = prom.custom_query(query, params={"time": f"{at:.3f}"})
        values.append(float(result[0]["value"][1]) if result else 0.0)
    return CanaryCounts(correct=values[0], total=values[1])


def consecutive_rollbacks(store_path: Path) -> int:
    """Automatic rollbacks in a row so far (0 after a kept promotion)."""
    try:
        state = json.loads((Path(store_path) / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return 0
    return int(state.get("consecutive_rollbacks", 0))


def _save_state(store_path: Path, count: int, decision: GuardDecision) -> None:
    path = Path(store_path) / STATE_FILE
    atomic_write_json(path, {"consecutive_rollbacks": count, "last": decision.as_dict()})


def watch(
    cfg: RobustloopConfig,
    *,
    version: str,
    previous: str,
    workflow: str,
    prometheus: _Prometheus | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> GuardDecision:
    """Watch the new version for ``rollout.watch_seconds`` and act (see the module docstring)."""
    import training

    rollout = cfg.rollout
    model = cfg.model.name
    if rollout.watch_seconds <= 0:
        return GuardDecision(SKIPPED, "rollout.watch_seconds is 0: no watch", version, previous)
    if prometheus is None:
        from prometheus_api_client import PrometheusConnect

        prometheus = PrometheusConnect(url=rollout.prometheus_url, disable_ssl=True)
    store = training.ModelStore(cfg.store.path)
    started = clock()
    looks = max(1, math.ceil(rollout.watch_seconds / rollout.poll_seconds))
    old: CanaryCounts | None = None
    new: CanaryCounts | None = None
    p: float | None = None
    look = 0
    while True:
        look += 1
        sleep(min(rollout.poll_seconds, max(0.0, started + rollout.watch_seconds - clock())))
        now = clock()
        final = now - started >= rollout.watch_seconds or look >= looks
        try:
            if old is None:
                old = fetch_counts(prometheus, model, previous, rollout.watch_seconds, started)
                log.info("guard: old version %s before the promotion: %s", previous, old)
            new = fetch_counts(prometheus, model, version, max(1.0, now - started), now)
        except _QUERY_ERRORS as exc:  # Prometheus down or answering garbage: ask again next look
            log.warning("guard look %d/%d: Prometheus query failed: %s", look, looks, exc)
            if final:
                reason = (
                    f"could not query Prometheus at {rollout.prometheus_url} ({exc}); the new "
                    "version stays, UNWATCHED"
                )
                return GuardDecision(UNWATCHED, reason, version, previous, new, old)
            continue
        action, reason, p = judge(
            new,
            old,
            alpha=cfg.gate.alpha,
            min_samples=rollout.min_canary_samples,
            looks=looks,
            final=final,
        )
        log.info("guard look %d/%d: %s", look, looks, reason)
        if action != WAIT:
            break
    decision = GuardDecision(action, reason, version, previous, new, old, p)
    count = consecutive_rollbacks(cfg.store.path)
    if action == KEEP:
        _save_state(cfg.store.path, 0, decision)
        return decision
    current = store.production()
    if current != version:
        decision.action = SUPERSEDED
        decision.reason += f"; but production is now {current}, not {version}: nothing rolled back"
        return decision
    if count >= rollout.max_consecutive_rollbacks:
        decision.action = CAP_REACHED
        decision.consecutive_rollbacks = count
        decision.reason += (
            f"; NOT rolled back: {count} automatic rollbacks in a row already "
            f"(rollout.max_consecutive_rollbacks={rollout.max_consecutive_rollbacks}); "
            "automatic rollbacks stop here, a human must decide (`robustloop models rollback`)"
        )
        _save_state(cfg.store.path, count, decision)
        return decision
    try:
        store.rollback(
            provenance={
                "by": "post-rollout-guard",
                "workflow": workflow,
                "from": version,
                "reason": reason,
            },
            expect=version,
        )
    except training.StoreConflict:  # moved since the look above: not ours to undo
        decision.action = SUPERSEDED
        decision.reason += f"; but production is now {store.production()}: nothing rolled back"
        return decision
    decision.consecutive_rollbacks = count + 1
    decision.reason += f"; rolled back from {version} to {store.production()}"
    _save_state(cfg.store.path, count + 1, decision)
    return decision


__all__ = [
    "CAP_REACHED",
    "KEEP",
    "ROLLBACK",
    "SKIPPED",
    "SUPERSEDED",
    "UNWATCHED",
    "WAIT",
    "CanaryCounts",
    "GuardDecision",
    "canary_queries",
    "consecutive_rollbacks",
    "fetch_counts",
    "judge",
    "watch",
]
