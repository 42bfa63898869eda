"""The demo's scenario driver: clean traffic, then an attack (or drift), watched to the end.

``attack`` (the paper's experiment, live): clean traffic for ``clean_seconds``, then an adaptive
FGSM attack at ``eps`` — the client attacks whatever version serves, so after a rollout it
attacks the hardened model. The driver watches the loop close: alert firing in Prometheus, the
alert reaching the receiver, the remediation workflow starting, the gate's decision, the
promotion, the hardened model answering the attacked traffic; it stops once the attacked
accuracy over ``recovery_window`` seconds of hardened-model traffic reaches
``recovered_accuracy``, when the remediation ended without a promotion, or at the timeout.

``drift``: clean traffic, then natural Gaussian noise for ``drift_seconds``; the report says
whether a remediation was (wrongly) started.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from robustloop.config import RobustloopConfig
from robustloop.stack import report as rp
from robustloop.stack.local import Echo, LocalStack, robustloop_argv
from robustloop.stack.observe import (
    StackObserver,
    TrafficTail,
    merge_traffic,
    node_finished_at,
    node_outputs,
    running_step,
    started_at,
)
from robustloop.stack.supervisor import Child, StackError
from workflows.contract import GATE_TASK, PROMOTE_TASK

log = logging.getLogger(__name__)

Scenario = Literal["attack", "drift"]


@dataclass(frozen=True)
class ScenarioOptions:
    """How long each phase lasts and what counts as recovered (defaults: the ``stack`` section)."""

    scenario: Scenario
    clean_seconds: float
    attack_seconds: float
    """Attack: timeout after attack start. Drift: how long the noise lasts."""
    eps: float
    rate: float
    feedback_fraction: float
    recovered_accuracy: float
    recovery_window: float

    @classmethod
    def from_config(cls, cfg: RobustloopConfig, scenario: Scenario) -> ScenarioOptions:
        s = cfg.stack
        return cls(
            scenario=scenario,
            clean_seconds=s.clean_seconds,
            attack_seconds=s.timeout_seconds if scenario == "attack" else s.drift_seconds,
            eps=s.attack_eps if s.attack_eps is not None else cfg.remediation.eps,
            rate=s.traffic_rate,
            feedback_fraction=s.feedback_fraction,
            recovered_accuracy=s.recovered_accuracy,
            recovery_window=s.recovery_window_seconds,
        )

    def with_overrides(self, **changes: Any) -> ScenarioOptions:
        """A copy with the non-None ``changes`` applied (CLI flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class ScenarioRunner:
    """Drives one scenario against a started :class:`LocalStack` and writes the report.

    Args:
        stack: the started stack.
        options: phases and thresholds.
        report_dir: where the report goes (created).
        echo: where progress lines go.
    """

    def __init__(
        self,
        stack: LocalStack,
        options: ScenarioOptions,
        report_dir: Path,
        echo: Echo = print,
    ) -> None:
        self.stack = stack
        self.options = options
        self.report_dir = report_dir
        self.echo = echo
        folder = stack.folder
        self.observer = StackObserver(
            prometheus_url=folder.prometheus_url,
            receiver_url=folder.webhook_url,
            token=folder.token(),
            runs_dir=folder.config.submitter.runs_dir,
            model=folder.config.model.name,
        )
        self.timeline = rp.Timeline(report_dir / "timeline.jsonl")
        self.baseline = stack.production
        self.hardened: str | None = None
        self.t0 = time.time()
        self._traffic: Child | None = None
        self._tail: TrafficTail | None = None
        self._workflow: dict[str, Any] | None = None
        self._gate: dict[str, Any] | None = None

    # -- traffic -------------------------------------------------------------------------------

    def _start_traffic(self, mode: str, seconds: float) -> None:
        """Start (replacing any previous) ``robustloop traffic`` in ``mode`` for ``seconds``."""
        self._stop_traffic()
        folder = self.stack.folder
        log_path = self.report_dir / f"traffic-{mode}.jsonl"
        log_path.unlink(missing_ok=True)
        argv = robustloop_argv(
            folder.config_path,
            "traffic",
            "--url",
            folder.serving_url,
            "--rate",
            f"{self.options.rate:g}",
            "--duration",
            f"{seconds:g}",
            "--mode",
            mode,
            "--feedback-fraction",
            f"{self.options.feedback_fraction:g}",
            "--log",
            str(log_path),
        )
        if mode in ("fgsm", "pgd"):
            # noise keeps the traffic generator's default strength (calibrated to be as
            # harmful as a weak attack); eps is the attack's L-inf radius only.
            argv += ["--eps", f"{self.options.eps:g}"]
        self._traffic = self.stack.supervisor.start(
            f"traffic-{mode}", argv, folder.logs / f"traffic-{mode}.log"
        )
        self._tail = TrafficTail(log_path)

    def _stop_traffic(self) -> None:
        if self._traffic is not None:
            self.stack.supervisor.stop(self._traffic)
            self.stack.supervisor.children.remove(self._traffic)
            self._traffic = None

    # -- one tick ------------------------------------------------------------------------------

    def _now(self) -> float:
        return round(time.time() - self.t0, 2)

    def _rel(self, unix: float | None) -> float:
        return self._now() if unix is None else round(unix - self.t0, 2)

    def _tick(self, phase: str) -> rp.Sample:
        """Observe the stack once, record a sample and any new events, print a progress line."""
        self.stack.poll()
        if (
            self._traffic is not None
            and not self._traffic.alive
            and self._traffic.process.returncode
        ):
            raise StackError(
                f"the traffic client exited with status {self._traffic.process.returncode}; "
                f"its log ({self._traffic.log_path}) ends with:\n{self._traffic.log_tail()}"
            )
        t = self._now()
        traffic = merge_traffic(self._tail.read() if self._tail else [])
        obs = self.observer
        alerts = obs.firing_alerts()
        if alerts:
            self.timeline.add_event(rp.ALERT_FIRING, t, alerts=alerts)
        for rem in obs.remediations():
            self.timeline.add_event(
                rp.ALERT_RECEIVED,
                self._rel(rem.received_at),
                incident=rem.incident,
                state=rem.state,
            )
        step = self._follow_workflow()
        if self.hardened is not None and traffic.version == self.hardened and phase != "clean":
            self.timeline.add_event(rp.HARDENED_SERVING, t, version=self.hardened)
        sample = rp.Sample(
            t=t,
            phase=phase,
            version=traffic.version,
            accuracy=None if traffic.accuracy is None else round(traffic.accuracy, 4),
            n=traffic.n,
            entropy=_round(obs.level("robustloop_prediction_entropy")),
            squeeze=_round(obs.level("robustloop_squeeze_score")),
            alerts=alerts,
            workflow_step=step,
        )
        self.timeline.add_sample(sample)
        acc = "  —  " if sample.accuracy is None else f"{sample.accuracy:.3f}"
        self.echo(
            f"[{t:6.1f}s] {phase:<6} serving={sample.version or '?'} acc={acc} "
            f"alerts={','.join(alerts) or '-'} workflow={step or '-'}"
        )
        return sample

    def _follow_workflow(self) -> str | None:
        """Record workflow start, gate decision and promotion; return the current step."""
        runs = self.observer.runs()
        if not runs:
            return None
        obj, summary = runs[-1]
        self._workflow = {"name": summary.name, "phase": summary.phase, "message": summary.message}
        self.timeline.add_event(rp.WORKFLOW_START, self._rel(started_at(obj)), name=summary.name)
        if summary.gate_passed is not None:
            gate = node_outputs(obj, GATE_TASK)
            self._gate = dict(gate)
            self.timeline.add_event(
                rp.GATE_DECISION,
                self._rel(node_finished_at(obj, GATE_TASK)),
                passed=summary.gate_passed,
            )
        if summary.promoted_version:
            self.hardened = summary.promoted_version
            self.timeline.add_event(
                rp.PROMOTION,
                self._rel(node_finished_at(obj, PROMOTE_TASK)),
                version=summary.promoted_version,
            )
        return running_step(obj)

    def _recovered(self) -> bool:
        """Attacked accuracy of hardened-model traffic over the recovery window is high enough."""
        start = self.timeline.first(rp.HARDENED_SERVING)
        if start is None:
            return False
        window = [
            s
            for s in self.timeline.samples
            if s.t >= start.t and s.version == self.hardened and s.accuracy is not None
        ]
        if not window or window[-1].t - window[0].t < self.options.recovery_window:
            return False
        recent = [s for s in window if s.t >= window[-1].t - self.options.recovery_window]
        total = sum(s.n for s in recent)
        accuracy = (
            sum(s.accuracy * s.n for s in recent if s.accuracy is not None) / total
            if total
            else 0.0
        )
        return accuracy >= self.options.recovered_accuracy

    # -- the scenario --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run the scenario to its end and write the report; returns the summary."""
        opts = self.options
        try:
            self._run_phase("clean", "clean", opts.clean_seconds)
            attack_mode = "fgsm" if opts.scenario == "attack" else "noise"
            phase = "attack" if opts.scenario == "attack" else "drift"
            start_kind = rp.ATTACK_START if opts.scenario == "attack" else rp.DRIFT_START
            self._start_traffic(attack_mode, opts.attack_seconds + 60)
            self.timeline.add_event(start_kind, self._now(), eps=opts.eps, mode=attack_mode)
            self.echo(f"{phase} starts: mode={attack_mode} eps={opts.eps:g}")
            deadline = time.monotonic() + opts.attack_seconds
            while time.monotonic() < deadline:
                tick_start = time.monotonic()
                self._tick(phase)
                if opts.scenario == "attack" and self._attack_over():
                    break
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick_start)))
            else:
                if opts.scenario == "attack":
                    self.timeline.add_event(rp.TIMEOUT, self._now(), seconds=opts.attack_seconds)
                    self.echo(f"timeout: not recovered {opts.attack_seconds:g} s after the attack")
        finally:
            self._stop_traffic()
        return self.finish()

    def _run_phase(self, phase: str, mode: str, seconds: float) -> None:
        self._start_traffic(mode, seconds + 5)
        self.echo(f"{phase} phase: {seconds:g} s of {mode} traffic")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tick_start = time.monotonic()
            self._tick(phase)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick_start)))

    def _attack_over(self) -> bool:
        if self._recovered():
            self.timeline.add_event(rp.RECOVERED, self._now(), version=self.hardened)
            self.echo(f"recovered: {self.hardened} serves and holds the attack off")
            return True
        wf = self._workflow or {}
        if wf.get("phase") in ("Failed", "Error") or (
            wf.get("phase") == "Succeeded" and self.hardened is None
        ):
            self.echo(f"the remediation {wf.get('name')} ended without a promotion ({wf})")
            return True
        return False

    def finish(self) -> dict[str, Any]:
        """Summarise, write the report files, and return the summary."""
        started = bool(self.observer.runs()) or self._workflow is not None
        summary = rp.summarise(
            self.timeline,
            scenario=self.options.scenario,
            eps=self.options.eps if self.options.scenario == "attack" else None,
            recovery_window_s=self.options.recovery_window,
            versions={"baseline": self.baseline, "hardened": self.hardened},
            gate=self._gate,
            workflow=self._workflow,
            remediation_started=started,
        )
        rp.write_report(self.report_dir, self.timeline, summary)
        return summary


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


__all__ = ["ScenarioOptions", "ScenarioRunner"]
