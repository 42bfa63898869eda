"""Does the live loop catch an attacker who attacks only part of the traffic?

Runs ``robustloop demo`` once per attacker (``--attacks``: fgsm, pgd, bpda, square) and attack
fraction (``--fractions``: 1.0 0.5 0.25 0.1 — the share of the attacker's requests that are
attacked; the rest go clean, diluting every windowed signal), plus the ``clean`` and ``drift``
scenarios as controls. Each run is a subprocess with its own run folder, report folder, outbox
and workflow runs in a temporary work folder; the demo starts its own stack (real Prometheus and
Alertmanager, model server, receiver, local executor) and stops it. With ``--quick`` each run
trains its own small baseline (``demo --quick``); without, the runs share one store
(``--store``, default in the work folder), whose baseline the first run trains and every run
starts from.

Printed after the machine header:

1. One row per run, read from its ``summary.json`` and ``timeline.jsonl``: detected (an alert
   reached the receiver after the attack or drift began), time to detect (attack start to that
   alert, the summary's ``time_to_detect_s``), time to the first alert firing in Prometheus,
   the alerts that fired (after the attack began; for the clean control, during the run), whether
   a remediation started, the accuracy lost before detection, time to recover, accuracy after.
   The accuracy lost is sum over the seconds from attack start to detection of
   ``n x max(0, accuracy_before - accuracy)``, from the per-second samples (``n`` labelled
   images answered that second): the expected number of extra misclassified images the attacker
   got through before the loop noticed. An attack never detected sums over the whole time the
   undefended model answered it (marked "never detected").
2. Calibration, per alert of a signal: the false-alarm rate (windows of clean traffic during
   which the alert fired at some second), the rate it fires on natural drift, and the detection
   rate (windows of attacked traffic answered by the undefended model during which it fired),
   over all attacks and per attack fraction, each with a 95% Wilson interval. Windows are
   consecutive ``--window`` seconds from each phase's start (a trailing window shorter than half
   of that is dropped). What is measured is the alert, as the driver saw it in Prometheus's
   ``ALERTS`` once a second: the signal judged at the configured threshold, window and ``for:``
   of the rules the run folder rendered (calibrated to the baseline). The per-second entropy and
   squeeze levels of the samples are means over a shorter range than the rules' windows, so they
   are not thresholded here.

Run from the repository root::

    .venv/bin/python bench/detection_adaptive.py --quick --out results-adaptive.md

A full run is one demo per attacker and fraction plus two controls: with the default phases
(30 s clean, recovery or a 600 s timeout) an hour or more on 2 cores. Not a test: the table
logic is unit-tested in tests/test_bench_adaptive.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _machine import describe_machine, machine_header

REPO = Path(__file__).resolve().parent.parent
ATTACKS = ("fgsm", "pgd", "bpda", "square")
"""The demo's attackers (``robustloop demo --attack``)."""
FRACTIONS = (1.0, 0.5, 0.25, 0.1)

# Event kinds and phases of robustloop/stack/report.py (the test checks they agree; bench/ does
# not import robustloop.stack, whose imports would find bench/serving.py before the package).
ATTACK_START = "attack_start"
DRIFT_START = "drift_start"
ALERT_FIRING = "alert_firing"
HARDENED_SERVING = "hardened_serving"
ATTACKED_PHASES = ("attack", "drift")

SIGNAL_ALERTS = (
    ("entropy", "PredictionEntropyShift"),
    ("squeeze", "AdversarialInputSuspected"),
    ("canary + squeeze", "AdversarialAttackDetected"),
    ("canary (labelled)", "CanaryAccuracyDegraded"),
)
"""(signal, the alert that judges it at the configured threshold), label-free signals first."""

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95% interval."""

STARTUP_ALLOWANCE_S = 900.0
"""Wall seconds a run may take beyond its phases: the baseline, calibration, the stack's start."""


# -- statistics ----------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion ``k / n`` (None where ``n`` is 0).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or ``n``
    successes, which matters for false-alarm counts that are mostly zero.
    """
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"k={k} is not in [0, n={n}]")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact at the ends (rounding would leave 0.9999999999999999 at k = n)
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


# -- one run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One demo run: a scenario, and for ``attack`` the attacker and its attack fraction."""

    scenario: str
    attack: str | None = None
    fraction: float | None = None

    @property
    def label(self) -> str:
        if self.scenario == "attack":
            return f"{self.attack}"
        return f"{self.scenario} (control)"

    @property
    def slug(self) -> str:
        """A folder name for the run."""
        if self.scenario == "attack":
            return f"{self.attack}-f{self.fraction:g}"
        return self.scenario


