"""Must-shows of the remediation workflow, run for real by the local executor on a small slice.

Every step runs as its own process through Hera's runner, training and attacking for real, with
the CLI a user (or the webhook's local submitter) would call. To keep the area's tests short the
runs share one store: it starts with an untrained (random) production model, so that hardening
for one short epoch is certain to beat it (robust 0.00 -> about 0.3 at eps 0.1); the rejected
candidate is trained for one second from that same random model, so it is certain to be worse
than the production model the first run promoted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from robustloop.config import RobustloopConfig, dump_config
from tests.conftest import PRECISIONS
from workflows import summarise_workflow
from workflows.steps import OUTCOMES_FILE, PROMOTION_ANNOTATION

pytestmark = pytest.mark.slow


@dataclass
class Site:
    """A working folder with robustloop.yaml, a store and the first (promoting) run done."""

    root: Path
    config: RobustloopConfig
    random_version: str
    promote_run: str
    promote_result: subprocess.CompletedProcess[str]

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "robustloop", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            check=check,
            timeout=600,
        )

    def record(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self.cli("runs", "show", name, "--json", check=True).stdout))

    def store(self) -> Any:
        import training

        return training.ModelStore(self.root / "store")


def _small_config(root: Path, precision: str) -> RobustloopConfig:
    cfg = RobustloopConfig()
    cfg.remediation.precision = precision  # type: ignore[assignment]
    cfg.data.eval_size = 100
    cfg.data.traffic_size = 100
    cfg.data.train_limit = 2000
    cfg.training.epochs = 1
    cfg.training.threads = 1
    cfg.remediation.epochs = 1
    cfg.remediation.check_size = 64
    cfg.remediation.max_seconds = 60
    cfg.gate.n = 100
    cfg.gate.restarts = 1
    cfg.gate.eps = 0.1
    cfg.rollout.watch_seconds = 0  # the guard is tested against Prometheus on its own
    cfg.rollout.rules_wait_seconds = 0  # and the wait for the rules in tests/test_promotion_order
    cfg.store.path = root / "store"
    cfg.submitter.runs_dir = root / "runs"
    cfg.stack.run_dir = root / "run"
    cfg.webhook.db_path = root / "webhook.sqlite3"
    return cfg


@pytest.fixture(scope="module", params=PRECISIONS)
def site(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Site:
    """The site; every test that hardens runs once with the harden step in float32, once in
    bfloat16 (those that do not are parametrised with float32 alone)."""
    import torch

    import training

    root = tmp_path_factory.mktemp("remediation")
    cfg = _small_config(root, request.param)
    (root / "robustloop.yaml").write_text(dump_config(cfg), encoding="utf-8")
    torch.manual_seed(0)
    random_version = training.ModelStore(cfg.store.path).register(
        training.build_model("cnn"),
        architecture="cnn",
        parent=None,
        recipe={},
        metrics={},
        split={},
        provenance={"test": "untrained production model"},
    )
    name = "rl-e2e-promote"
    site = Site(root, cfg, random_version, name, subprocess.CompletedProcess([], 0))
    site.promote_result = site.cli(
        "workflow", "run-local", "--name", name, "-p", "incident-id=inc-42"
    )
    return site


def test_a_full_run_promotes_and_the_manifest_names_the_incident_and_the_run(
    site: Site, schemas: Path
) -> None:
    result = site.promote_result
    assert result.returncode == 0, result.stderr[-3000:]
    wf = site.record(site.promote_run)
    # the record is an Argo Workflow object, as the webhook and the UI expect
    full = json.loads((schemas / "argo-workflows" / "schema.json").read_text())
    schema = {"$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow"}
    jsonschema.Draft7Validator({**schema, "definitions": full["definitions"]}).validate(wf)
    summary = summarise_workflow(wf)
    nodes = {n["displayName"]: n for n in wf["status"]["nodes"].values()}
    # harden -> evaluate -> gate -> promote ran in that order, then the exit handler
    order = [nodes[s]["startedAt"] for s in ("harden", "evaluate", "gate", "promote")]
    assert order == sorted(order)
    assert all(nodes[s]["phase"] == "Succeeded" for s in ("harden", "evaluate", "gate", "promote"))
    assert summary.phase == "Succeeded" and summary.gate_passed is True
    # a new production version, and its record names the incident and the run
    store = site.store()
    new = store.production()
    assert new == summary.promoted_version != site.random_version
    assert store.manifest(new).provenance["incident"] == "inc-42"
    promotion = store.annotation(new, PROMOTION_ANNOTATION)
    assert promotion is not None
    assert promotion["incident"] == "inc-42" and promotion["workflow"] == site.promote_run
    last = store.history()[-1]
    assert last["action"] == "promote" and last["to"] == new
    assert last["provenance"]["workflow"] == site.promote_run
    # the exit handler recorded the outcome
    outcomes = (site.root / "store" / OUTCOMES_FILE).read_text().splitlines()
    assert any(
        json.loads(line)["workflow"] == site.promote_run
        and json.loads(line)["status"] == "Succeeded"
        for line in outcomes
    )
    # and `runs list` shows it as the Argo UI would
    listing = site.cli("runs", "list", check=True).stdout
    assert any(line.split()[:2] == [site.promote_run, "Succeeded"] for line in listing.splitlines())


@pytest.mark.parametrize("site", ["fp32"], indirect=True)  # no hardening: one precision
def test_a_resubmitted_run_exits_3_and_changes_nothing(site: Site) -> None:
    record = site.root / "runs" / site.promote_run / "workflow.json"
    before = record.read_bytes()
    again = site.cli("workflow", "run-local", "--name", site.promote_run)
    assert again.returncode == 3
    assert "exists already" in again.stderr
    assert record.read_bytes() == before
    missing = site.cli("runs", "show", "no-such-run")
    assert missing.returncode == 2 and "no run named 'no-such-run'" in missing.stderr


def test_a_worse_candidate_is_rejected_and_production_does_not_change(site: Site) -> None:
    store = site.store()
    before = store.production()
    history = len(store.history())
    name = "rl-e2e-reject"
    result = site.cli(
        "workflow", "run-local", "--name", name,
        "-p", f"base-version={site.random_version}",
        "-p", "epochs=1", "-p", "max-seconds=1", "-p", "incident-id=inc-43",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]  # a rejection is a successful run
    wf = site.record(name)
    summary = summarise_workflow(wf)
    nodes = {n["displayName"]: n for n in wf["status"]["nodes"].values()}
    assert summary.gate_passed is False and summary.promoted_version is None
    assert nodes["promote"]["phase"] == "Skipped"
    decision = json.loads(
        next(p["value"] for p in nodes["gate"]["outputs"]["parameters"] if p["name"] == "decision")
    )
    assert decision["passed"] is False
    assert any("FAIL" in reason for reason in decision["reasons"])
    assert store.production() == before
    assert len(store.history()) == history


def test_a_divergent_recipe_fails_at_harden_and_the_record_says_why(site: Site) -> None:
    """GIVEN remediation.lr: 5, WHEN the workflow runs, THEN harden fails with the one-line
    reason, nothing after it runs, nothing is registered, and the outcome record says why."""
    store = site.store()
    before, versions = store.production(), [m.version for m in store.list()]
    wild = site.config.model_copy(deep=True)
    wild.remediation.lr = 5.0
    wild.remediation.warmup = 0.0
    (site.root / "wild.yaml").write_text(dump_config(wild), encoding="utf-8")
    name = "rl-e2e-diverged"
    result = site.cli(
        "--config", "wild.yaml", "workflow", "run-local", "--name", name,
        "-p", "epochs=2", "-p", "max-seconds=0", "-p", "incident-id=inc-45",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    wf = site.record(name)
    nodes = {n["displayName"]: n for n in wf["status"]["nodes"].values()}
    assert wf["status"]["phase"] == "Failed" and nodes["harden"]["phase"] == "Failed"
    why = nodes["harden"]["message"]
    assert "adversarial training diverged in epoch 1 (learning rate" in why, why
    assert "lower remediation.lr" in why
    summary = summarise_workflow(wf)  # what the receiver records for the incident
    assert summary.message.startswith("child ") and f"harden: {why}" in summary.message
    assert all(nodes[s]["phase"] == "Omitted" for s in ("evaluate", "gate", "promote"))
    assert store.production() == before
    assert [m.version for m in store.list()] == versions
    outcome = json.loads((site.root / "store" / OUTCOMES_FILE).read_text().splitlines()[-1])
    assert outcome["workflow"] == name and outcome["status"] == "Failed"
    assert any("diverged in epoch 1" in str(f["message"]) for f in outcome["failures"]), outcome


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def test_a_step_killed_midway_leaves_production_unchanged(site: Site) -> None:
    store = site.store()
    before = store.production()
    name = "rl-e2e-killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "robustloop", "workflow", "run-local", "--name", name,
         "-p", "incident-id=inc-44"],
        cwd=site.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    record = site.root / "runs" / name / "workflow.json"
    try:
        # WHEN the harden step's process is running (importing torch or training), kill it
        step_pid = None
        for _ in range(1200):
            if record.exists():
                nodes = json.loads(record.read_text())["status"]["nodes"].values()
                running = any(n["displayName"] == "harden" and n["phase"] == "Running"
                              for n in nodes)  # fmt: skip
                children = _children(proc.pid) if running else []
                if children:
                    step_pid = children[0]
                    break
            time.sleep(0.1)
        assert step_pid is not None, "the harden step never started"
        time.sleep(2)
        os.kill(step_pid, signal.SIGKILL)
        _out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # THEN the run failed at harden, nothing after it ran, production is unchanged
    assert proc.returncode == 1, err[-3000:]
    wf = site.record(name)
    nodes = {n["displayName"]: n for n in wf["status"]["nodes"].values()}
    assert wf["status"]["phase"] == "Failed"
    assert nodes["harden"]["phase"] == "Failed"
    assert "SIGKILL" in nodes["harden"]["message"]
    assert all(nodes[s]["phase"] == "Omitted" for s in ("evaluate", "gate", "promote"))
    assert store.production() == before
    assert summarise_workflow(wf).promoted_version is None
    outcome = json.loads((site.root / "store" / OUTCOMES_FILE).read_text().splitlines()[-1])
    assert outcome["workflow"] == name and outcome["status"] == "Failed"


@pytest.mark.parametrize("site", ["fp32"], indirect=True)  # no hardening: one precision
def test_gate_command_judges_two_versions_and_refuses_unknown_ones(site: Site) -> None:
    promoted = site.store().production()
    result = site.cli(
        "gate", "--candidate", promoted, "--baseline", site.random_version, "--json"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    decision = json.loads(result.stdout)
    assert decision["passed"] is True
    assert decision["metrics"]["attack"] == {"name": "pgd", "steps": 20, "restarts": 1}
    assert decision["metrics"]["robust"]["difference"] > 0
    # bad input: a clear error, exit 2, and the store is untouched
    history = site.store().history()
    bad = site.cli("gate", "--candidate", "v9999-deadbeef")
    assert bad.returncode == 2
    assert "v9999-deadbeef" in bad.stderr and "Traceback" not in bad.stderr
    assert site.store().history() == history
