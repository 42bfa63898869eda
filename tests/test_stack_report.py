"""The demo report from a synthetic timeline: the figures, the files, the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustloop.stack import report as rp


def _synthetic(path: Path | None = None) -> rp.Timeline:
    """20 s clean at 0.9, attack at t=20 (0.1), hardened v2 serving from t=50 at 0.75."""
    tl = rp.Timeline(path)
    for t in range(20):
        tl.add_sample(rp.Sample(t=t, phase="clean", version="v1", accuracy=0.9, n=10))
    tl.add_event(rp.ATTACK_START, 20.0, eps=0.1)
    for t in range(20, 50):
        tl.add_sample(
            rp.Sample(
                t=t,
                phase="attack",
                version="v1",
                accuracy=0.1,
                n=10,
                entropy=0.4,
                squeeze=0.3,
                alerts=["CanaryAccuracyDegraded"],
            )
        )
    tl.add_event(rp.ALERT_FIRING, 28.0, alerts=["CanaryAccuracyDegraded"])
    tl.add_event(rp.ALERT_RECEIVED, 29.5)
    tl.add_event(rp.WORKFLOW_START, 30.0, name="rl-x")
    tl.add_event(rp.GATE_DECISION, 46.0, passed=True)
    tl.add_event(rp.PROMOTION, 47.0, version="v2")
    tl.add_event(rp.HARDENED_SERVING, 50.0, version="v2")
    for t in range(50, 70):
        # the first recovery window (9 s from the first answer) is what counts, not later ones
        acc = 0.75 if t < 60 else 0.5
        tl.add_sample(rp.Sample(t=t, phase="attack", version="v2", accuracy=acc, n=10))
    tl.add_event(rp.RECOVERED, 69.0, version="v2")
    return tl


def _summary(tl: rp.Timeline) -> dict:
    return rp.summarise(
        tl,
        scenario="attack",
        eps=0.1,
        recovery_window_s=9.0,
        versions={"baseline": "v1", "hardened": "v2"},
        gate={"passed": "true", "robust_gain": "0.41"},
        remediation_started=True,
    )


def test_summary_figures_come_from_the_right_stretches() -> None:
    summary = _summary(_synthetic())
    assert set(rp.SUMMARY_FIELDS) <= set(summary)
    assert summary["accuracy_before"] == pytest.approx(0.9)
    assert summary["accuracy_under_attack"] == pytest.approx(0.1)
    assert summary["accuracy_after"] == pytest.approx(0.75)
    assert summary["time_to_detect_s"] == pytest.approx(9.5)
    assert summary["time_to_recover_s"] == pytest.approx(30.0)
    assert summary["recovered"] is True
    assert summary["alerts"] == ["CanaryAccuracyDegraded"]


def test_the_recovery_window_is_the_first_one_and_complete_only_once_it_has_elapsed() -> None:
    tl = _synthetic()  # the hardened model v2 answers from t=50 to t=69
    window, complete = rp.recovery_window(tl, "v2", 9.0)
    assert [s.t for s in window] == list(range(50, 60)) and complete
    window, complete = rp.recovery_window(tl, "v2", 25.0)
    assert [s.t for s in window] == list(range(50, 70)) and not complete
    assert rp.recovery_window(tl, "v3", 9.0) == ([], False)


def test_no_hardened_model_means_no_after_figure_and_no_recovery() -> None:
    tl = rp.Timeline()
    tl.add_sample(rp.Sample(t=0, phase="clean", accuracy=0.9, n=5))
    tl.add_event(rp.ATTACK_START, 1.0)
    tl.add_sample(rp.Sample(t=2, phase="attack", accuracy=0.2, n=5))
    tl.add_event(rp.TIMEOUT, 3.0)
    summary = rp.summarise(
        tl, scenario="attack", eps=0.1, recovery_window_s=5, versions={"baseline": "v1"}
    )
    assert summary["accuracy_after"] is None
    assert summary["time_to_recover_s"] is None
    assert summary["time_to_detect_s"] is None
    assert summary["recovered"] is False


def test_accuracy_is_weighted_by_image_counts() -> None:
    tl = rp.Timeline()
    tl.add_sample(rp.Sample(t=0, phase="clean", accuracy=1.0, n=30))
    tl.add_sample(rp.Sample(t=1, phase="clean", accuracy=0.0, n=10))
    tl.add_sample(rp.Sample(t=2, phase="clean", accuracy=None, n=0))
    summary = rp.summarise(tl, scenario="drift", eps=None, recovery_window_s=5, versions={})
    assert summary["accuracy_before"] == pytest.approx(0.75)


def test_an_event_kind_counts_once_and_unknown_kinds_are_refused() -> None:
    tl = rp.Timeline()
    first = tl.add_event(rp.ALERT_FIRING, 5.0)
    assert tl.add_event(rp.ALERT_FIRING, 9.0) is first
    assert len(tl.events) == 1
    with pytest.raises(ValueError, match="unknown event kind 'alert-firing'"):
        tl.add_event("alert-firing", 1.0)


def test_report_files_are_written_and_the_timeline_reads_back(tmp_path: Path) -> None:
    tl = _synthetic(tmp_path / "report" / "timeline.jsonl")
    summary = _summary(tl)
    paths = rp.write_report(tmp_path / "report", tl, summary)
    names = sorted(p.name for p in paths)
    assert names == ["summary.json", "summary.md", "timeline.jsonl", "timeline.png"]

    png = (tmp_path / "report" / "timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report" / "summary.json").read_text()) == summary

    md = (tmp_path / "report" / "summary.md").read_text()
    assert "| time to detect (s): attack start → alert at receiver | 9.500 |" in md
    assert "- hardened: `v2`" in md
    assert "| robust_gain | 0.41 |" in md

    back = rp.Timeline.load(tmp_path / "report" / "timeline.jsonl")
    assert back.samples == tl.samples
    assert back.events == tl.events


def test_report_from_an_in_memory_timeline_writes_its_jsonl(tmp_path: Path) -> None:
    tl = _synthetic()
    rp.write_report(tmp_path, tl, _summary(tl))
    back = rp.Timeline.load(tmp_path / "timeline.jsonl")
    assert len(back.samples) == 70
    assert back.events[0].kind == rp.ATTACK_START


def test_a_corrupt_timeline_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    path.write_text('{"type": "sample", "t": 0, "phase": "clean"}\n{"type": "other"}\n')
    with pytest.raises(ValueError, match=r"timeline.jsonl:2: expected type sample or event"):
        rp.Timeline.load(path)


def test_gate_figures_flatten_the_decision_for_the_report() -> None:
    from robustloop.stack.scenario import gate_figures

    decision = {
        "baseline": "v1",
        "candidate": "v2",
        "passed": False,
        "reasons": ["robust: ok", "clean: FAIL"],
        "metrics": {
            "n": 300,
            "eps": 0.1,
            "attack": {"name": "pgd", "steps": 20, "restarts": 1},
            "clean": {
                "baseline_accuracy": 0.7266,
                "candidate_accuracy": 0.6633,
                "difference": -0.06,
            },
            "robust": {
                "baseline_accuracy": 0.3533,
                "candidate_accuracy": 0.47,
                "difference": 0.117,
            },
        },
    }
    figures = gate_figures({"passed": "false", "decision": json.dumps(decision)})
    assert figures["passed"] is False
    assert figures["attack"] == "pgd-20 x1"
    assert figures["robust_candidate_accuracy"] == pytest.approx(0.47)
    assert figures["clean_difference"] == pytest.approx(-0.06)
    assert figures["reasons"] == ["robust: ok", "clean: FAIL"]
    assert figures["candidate"] == "v2"