def plan(
    attacks: Sequence[str], fractions: Sequence[float], controls: bool = True
) -> list[RunSpec]:
    """Every attacker at every fraction (largest first), then the clean and drift controls."""
    runs = [RunSpec("attack", a, f) for a in attacks for f in sorted(set(fractions), reverse=True)]
    if controls:
        runs += [RunSpec("clean"), RunSpec("drift")]
    return runs


def split_records(
    records: Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Samples and events of ``timeline.jsonl`` records (``type`` sample or event)."""
    samples: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for record in records:
        if record.get("type") == "sample":
            samples.append(record)
        elif record.get("type") == "event":
            events.append(record)
    return samples, events


def first_event(events: Sequence[dict[str, Any]], *kinds: str) -> dict[str, Any] | None:
    """The first event of any of ``kinds`` (the timeline records each kind once)."""
    return next((e for e in events if e.get("kind") in kinds), None)


def accuracy_lost(
    samples: Sequence[dict[str, Any]], clean_accuracy: float, start: float, end: float
) -> float:
    """Sum over the samples with ``start < t <= end`` (attacked phases) of
    ``n x max(0, clean_accuracy - accuracy)``: images the attack turned wrong in that span.

    A sample at ``t`` reports the traffic of the second before ``t``; seconds without a labelled
    answer count nothing.
    """
    lost = 0.0
    for s in samples:
        accuracy = s.get("accuracy")
        if s.get("phase") not in ATTACKED_PHASES or accuracy is None:
            continue
        if start < float(s["t"]) <= end:
            lost += int(s.get("n") or 0) * max(0.0, clean_accuracy - float(accuracy))
    return lost


def alerts_after(samples: Sequence[dict[str, Any]], start: float | None) -> list[str]:
    """Names of the alerts firing at some sample at or after ``start`` (None: any sample)."""
    return sorted(
        {
            name
            for s in samples
            if start is None or float(s["t"]) >= start
            for name in s.get("alerts") or []
        }
    )


@dataclass
class RunRow:
    """The figures of one run, as the table shows them (None: does not apply or did not happen)."""

    label: str
    scenario: str
    fraction: float | None
    detected: bool | None
    time_to_detect_s: float | None
    first_alert_s: float | None
    alerts: list[str]
    remediation_started: bool
    lost: float | None
    lost_until: str
    """``detection``, or ``never detected`` (the sum covers the whole undefended attack)."""
    time_to_recover_s: float | None
    accuracy_before: float | None
    accuracy_under_attack: float | None
    accuracy_after: float | None
    failure: str | None = None
    """Why the run has no figures (the demo failed before writing its report), else None."""


def run_row(
    spec: RunSpec,
    summary: dict[str, Any],
    samples: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
) -> RunRow:
    """The table row of one run from its summary and timeline."""
    start_event = first_event(events, ATTACK_START, DRIFT_START)
    start = None if start_event is None else float(start_event["t"])
    detect = summary.get("time_to_detect_s")
    firing = first_event(events, ALERT_FIRING)
    first_alert = None
    if firing is not None and start is not None:
        first_alert = round(float(firing["t"]) - start, 2)
    alerts = alerts_after(samples, start)
    if firing is not None:
        alerts = sorted(set(alerts) | set(firing.get("detail", {}).get("alerts") or []))
    before = summary.get("accuracy_before")
    lost: float | None = None
    lost_until = "—"
    if start is not None and before is not None:
        serving = first_event(events, HARDENED_SERVING)
        if detect is not None:
            end, lost_until = start + float(detect), "detection"
        else:
            end = float(serving["t"]) if serving is not None else math.inf
            lost_until = "never detected"
        lost = round(accuracy_lost(samples, float(before), start, end), 1)
    return RunRow(
        label=spec.label,
        scenario=spec.scenario,
        fraction=spec.fraction,
        detected=None if start is None else detect is not None,
        time_to_detect_s=detect,
        first_alert_s=first_alert,
        alerts=alerts,
        remediation_started=bool(summary.get("remediation_started")),
        lost=lost,
        lost_until=lost_until,
        time_to_recover_s=summary.get("time_to_recover_s"),
        accuracy_before=before,
        accuracy_under_attack=summary.get("accuracy_under_attack"),
        accuracy_after=summary.get("accuracy_after"),
    )


def failed_row(spec: RunSpec, failure: str) -> RunRow:
    """The row of a run that left no report."""
    return RunRow(
        label=spec.label,
        scenario=spec.scenario,
        fraction=spec.fraction,
        detected=None,
        time_to_detect_s=None,
        first_alert_s=None,
        alerts=[],
        remediation_started=False,
        lost=None,
        lost_until="—",
        time_to_recover_s=None,
        accuracy_before=None,
        accuracy_under_attack=None,
        accuracy_after=None,
        failure=failure,
    )


# -- calibration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """``seconds`` of one phase of one run, and the alerts that fired at some second of it."""

    kind: str
    """``clean``, ``attack`` (answered by the undefended model) or ``drift``."""
    fraction: float | None
    start: float
    seconds: float
    alerts: frozenset[str] = field(default_factory=frozenset)


def phase_windows(
    samples: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    window_s: float,
    fraction: float | None = None,
) -> list[Window]:
    """Consecutive ``window_s`` windows of each phase of one run, from the phase's first sample.

    Attacked seconds count only while the undefended model answered them (before the hardened
    model served): after that the detectors judge another model. A trailing window that covers
    less than half of ``window_s`` is dropped.
    """
    serving = first_event(events, HARDENED_SERVING)
    cutoff = math.inf if serving is None else float(serving["t"])
    by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        phase = str(s.get("phase"))
        if phase in ATTACKED_PHASES and float(s["t"]) >= cutoff:
            continue
        by_phase[phase].append(s)
    windows: list[Window] = []
    for phase, members in by_phase.items():
        origin = float(members[0]["t"])
        groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for s in members:
            groups[int((float(s["t"]) - origin) // window_s)].append(s)
        for index in sorted(groups):
            group = groups[index]
            covered = float(group[-1]["t"]) - float(group[0]["t"]) + 1.0
            if covered < window_s / 2:
                continue
            fired = frozenset(name for s in group for name in s.get("alerts") or [])
            windows.append(
                Window(
                    kind=phase,
                    fraction=fraction if phase == "attack" else None,
                    start=origin + index * window_s,
                    seconds=covered,
                    alerts=fired,
                )
            )
    return windows


@dataclass(frozen=True)
class Rate:
    """How often an alert fired over a set of windows, with its 95% Wilson interval."""

    signal: str
    alert: str
    measure: str
    fired: int
    windows: int

    @property
    def rate(self) -> float | None:
        return None if self.windows == 0 else self.fired / self.windows

    @property
    def ci95(self) -> tuple[float, float] | None:
        return wilson(self.fired, self.windows)


def calibration(windows: Sequence[Window]) -> list[Rate]:
    """Per alert of :data:`SIGNAL_ALERTS`: false alarms on clean windows, firing on drift,
    detection on attacked windows (all, then per attack fraction, largest first)."""
    groups: list[tuple[str, list[Window]]] = [
        ("false alarm (clean)", [w for w in windows if w.kind == "clean"]),
        ("fires on drift", [w for w in windows if w.kind == "drift"]),
        ("detection (all attacks)", [w for w in windows if w.kind == "attack"]),
    ]
    fractions = sorted({w.fraction for w in windows if w.kind == "attack" and w.fraction})
    for f in reversed(fractions):
        groups.append((f"detection (F={f:g})", [w for w in windows if w.fraction == f]))
    return [
        Rate(signal, alert, measure, sum(alert in w.alerts for w in members), len(members))
        for signal, alert in SIGNAL_ALERTS
        for measure, members in groups
    ]


# -- rendering -----------------------------------------------------------------------------------

RUN_COLUMNS = (
    "run",
    "F",
    "detected",
    "detect s",
    "1st alert s",
    "alerts fired",
    "remediation",
    "lost before detection",
    "recover s",
    "acc before",
    "acc under",
    "acc after",
)
RATE_COLUMNS = ("signal", "alert", "measure", "fired/windows", "rate", "95% CI")


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def run_cells(row: RunRow) -> list[str]:
    """The cells of one run's row, in :data:`RUN_COLUMNS` order."""
    fraction = "—" if row.fraction is None else f"{row.fraction:g}"
    if row.failure is not None:
        return [row.label, fraction, f"failed: {row.failure}"] + ["—"] * (len(RUN_COLUMNS) - 3)
    detected = {None: "—", True: "yes", False: "no"}[row.detected]
    alerts = ", ".join(row.alerts) if row.alerts else "never alerted"
    if row.lost is None:
        lost = "—"
    elif row.lost_until == "detection":
        lost = f"{row.lost:.1f}"
    else:
        lost = f"{row.lost:.1f} ({row.lost_until})"
    return [
        row.label,
        fraction,
        detected,
        _num(row.time_to_detect_s),
        _num(row.first_alert_s),
        alerts,
        "started" if row.remediation_started else "none",
        lost,
        _num(row.time_to_recover_s),
        _num(row.accuracy_before, 3),
        _num(row.accuracy_under_attack, 3),
        _num(row.accuracy_after, 3),
    ]


def rate_cells(rate: Rate) -> list[str]:
    """The cells of one calibration row, in :data:`RATE_COLUMNS` order."""
    ci = rate.ci95
    return [
        rate.signal,
        rate.alert,
        rate.measure,
        f"{rate.fired}/{rate.windows}",
        "—" if rate.rate is None else f"{rate.rate:.2f}",
        "—" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]",
    ]


