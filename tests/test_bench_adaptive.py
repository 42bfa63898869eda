"""The tables of bench/detection_adaptive.py, from timelines shaped like the demo's own.

The synthetic runs are built with the report's own classes (``Sample``, ``Event``, ``Timeline``,
``summarise``) and written as ``timeline.jsonl`` records, so their shape is the real one.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from robustloop.stack import report as rp

BENCH = Path(__file__).resolve().parent.parent / "bench"

DETECTED = "AdversarialAttackDetected"
ENTROPY = "PredictionEntropyShift"


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/<name>.py as a module, registered under its name for this test only (dataclasses
    look their module up there), without putting bench/ on sys.path."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/detection_adaptive.py, finding its helper as it does when run as a script."""
    _load("_machine", monkeypatch)
    return _load("detection_adaptive", monkeypatch)


Attacked = list[tuple[float, list[str]]]
"""Per attacked second: the accuracy, the alerts firing."""
Run = tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]


def _run(
    bench: ModuleType,
    attacked: Attacked,
    *,
    clean_alerts: dict[int, list[str]] | None = None,
    received_at: float | None = None,
    hardened_at: float | None = None,
    scenario: str = "attack",
) -> Run:
    """A run as (summary, samples, events): 10 s of clean traffic at accuracy 0.9 (t = 1..10),
    then one sample a second per ``attacked`` entry (accuracy, alerts) from t = 11; the attack
    (or drift) starts at t = 10, an alert reaches the receiver at ``received_at``, the hardened
    model serves from ``hardened_at``."""
    timeline = rp.Timeline()
    for second in range(1, 11):
        alerts = (clean_alerts or {}).get(second, [])
        timeline.add_sample(
            rp.Sample(t=float(second), phase="clean", accuracy=0.9, n=10, alerts=alerts)
        )
    if scenario != "clean":
        phase = "attack" if scenario == "attack" else "drift"
        kind = rp.ATTACK_START if scenario == "attack" else rp.DRIFT_START
        timeline.add_event(kind, 10.0, mode="fgsm")
        for i, (accuracy, alerts) in enumerate(attacked):
            t = 11.0 + i
            version = "v2" if hardened_at is not None and t >= hardened_at else "v1"
            timeline.add_sample(
                rp.Sample(t=t, phase=phase, version=version, accuracy=accuracy, n=10, alerts=alerts)
            )
            if alerts:
                timeline.add_event(rp.ALERT_FIRING, t, alerts=alerts)
        if received_at is not None:
            timeline.add_event(rp.ALERT_RECEIVED, received_at, incident="i1", state="submitted")
        if hardened_at is not None:
            timeline.add_event(rp.HARDENED_SERVING, hardened_at, version="v2")
    summary = rp.summarise(
        timeline,
        scenario=scenario,
        eps=0.1,
        recovery_window_s=5.0,
        versions={"baseline": "v1", "hardened": "v2" if hardened_at is not None else None},
        remediation_started=received_at is not None,
    )
    records = [{"type": "sample", **asdict(s)} for s in timeline.samples]
    records += [{"type": "event", **asdict(e)} for e in timeline.events]
    samples, events = bench.split_records(records)
    return summary, samples, events


# -- the Wilson interval ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, table I, method 3 (score, no
        # continuity correction)
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_published_values(
    bench: ModuleType, k: int, n: int, low: float, high: float
) -> None:
    lo, hi = bench.wilson(k, n)
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_wilson_is_symmetric_and_bounded(bench: ModuleType) -> None:
    lo, hi = bench.wilson(3, 10)
    lo2, hi2 = bench.wilson(7, 10)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert bench.wilson(10, 10)[1] == 1.0 and bench.wilson(0, 10)[0] == 0.0
    assert bench.wilson(0, 0) is None
    with pytest.raises(ValueError, match="not in"):
        bench.wilson(11, 10)


def test_event_kinds_agree_with_the_report(bench: ModuleType) -> None:
    assert bench.ATTACK_START == rp.ATTACK_START
    assert bench.DRIFT_START == rp.DRIFT_START
    assert bench.ALERT_FIRING == rp.ALERT_FIRING
    assert bench.HARDENED_SERVING == rp.HARDENED_SERVING


