"""End to end: a short `robustloop demo --quick` with the real Prometheus and Alertmanager.

Clean traffic, an adaptive FGSM attack, the alert, the receiver, the local workflow (adversarial
training, gate, promotion), the hardened model serving: the whole loop on 127.0.0.1, as
`make demo` runs it, on a small data slice with short phases. Checks what a user reads in the
report: every figure present, and a promotion that actually happened.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from robustloop.config import RobustloopConfig, dump_config
from robustloop.stack.report import SUMMARY_FIELDS, Timeline

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("prometheus") is None or shutil.which("prometheus-alertmanager") is None,
        reason="needs the Debian prometheus and prometheus-alertmanager packages",
    ),
]

DEMO_TIMEOUT_S = 420


def test_quick_demo_detects_hardens_promotes_and_reports(tmp_path: Path) -> None:
    """The loop closes, with the hardening forced to float32 so that the demo takes the same path
    on every CPU. Both precisions of the same remediation, through the same steps and gate, run in
    tests/test_workflow_e2e.py."""
    precision = "fp32"
    cfg = RobustloopConfig()
    cfg.remediation.precision = precision
    cfg.stack.run_dir = tmp_path / "run"
    cfg.webhook.db_path = tmp_path / "webhook.sqlite3"
    config = tmp_path / "robustloop.yaml"
    config.write_text(dump_config(cfg))
    report = tmp_path / "report"

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    argv = [sys.executable, "-m", "robustloop", "--config", str(config), "demo", "--quick"]
    argv += ["--report-dir", str(report)]
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            returncode = proc.wait(DEMO_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # SIGTERM lets the demo stop its whole stack (SIGKILL would orphan it).
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            pytest.fail(f"demo still running after {DEMO_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
    output = log.read_text()
    assert returncode == 0, output[-4000:]

    summary = json.loads((report / "summary.json").read_text())
    assert set(SUMMARY_FIELDS) <= set(summary)
    versions = summary["versions"]
    assert versions["hardened"] is not None, "no promotion happened"
    assert versions["hardened"] != versions["baseline"]
    from training import ModelStore

    recipe = ModelStore(tmp_path / "run" / "quick-store").manifest(versions["hardened"]).recipe
    assert recipe["precision"] == precision
    assert summary["remediation_started"] is True
    assert summary["gate"], "the gate's figures are missing"
    for key in ("accuracy_before", "accuracy_under_attack", "accuracy_after"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["accuracy_under_attack"] < summary["accuracy_before"]
    assert summary["time_to_detect_s"] > 0
    assert summary["time_to_recover_s"] > summary["time_to_detect_s"]

    timeline = Timeline.load(report / "timeline.jsonl")
    kinds = [e.kind for e in timeline.events]
    for kind in (
        "attack_start",
        "alert_received",
        "workflow_start",
        "gate_decision",
        "promotion",
        "hardened_serving",
        "recovered",
    ):
        assert kind in kinds, f"{kind} missing from the timeline: {kinds}"
    assert (report / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert "time to detect" in (report / "summary.md").read_text()
    # progress lines were shown as it went
    assert "attack starts" in output
    assert "serving=" in output