def text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, separated by two spaces."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table (``|`` in a cell escaped)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(columns), line(["---"] * len(columns)), *map(line, rows)])


def render(
    rows: Sequence[RunRow], rates: Sequence[Rate], window_s: float, markdown: bool = False
) -> str:
    """Both tables, as text or Markdown, with a line that says what each one measures."""
    table = markdown_table if markdown else text_table
    run_note = (
        "detected: an alert reached the receiver after the attack (or drift) began; lost before "
        "detection: sum over those seconds of images x (accuracy before - accuracy), at least 0"
    )
    rate_note = (
        f"per {window_s:g} s window of each phase: an alert firing at some second of a clean "
        "window is a false alarm, of an attacked window (undefended model) a detection; 95% "
        "Wilson intervals"
    )
    if markdown:
        parts = ["## Runs", "", run_note, "", table(RUN_COLUMNS, [run_cells(r) for r in rows])]
        parts += ["", "## Calibration", "", rate_note, ""]
        parts += [table(RATE_COLUMNS, [rate_cells(r) for r in rates])]
    else:
        parts = [f"# {run_note}", table(RUN_COLUMNS, [run_cells(r) for r in rows]), ""]
        parts += [f"# {rate_note}", table(RATE_COLUMNS, [rate_cells(r) for r in rates])]
    return "\n".join(parts) + "\n"