# -- the run rows ----------------------------------------------------------------------------


def test_detected_attack_row(bench: ModuleType) -> None:
    # GIVEN an attack at t=10 whose alert fires at t=14 and reaches the receiver at t=15, one
    # second above clean accuracy (counts nothing), an entropy false alarm before the attack
    attacked = [(0.3, []), (0.3, []), (0.95, []), (0.3, [DETECTED]), (0.3, [DETECTED])]
    attacked += [(0.3, [DETECTED])] * 10 + [(0.8, [])] * 10
    summary, samples, events = _run(
        bench, attacked, clean_alerts={5: [ENTROPY]}, received_at=15.0, hardened_at=26.0
    )
    spec = bench.RunSpec("attack", "fgsm", 0.5)
    # WHEN the row is made
    row = bench.run_row(spec, summary, samples, events)
    # THEN the detection, the alerts after the attack and the accuracy lost until detection
    assert row.detected is True
    assert row.time_to_detect_s == 5.0
    assert row.first_alert_s == 4.0
    assert row.alerts == [DETECTED]
    assert row.lost == pytest.approx(4 * 10 * (0.9 - 0.3))  # t = 11..15, t=13 clamped at 0
    assert row.lost_until == "detection"
    assert row.time_to_recover_s == 16.0
    assert row.accuracy_after == 0.8
    cells = bench.run_cells(row)
    assert cells[:6] == ["fgsm", "0.5", "yes", "5.0", "4.0", DETECTED]
    assert cells[6:8] == ["started", "24.0"]


def test_never_alerted_attack_says_so(bench: ModuleType) -> None:
    # GIVEN an attack that no alert noticed in 20 s
    summary, samples, events = _run(bench, [(0.5, [])] * 20)
    row = bench.run_row(bench.RunSpec("attack", "square", 0.1), summary, samples, events)
    # THEN it was not detected, the loss covers the whole attack, and the table says so plainly
    assert row.detected is False and row.alerts == []
    assert row.lost == pytest.approx(20 * 10 * 0.4)
    cells = bench.run_cells(row)
    assert cells[2] == "no" and cells[5] == "never alerted" and cells[6] == "none"
    assert cells[7] == "80.0 (never detected)"


def test_clean_control_row(bench: ModuleType) -> None:
    summary, samples, events = _run(bench, [], scenario="clean", clean_alerts={3: [ENTROPY]})
    row = bench.run_row(bench.RunSpec("clean"), summary, samples, events)
    assert row.detected is None and row.lost is None
    assert row.alerts == [ENTROPY]  # a false alarm is shown, not hidden
    assert bench.run_cells(row)[:3] == ["clean (control)", "—", "—"]
    quiet = bench.run_row(bench.RunSpec("clean"), *_run(bench, [], scenario="clean"))
    assert bench.run_cells(quiet)[5] == "never alerted"


def test_failed_run_row(bench: ModuleType) -> None:
    cells = bench.run_cells(bench.failed_row(bench.RunSpec("drift"), "exit 2, no report"))
    assert cells[2] == "failed: exit 2, no report"
    assert len(cells) == len(bench.RUN_COLUMNS)


# -- calibration -----------------------------------------------------------------------------


