"""The demo's scenario driver: clean traffic, then an attack (or drift), watched to the end.

``attack`` (the paper's experiment, live): clean traffic for ``clean_seconds``, then an adaptive
FGSM attack at ``eps`` (or another attacker of ``robustloop traffic``: ``pgd``, ``bpda``,
``square``; on ``attack_fraction`` of the requests) — the client attacks whatever version
serves, so after a rollout it attacks the hardened model. The driver watches the loop close:
alert firing in Prometheus, the alert reaching the receiver, the remediation workflow starting,
the gate's decision, the promotion, the hardened model answering the attacked traffic; it stops
once the hardened model has answered ``recovery_window`` seconds of attacked traffic (recovered
if their accuracy reaches ``recovered_accuracy``: one fixed window from its first answer, never
the best of several), when the remediation ended without a promotion, or at the timeout.

``drift``: clean traffic, then natural Gaussian noise for ``drift_seconds``; the report says
whether a remediation was (wrongly) started.

``clean``: clean traffic only, for ``clean_seconds``: the false-alarm check (no remediation
may start).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import requests
from prometheus_api_client import PrometheusApiClientException

from robustloop.config import RobustloopConfig, attack_eps
from robustloop.stack import report as rp
from robustloop.stack.local import Echo, LocalStack, robustloop_argv
from robustloop.stack.observe import (
    Remediation,
    StackObserver,
    TrafficTail,
    merge_traffic,
    node_finished_at,
    node_outputs,
    parse_time,
    running_step,
    started_at,
)
from robustloop.stack.supervisor import Child, StackError
from workflows.contract import FINISHED_PHASES, GATE_TASK, PROMOTE_TASK

log = logging.getLogger(__name__)

Scenario = Literal["attack", "drift", "clean"]


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
    attack: str = "fgsm"
    """The attacker: a ``robustloop traffic`` attack mode (fgsm, pgd, bpda, square)."""
    attack_fraction: float = 1.0
    """The fraction of the attacker's requests that are attacked; the others go clean."""

    @classmethod
    def from_config(cls, cfg: RobustloopConfig, scenario: Scenario) -> ScenarioOptions:
        s = cfg.stack
        return cls(
            scenario=scenario,
            clean_seconds=s.clean_seconds,
            attack_seconds=s.timeout_seconds if scenario == "attack" else s.drift_seconds,
            eps=attack_eps(cfg),
            rate=s.traffic_rate,
            feedback_fraction=s.feedback_fraction,
            recovered_accuracy=s.recovered_accuracy,
            recovery_window=s.recovery_window_seconds,
        )

    def with_overrides(self, **changes: Any) -> ScenarioOptions:
        """A copy with the non-None ``changes`` applied (CLI flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass
class _Traffic:
    """One running ``robustloop traffic`` client and the tail of its log."""

    mode: str
    child: Child
    tail: TrafficTail
    first_t: float | None = None
    """Unix time at which its first second of traffic began (from its first log line)."""


class ScenarioRunner:
    """Drives one scenario against a started :class:`LocalStack` and writes the report.

    Phases are timed from the traffic itself, not from process starts: the client needs
    seconds to import torch and load the model it attacks, so the clean phase counts from the
    first clean answer, clean traffic goes on until the first attacked answer, and the attack
    starts when its first second of traffic began.

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
        self.phase = "clean"
        self._traffic: dict[str, _Traffic] = {}
        self._attack_t: float | None = None
        self._workflow: dict[str, Any] | None = None
        self._gate: dict[str, Any] | None = None
        self._clean_alerts: set[str] = set()

    # -- traffic -------------------------------------------------------------------------------

    def _start_traffic(self, mode: str, seconds: float) -> _Traffic:
        """Start ``robustloop traffic`` in ``mode`` for at most ``seconds``."""
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
        if mode not in ("clean", "noise"):
            # noise keeps the traffic generator's default strength (calibrated to be as
            # harmful as a weak attack); eps is the attack's L-inf radius only.
            argv += ["--eps", f"{self.options.eps:g}"]
            argv += ["--attack-fraction", f"{self.options.attack_fraction:g}"]
        child = self.stack.supervisor.start(
            f"traffic-{mode}", argv, folder.logs / f"traffic-{mode}.log"
        )
        traffic = self._traffic[mode] = _Traffic(mode, child, TrafficTail(log_path))
        return traffic

    def _stop_traffic(self, mode: str) -> None:
        traffic = self._traffic.pop(mode, None)
        if traffic is not None:
            self.stack.supervisor.stop(traffic.child)
            self.stack.supervisor.children.remove(traffic.child)

    def _read_traffic(self) -> dict[str, list[dict[str, Any]]]:
        """New log records of every running client, by mode; fails if a client crashed."""
        out: dict[str, list[dict[str, Any]]] = {}
        for mode, traffic in self._traffic.items():
            child = traffic.child
            if not child.alive and child.process.returncode:
                raise StackError(
                    f"the traffic client ({mode}) exited with status "
                    f"{child.process.returncode}; its log ({child.log_path}) ends with:\n"
                    f"{child.log_tail()}"
                )
            records = traffic.tail.read()
            answered = [r for r in records if r.get("images")]
            if traffic.first_t is None and answered:
                first = answered[0].get("t")
                traffic.first_t = float(first) - 1.0 if isinstance(first, int | float) else None
                traffic.first_t = traffic.first_t or time.time()
            out[mode] = records
        return out

    # -- one tick ------------------------------------------------------------------------------

    def _now(self) -> float:
        return round(time.time() - self.t0, 2)

    def _rel(self, unix: float | None) -> float:
        return self._now() if unix is None else round(unix - self.t0, 2)

    def _tick(self, attack_mode: str | None = None) -> rp.Sample:
        """Observe the stack once, record a sample and any new events, print a progress line.

        Args:
            attack_mode: the mode whose first answered second starts the attack (or drift).
        """
        self.stack.poll()
        by_mode = self._read_traffic()
        if attack_mode is not None and self._attack_t is None:
            traffic = self._traffic.get(attack_mode)
            if traffic is not None and traffic.first_t is not None:
                self._begin_attack(attack_mode, traffic.first_t)
        t = self._now()
        phase = self.phase
        mode = "clean" if phase == "clean" else (attack_mode or "")
        traffic_now = merge_traffic(by_mode.get(mode, []))
        obs = self.observer
        no_alerts: list[str] = []
        alerts = _observed(obs.firing_alerts, no_alerts)
        if phase == "clean":
            self._clean_alerts.update(alerts)
        elif alerts:
            self.timeline.add_event(rp.ALERT_FIRING, t, alerts=alerts)
        for rem in _observed(obs.remediations, _NO_REMEDIATIONS):
            at = self._rel(rem.received_at)
            if self._attack_t is not None and at >= self._rel(self._attack_t):
                self.timeline.add_event(
                    rp.ALERT_RECEIVED, at, incident=rem.incident, state=rem.state
                )
        step = self._follow_workflow()
        if self.hardened is not None and traffic_now.version == self.hardened and phase != "clean":
            self.timeline.add_event(rp.HARDENED_SERVING, t, version=self.hardened)
        sample = rp.Sample(
            t=t,
            phase=phase,
            version=traffic_now.version,
            accuracy=None if traffic_now.accuracy is None else round(traffic_now.accuracy, 4),
            n=traffic_now.n,
            entropy=_round(_observed(lambda: obs.level("robustloop_prediction_entropy"), None)),
            squeeze=_round(_observed(lambda: obs.level("robustloop_squeeze_score"), None)),
            alerts=alerts,
            workflow_step=step,
        )
        self.timeline.add_sample(sample)
        acc = "  -  " if sample.accuracy is None else f"{sample.accuracy:.3f}"
        self.echo(
            f"[{t:6.1f}s] {phase:<6} serving={sample.version or '?'} acc={acc} "
            f"(n={sample.n}) alerts={','.join(alerts) or '-'} workflow={step or '-'}"
        )
        return sample

    def _begin_attack(self, mode: str, unix: float) -> None:
        """The attacked traffic has begun: record it and stop the clean client."""
        self._attack_t = unix
        self.phase = "attack" if self.options.scenario == "attack" else "drift"
        kind = rp.ATTACK_START if self.options.scenario == "attack" else rp.DRIFT_START
        eps = self.options.eps if mode != "noise" else None
        fraction = self.options.attack_fraction if mode != "noise" else None
        self.timeline.add_event(kind, self._rel(unix), mode=mode, eps=eps, attack_fraction=fraction)
        self._stop_traffic("clean")
        self.echo(
            f"{self.phase} starts: mode={mode}"
            + (f" eps={eps:g}" if eps else "")
            + (f" attack_fraction={fraction:g}" if fraction is not None else "")
        )

    def _follow_workflow(self) -> str | None:
        """Record workflow start, gate decision and promotion; return the current step."""
        runs = self.observer.runs()
        if not runs:
            return None
        obj, summary = runs[-1]
        self._workflow = {"name": summary.name, "phase": summary.phase, "message": summary.message}
        self.timeline.add_event(rp.WORKFLOW_START, self._rel(started_at(obj)), name=summary.name)
        if summary.gate_passed is not None and self.timeline.first(rp.GATE_DECISION) is None:
            self._gate = gate_figures(node_outputs(obj, GATE_TASK))
            self.timeline.add_event(
                rp.GATE_DECISION,
                self._rel(node_finished_at(obj, GATE_TASK)),
                passed=summary.gate_passed,
            )
            verdict = "passed" if summary.gate_passed else "REJECTED"
            self.echo(f"gate {verdict}: " + "; ".join(self._gate.get("reasons") or []))
        if summary.promoted_version and self.hardened is None:
            hardened = self.hardened = summary.promoted_version
            # The promote step flips the production pointer first and recalibrates after, so
            # its finish comes late: the store's history says when production changed, and the
            # samples say when the hardened model first answered the attacked traffic.
            at = self._promoted_at(hardened) or node_finished_at(obj, PROMOTE_TASK)
            self.timeline.add_event(rp.PROMOTION, self._rel(at), version=hardened)
            first = next(
                (x for x in self.timeline.samples if x.phase != "clean" and x.version == hardened),
                None,
            )
            if first is not None:
                self.timeline.add_event(rp.HARDENED_SERVING, first.t, version=hardened)
            self.echo(f"promoted {hardened}")
        return running_step(obj)

    def _promoted_at(self, version: str) -> float | None:
        """When production last became ``version`` (unix seconds), from the store's history."""
        from training import ModelStore

        history = ModelStore(self.stack.folder.config.store.path).history()
        times = [
            parse_time(entry.get("at"))
            for entry in history
            if entry.get("to") == version and entry.get("action") == "promote"
        ]
        known = [t for t in times if t is not None]
        return known[-1] if known else None

    # -- the scenario --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run the scenario to its end and write the report; returns the summary."""
        try:
            self._run()
        except KeyboardInterrupt:
            self.echo("interrupted: writing the report of what happened so far")
            self.finish(interrupted=True)
            raise
        return self.finish()

    def _run(self) -> None:
        opts = self.options
        attack_mode = opts.attack if opts.scenario == "attack" else "noise"
        try:
            self._clean_phase()
            if opts.scenario == "clean":
                return
            self._start_traffic(attack_mode, opts.attack_seconds + 120)
            self.echo(f"starting the {attack_mode} client")
            self._ticks_until(
                lambda: self._attack_t is not None,
                self.stack.cfg.stack.ready_timeout_seconds,
                attack_mode,
                f"the {attack_mode} client answered nothing",
            )
            assert self._attack_t is not None
            deadline = self._attack_t + opts.attack_seconds
            while time.time() < deadline:
                tick = time.monotonic()
                self._tick(attack_mode)
                if opts.scenario == "attack" and self._attack_over():
                    break
                time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
            else:
                if opts.scenario == "attack":
                    self.timeline.add_event(rp.TIMEOUT, self._now(), seconds=opts.attack_seconds)
                    self.echo(f"timeout: not recovered {opts.attack_seconds:g} s after the attack")
        finally:
            for mode in list(self._traffic):
                self._stop_traffic(mode)

    def _clean_phase(self) -> None:
        """Clean traffic for ``clean_seconds``, counted from its first answered second."""
        seconds = self.options.clean_seconds
        clean = self._start_traffic("clean", seconds + self.stack.cfg.stack.ready_timeout_seconds)
        self.echo(f"clean phase: {seconds:g} s of clean traffic")
        self._ticks_until(
            lambda: clean.first_t is not None,
            self.stack.cfg.stack.ready_timeout_seconds,
            None,
            "the clean client answered nothing",
        )
        assert clean.first_t is not None
        end = clean.first_t + seconds
        self._ticks_until(lambda: time.time() >= end, seconds + 5, None, "")

    def _ticks_until(
        self, done: Callable[[], bool], timeout: float, attack_mode: str | None, failure: str
    ) -> None:
        """Tick once a second until ``done()``; raise StackError(``failure``) at the timeout."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                if not failure:
                    return
                raise StackError(
                    f"{failure} within {timeout:.0f} s (see the logs in {self.stack.folder.logs})"
                )
            tick = time.monotonic()
            self._tick(attack_mode)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))

    def _attack_over(self) -> bool:
        seconds = self.options.recovery_window
        window, complete = rp.recovery_window(self.timeline, self.hardened, seconds)
        if complete:
            accuracy = rp.weighted_accuracy(window)
            wanted = self.options.recovered_accuracy
            if accuracy is not None and accuracy >= wanted:
                self.timeline.add_event(rp.RECOVERED, self._now(), version=self.hardened)
                self.echo(
                    f"recovered: {self.hardened} answered {accuracy:.3f} of the attacked traffic "
                    f"in its first {seconds:g} s (>= {wanted:g})"
                )
            else:
                shown = "none" if accuracy is None else f"{accuracy:.3f}"
                self.echo(
                    f"not recovered: {self.hardened} answered {shown} of the attacked "
                    f"traffic in its first {seconds:g} s (< {wanted:g})"
                )
            return True
        wf = self._workflow or {}
        if self.hardened is None and wf.get("phase") in FINISHED_PHASES:
            self.echo(
                f"the remediation {wf.get('name')} ended ({wf.get('phase')}) without a "
                f"promotion: {wf.get('message') or 'see robustloop runs show'}"
            )
            return True
        return False

    def finish(self, interrupted: bool = False) -> dict[str, Any]:
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
        summary["interrupted"] = interrupted
        if self.options.scenario == "attack":
            summary["attack"] = self.options.attack
            summary["attack_fraction"] = self.options.attack_fraction
        # False alarms: alerts firing, or reaching the receiver, before the attack began.
        summary["alerts_during_clean"] = sorted(self._clean_alerts)
        attack_t = self._attack_t if self._attack_t is not None else time.time()
        remediations = _observed(self.observer.remediations, _NO_REMEDIATIONS)
        summary["incidents_during_clean"] = sum(
            1 for rem in remediations if rem.received_at is not None and rem.received_at < attack_t
        )
        # Which alerts started the workflows (the receiver's incidents that name one).
        summary["remediated_by"] = sorted(
            {str(rem.raw.get("alertname") or "?") for rem in remediations if rem.workflow}
        )
        rp.write_report(self.report_dir, self.timeline, summary)
        return summary


def gate_figures(outputs: dict[str, str]) -> dict[str, Any]:
    """The gate's decision as flat figures (accuracies, differences, reasons) for the report."""
    figures: dict[str, Any] = {"passed": outputs.get("passed") == "true"}
    try:
        decision = json.loads(outputs.get("decision") or "{}")
    except json.JSONDecodeError:
        figures["decision"] = outputs.get("decision")
        return figures
    metrics = decision.get("metrics") or {}
    for key in ("n", "eps", "alpha"):
        if key in metrics:
            figures[key] = metrics[key]
    attack = metrics.get("attack") or {}
    if attack:
        figures["attack"] = f"{attack.get('name')}-{attack.get('steps')} x{attack.get('restarts')}"
    for part in ("clean", "robust"):
        m = metrics.get(part) or {}
        for key in ("baseline_accuracy", "candidate_accuracy", "difference"):
            if key in m:
                figures[f"{part}_{key}"] = round(float(m[key]), 4)
    figures["reasons"] = list(decision.get("reasons") or [])
    for key in ("baseline", "candidate"):
        if key in decision:
            figures[key] = decision[key]
    return figures


T = TypeVar("T")
_NO_REMEDIATIONS: list[Remediation] = []


def _observed(read: Callable[[], T], default: T) -> T:
    """One observation; a failed HTTP read (a loaded machine, a slow answer) is logged and
    counts as no data for this second, rather than ending the demo. A dead process is caught by
    the supervisor's liveness check instead."""
    try:
        return read()
    except (requests.RequestException, PrometheusApiClientException, ValueError) as exc:
        log.warning("observation failed this second (%s: %s)", type(exc).__name__, exc)
        return default


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


__all__ = ["ScenarioOptions", "ScenarioRunner", "gate_figures"]