# -- running the demo ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What every run shares (the command line)."""

    quick: bool
    timeout: float | None
    clean_seconds: float | None
    drift_seconds: float | None
    control_clean_seconds: float | None
    store: Path | None
    window_s: float = 30.0


def demo_argv(spec: RunSpec, config: Path, report_dir: Path, settings: Settings) -> list[str]:
    """The ``robustloop demo`` command line of one run."""
    argv = [sys.executable, "-m", "robustloop", "--config", str(config), "demo", "--fresh"]
    argv += ["--scenario", spec.scenario, "--report-dir", str(report_dir)]
    if settings.quick:
        argv.append("--quick")
    clean = settings.clean_seconds
    if spec.scenario == "attack":
        argv += ["--attack", str(spec.attack), "--attack-fraction", f"{spec.fraction:g}"]
        if settings.timeout is not None:
            argv += ["--timeout", f"{settings.timeout:g}"]
    elif spec.scenario == "drift" and settings.drift_seconds is not None:
        argv += ["--drift-seconds", f"{settings.drift_seconds:g}"]
    elif spec.scenario == "clean" and settings.control_clean_seconds is not None:
        clean = settings.control_clean_seconds
    if clean is not None:
        argv += ["--clean-seconds", f"{clean:g}"]
    return argv


def run_config(base: Path | None, run_dir: Path, store: Path | None) -> Path:
    """Write the run's config: ``base`` (or the defaults) with its stack folder, outbox and
    workflow runs inside ``run_dir``, and the store at ``store`` when given."""
    from robustloop.config import RobustloopConfig, dump_config, load_config

    cfg = load_config(base) if base is not None else RobustloopConfig()
    cfg.stack.run_dir = run_dir / "run"
    cfg.webhook.db_path = run_dir / "webhook.sqlite3"
    cfg.submitter.runs_dir = run_dir / "runs"
    if store is not None:
        cfg.store.path = store
    path = run_dir / "robustloop.yaml"
    path.write_text(dump_config(cfg), encoding="utf-8")
    return path