def test_windows_and_rates(bench: ModuleType) -> None:
    # GIVEN an attack run: clean t=1..10 with one false alarm at t=7; attacked t=11..24, the
    # alert from t=17, the hardened model from t=21 (its seconds are not judged)
    attacked: Attacked = [(0.3, [])] * 6 + [(0.3, [DETECTED])] * 4 + [(0.9, [])] * 4
    _, samples, events = _run(bench, attacked, clean_alerts={7: [DETECTED]}, hardened_at=21.0)
    # WHEN cut into 5 s windows
    windows = bench.phase_windows(samples, events, 5.0, fraction=0.5)
    # THEN clean 1-5, 6-10; attack 11-15, 16-20 (t=21.. dropped: the hardened model answered)
    assert [(w.kind, w.start) for w in windows] == [
        ("clean", 1.0),
        ("clean", 6.0),
        ("attack", 11.0),
        ("attack", 16.0),
    ]
    assert [DETECTED in w.alerts for w in windows] == [False, True, False, True]
    # AND a drift run adds its windows; a short trailing window (2 s of 5) is dropped
    drift = bench.phase_windows(*_run(bench, [(0.6, [ENTROPY])] * 7, scenario="drift")[1:], 5.0)
    assert [(w.kind, w.seconds) for w in drift] == [("clean", 5.0), ("clean", 5.0), ("drift", 5.0)]
    rates = {(r.alert, r.measure): r for r in bench.calibration(windows + drift)}
    false_alarm = rates[(DETECTED, "false alarm (clean)")]
    assert (false_alarm.fired, false_alarm.windows) == (1, 4)
    assert false_alarm.ci95 == bench.wilson(1, 4)
    detection = rates[(DETECTED, "detection (F=0.5)")]
    assert (detection.fired, detection.windows, detection.rate) == (1, 2, 0.5)
    assert rates[(ENTROPY, "fires on drift")].fired == 1
    assert rates[(ENTROPY, "detection (all attacks)")].fired == 0
    signals = [r.signal for r in bench.calibration(windows)]
    assert signals[0] == "entropy" and "squeeze" in signals


def test_rendered_tables(bench: ModuleType) -> None:
    summary, samples, events = _run(bench, [(0.5, [])] * 10)
    rows = [bench.run_row(bench.RunSpec("attack", "pgd", 0.25), summary, samples, events)]
    rates = bench.calibration(bench.phase_windows(samples, events, 5.0, 0.25))
    text = bench.render(rows, rates, 5.0)
    assert "never alerted" in text and "false alarm (clean)" in text
    markdown = bench.render(rows, rates, 5.0, markdown=True)
    tables = [line for line in markdown.splitlines() if line.startswith("|")]
    assert all(
        line.count(" | ") + 1 in (len(bench.RUN_COLUMNS), len(bench.RATE_COLUMNS))
        for line in tables
    )
    assert "| pgd | 0.25 | no |" in markdown
    assert "[0.00, " in markdown  # the Wilson interval of 0 fired windows


# -- the runs --------------------------------------------------------------------------------


def test_plan_and_demo_command(bench: ModuleType, tmp_path: Path) -> None:
    specs = bench.plan(["fgsm", "square"], [0.1, 1.0, 0.5])
    assert [s.slug for s in specs] == [
        "fgsm-f1", "fgsm-f0.5", "fgsm-f0.1", "square-f1", "square-f0.5", "square-f0.1",
        "clean", "drift",
    ]  # fmt: skip
    settings = bench.Settings(True, 90.0, None, 20.0, 60.0, None)
    argv = bench.demo_argv(specs[1], tmp_path / "c.yaml", tmp_path / "r", settings)
    assert argv[1:] == [
        "-m", "robustloop", "--config", str(tmp_path / "c.yaml"), "demo", "--fresh",
        "--scenario", "attack", "--report-dir", str(tmp_path / "r"), "--quick",
        "--attack", "fgsm", "--attack-fraction", "0.5", "--timeout", "90",
    ]  # fmt: skip
    clean = bench.demo_argv(bench.RunSpec("clean"), tmp_path / "c.yaml", tmp_path / "r", settings)
    assert clean[-2:] == ["--clean-seconds", "60"] and "--attack" not in clean
    drift = bench.demo_argv(bench.RunSpec("drift"), tmp_path / "c.yaml", tmp_path / "r", settings)
    assert drift[-2:] == ["--drift-seconds", "20"]


def test_run_config_keeps_each_run_in_its_folder(bench: ModuleType, tmp_path: Path) -> None:
    from robustloop.config import load_config

    path = bench.run_config(None, tmp_path, tmp_path / "store")
    cfg = load_config(path)
    assert cfg.stack.run_dir == tmp_path / "run"
    assert cfg.webhook.db_path == tmp_path / "webhook.sqlite3"
    assert cfg.submitter.runs_dir == tmp_path / "runs"
    assert cfg.store.path == tmp_path / "store"
