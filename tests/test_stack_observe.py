"""What the demo driver reads: the traffic log as it grows, run records as the executor writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustloop.stack.observe import TrafficTail, merge_traffic, node_outputs, running_step


def test_the_tail_returns_whole_records_and_waits_for_a_half_written_line(tmp_path: Path) -> None:
    path = tmp_path / "traffic.jsonl"
    tail = TrafficTail(path)
    assert tail.read() == []  # not created yet

    with path.open("w") as fh:
        fh.write(json.dumps({"t": 1, "accuracy": 0.5, "images": 4}) + "\n")
        fh.write('{"t": 2, "accur')
    assert [r["t"] for r in tail.read()] == [1]

    with path.open("a") as fh:
        fh.write('acy": 1.0, "images": 2}\n')
    assert tail.read() == [{"t": 2, "accuracy": 1.0, "images": 2}]
    assert tail.read() == []


def test_merged_accuracy_is_weighted_by_images_and_keeps_the_latest_version() -> None:
    merged = merge_traffic(
        [
            {"accuracy": 1.0, "images": 6, "version": "v1"},
            {"accuracy": 0.0, "images": 2, "version": "v2"},
            {"accuracy": None, "images": 0, "version": None},
        ]
    )
    assert merged.accuracy == pytest.approx(0.75)
    assert merged.n == 8
    assert merged.version == "v2"
    assert merge_traffic([]).accuracy is None


def _workflow(phase: str, nodes: list[tuple[str, str, str]]) -> dict:
    return {
        "metadata": {"name": "rl-x"},
        "status": {
            "phase": phase,
            "nodes": {
                f"n{i}": {
                    "displayName": name,
                    "type": kind,
                    "phase": node_phase,
                    "outputs": {"parameters": [{"name": "passed", "value": "true"}]}
                    if name == "gate"
                    else {},
                }
                for i, (name, kind, node_phase) in enumerate(nodes)
            },
        },
    }


def test_running_step_names_the_running_pod_not_the_dag() -> None:
    wf = _workflow(
        "Running",
        [("rl-x", "DAG", "Running"), ("harden", "Pod", "Succeeded"), ("gate", "Pod", "Running")],
    )
    assert running_step(wf) == "gate"
    assert node_outputs(wf, "gate") == {"passed": "true"}
    assert node_outputs(wf, "promote") == {}


def test_a_finished_workflow_reports_its_phase() -> None:
    wf = _workflow("Succeeded", [("rl-x", "DAG", "Succeeded"), ("gate", "Pod", "Succeeded")])
    assert running_step(wf) == "Succeeded"