def run_demo(
    spec: RunSpec, work: Path, base: Path | None, settings: Settings, wall_s: float
) -> tuple[RunRow, list[Window]]:
    """Run one demo to its end (SIGTERM at ``wall_s``: the demo then stops its stack and writes
    the report so far) and read its report."""
    run_dir = work / spec.slug
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    config = run_config(base, run_dir, settings.store)
    report = run_dir / "report"
    argv = demo_argv(spec, config, report, settings)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
    )
    log = run_dir / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
        try:
            returncode = proc.wait(wall_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(120)
        except KeyboardInterrupt:
            # SIGTERM lets the demo stop its whole stack (it would outlive this process).
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            raise
    summary_path = report / "summary.json"
    if not summary_path.exists():
        return failed_row(spec, f"exit {returncode}, no report (log: {log})"), []
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    records = [
        json.loads(line)
        for line in (report / "timeline.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    samples, events = split_records(records)
    row = run_row(spec, summary, samples, events)
    if summary.get("interrupted"):
        row.label += " (stopped at the wall limit)"
    return row, phase_windows(samples, events, settings.window_s, spec.fraction)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--config", type=Path, default=None, help="base config (default: defaults)")
    p.add_argument(
        "--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS), help="attackers to run"
    )
    p.add_argument(
        "--fractions",
        nargs="+",
        type=_fraction,
        default=list(FRACTIONS),
        help="attack fractions in (0, 1]: the share of the attacker's requests that are attacked",
    )
    p.add_argument("--no-controls", action="store_true", help="skip the clean and drift runs")
    p.add_argument("--quick", action="store_true", help="demo --quick (small model, short phases)")
    p.add_argument("--timeout", type=_positive, default=None, help="demo --timeout of each attack")
    p.add_argument("--clean-seconds", type=_positive, default=None, help="demo --clean-seconds")
    p.add_argument("--drift-seconds", type=_positive, default=None, help="demo --drift-seconds")
    p.add_argument(
        "--control-clean-seconds",
        type=_positive,
        default=None,
        help="clean traffic of the clean control (default 300, 60 with --quick): its windows "
        "are most of the false-alarm evidence",
    )
    p.add_argument("--window", type=_positive, default=30.0, help="calibration window (s)")
    p.add_argument("--store", type=Path, default=None, help="shared model store (not with --quick)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the runs here (default tmp)")
    p.add_argument("--out", type=Path, default=None, help="also write the tables as Markdown")
    p.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    return p


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
    return value


def _hardening_precision(config: Path | None) -> str:
    """The remediation's precision setting, as the header names it (``auto`` picks bf16 where
    the header says native bf16)."""
    from robustloop.config import RobustloopConfig, load_config

    cfg = load_config(config) if config is not None else RobustloopConfig()
    return f"remediation.precision {cfg.remediation.precision}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if args.store is not None and args.quick:
        print("--store does not apply with --quick (each run trains its own)", file=sys.stderr)
        return 2
    control = args.control_clean_seconds or (60.0 if args.quick else 300.0)
    keep = args.work_dir is not None
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="robustloop-adaptive-"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = None if args.quick else (args.store or work / "store").resolve()
    settings = Settings(
        args.quick,
        args.timeout,
        args.clean_seconds,
        args.drift_seconds,
        control,
        store,
        args.window,
    )
    precision = f"serving fp32, hardening {_hardening_precision(args.config)}"
    header = machine_header(precision=precision)
    if not args.json:
        print(header, flush=True)
    demo_timeout = args.timeout or (240.0 if args.quick else 600.0)
    wall_s = demo_timeout + max(control, args.drift_seconds or 120.0) + STARTUP_ALLOWANCE_S
    specs = plan(args.attacks, args.fractions, controls=not args.no_controls)
    rows: list[RunRow] = []
    windows: list[Window] = []
    try:
        for i, spec in enumerate(specs, 1):
            started = time.monotonic()
            print(f"run {i}/{len(specs)}: {spec.slug} ...", file=sys.stderr, flush=True)
            row, found = run_demo(spec, work, args.config, settings, wall_s)
            rows.append(row)
            windows += found
            print(
                f"run {i}/{len(specs)}: {spec.slug} done in {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    except KeyboardInterrupt:
        print(f"interrupted: the tables hold the {len(rows)} finished runs", file=sys.stderr)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    rates = calibration(windows)
    if args.json:
        document = {
            "machine": describe_machine(precision=precision),
            "window_s": args.window,
            "runs": [asdict(r) for r in rows],
            "calibration": [{**asdict(r), "rate": r.rate, "ci95": r.ci95} for r in rates],
        }
        print(json.dumps(document, indent=2))
    else:
        print(render(rows, rates, args.window))
    if args.out is not None:
        text = "# Live detection against partial attacks\n\n```text\n" + header + "\n```\n\n"
        args.out.write_text(text + render(rows, rates, args.window, markdown=True), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
