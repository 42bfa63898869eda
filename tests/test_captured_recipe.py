"""The captured recipe and the gate on the captured set's held-out part.

``remediation.recipe: captured`` fine-tunes adversarially on the captured training part mixed
with the training split; the gate judges the candidate on the held-out part too, which no
candidate ever trained on. Small data: a 500-image training split, a captured set built from
the traffic split, a second of training.
"""

from __future__ import annotations

import importlib
import random
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

import training
from robustloop.config import RobustloopConfig, dump_config
from tests.support import register_model, run_cli
from training import ModelStore, append_captured, example_key, load_captured
from workflows._training import HardenError, harden_candidate
from workflows.gate import decide, evaluate_pair, pack_bits

COUNT = 80
harden_module = importlib.import_module("training.harden")  # (training.harden is the function)


@pytest.fixture
def config(small_config: RobustloopConfig, tmp_path: Path) -> RobustloopConfig:
    small_config.data.train_limit = 500
    small_config.remediation.max_seconds = 1
    small_config.remediation.check_size = 32
    small_config.remediation.recipe = "captured"
    small_config.gate.n = 100
    small_config.capture.enabled = True
    small_config.capture.path = tmp_path / "captured"
    small_config.capture.min_examples = 20
    small_config.capture.min_holdout = 5
    small_config.capture.mix = 0.25
    return small_config


def _capture(config: RobustloopConfig, count: int = COUNT, labels: Any = None) -> None:
    """A captured set of ``count`` traffic images, labelled with the truth (or ``labels``)."""
    splits = training.make_splits(config.data)
    images, truth = splits.traffic.tensors
    now = time.time()
    append_captured(
        config.capture,
        images[:count],
        truth[:count] if labels is None else labels,
        torch.full((count,), now, dtype=torch.float64),
        torch.tensor([example_key(f"sample-{i}") for i in range(count)]),
        now=now,
    )


def _each_row(dataset: TensorDataset) -> list[bytes]:
    """Each example as bytes (pixels and label), in order."""
    images, labels = dataset.tensors
    return [
        img.numpy().tobytes() + bytes([int(lab)]) for img, lab in zip(images, labels, strict=True)
    ]


def _rows(dataset: TensorDataset) -> set[bytes]:
    return set(_each_row(dataset))


def test_the_captured_recipe_trains_on_captured_and_original_data(
    config: RobustloopConfig, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a production model and a captured set
    config.remediation.precision = precision  # type: ignore[assignment]
    store = ModelStore(config.store.path)
    base = register_model(store)
    store.promote(base)
    _capture(config)
    train_part, holdout = load_captured(config.capture).split(config.capture.holdout_fraction)
    seen: list[TensorDataset] = []
    real = harden_module.adversarial_train

    def spy(model: Any, dataset: TensorDataset, **kwargs: Any) -> Any:
        seen.append(dataset)
        return real(model, dataset, **kwargs)

    monkeypatch.setattr(harden_module, "adversarial_train", spy)

    # WHEN the captured recipe hardens it
    hardened = training.harden(config, base="production", incident="inc-drift")

    # THEN it trained on every captured training example and on training images, in the mix
    (dataset,) = seen
    captured_rows, originals = _rows(train_part), _rows(training.make_splits(config.data).train)
    each = _each_row(dataset)
    assert captured_rows <= set(each)
    slots = sum(1 for row in each if row in captured_rows)
    assert len(dataset) == 500 and slots == round(config.capture.mix * 500)
    assert sum(1 for row in each if row in originals) == 500 - slots
    # ...and never on a held-out example
    assert not _rows(holdout) & set(each)
    # and the candidate's manifest says how it was made
    recipe = store.manifest(hardened.version).recipe
    assert recipe["recipe"] == "captured"
    assert recipe["captured"]["train_examples"] == len(train_part)
    assert recipe["captured"]["holdout_examples"] == len(holdout)
    assert recipe["captured"]["composition"] == {
        "captured": len(train_part),
        "slots": slots,
        "original": 500 - slots,
    }
    assert store.production() == base  # hardening never promotes


def test_too_few_captured_examples_fail_in_one_line_and_register_nothing(
    config: RobustloopConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ModelStore(config.store.path)
    store.promote(register_model(store))
    versions = [m.version for m in store.list()]
    # no captured set at all, capture off in this config: the workflow step's message
    config.capture.enabled = False
    with pytest.raises(HardenError) as failed:
        harden_candidate(config, base="production", incident="inc-1")
    message = str(failed.value)
    assert "\n" not in message
    assert "needs at least 20 captured training examples and 5 held out" in message
    assert "holds 0 and 0" in message and "capture.enabled is false in this config" in message
    assert "enable capture (capture.enabled: true" in message
    # a few captured examples, from the command line: exit 2, one line
    config.capture.enabled = True
    _capture(config, count=10)
    path = tmp_path / "robustloop.yaml"
    path.write_text(dump_config(config), encoding="utf-8")
    code, out, err = run_cli(capsys, "--config", str(path), "harden", "--recipe", "captured")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "needs at least 20 captured training examples" in err
    assert [m.version for m in store.list()] == versions


def test_a_tampered_captured_chunk_stops_the_recipe(config: RobustloopConfig) -> None:
    store = ModelStore(config.store.path)
    store.promote(register_model(store))
    _capture(config)
    chunk = next(Path(config.capture.path).glob("chunk-*"))
    data = bytearray(chunk.read_bytes())
    data[-3] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(HardenError, match=r"captured chunk .* is tampered"):
        harden_candidate(config, base="production", incident="inc-2")
    assert len(store.list()) == 1


# -- the gate on the held-out part ------------------------------------------------------------


def _evaluation(captured_base: list[bool], captured_cand: list[bool]) -> dict[str, Any]:
    """An evaluation that passes on clean and robust accuracy, with the given captured parts."""
    n = 200
    rng = random.Random(0)
    base_clean = [rng.random() < 0.85 for _ in range(n)]
    base_robust = [rng.random() < 0.2 for _ in range(n)]
    cand_robust = [True if i < 100 else v for i, v in enumerate(base_robust)]

    def entry(version: str, robust: list[bool], captured: list[bool]) -> dict[str, Any]:
        return {
            "version": version,
            "clean": {"accuracy": sum(base_clean) / n, "correct": pack_bits(base_clean)},
            "robust": {"accuracy": sum(robust) / n, "correct": pack_bits(robust)},
            "captured": {
                "accuracy": sum(captured) / len(captured),
                "correct": pack_bits(captured),
            },
        }

    return {
        "n": n,
        "eps": 0.1,
        "attack": {"name": "pgd", "steps": 20, "restarts": 1},
        "captured_n": len(captured_base),
        "captured_manifest": "ab" * 32,
        "candidate": entry("v0002-cand", cand_robust, captured_cand),
        "baseline": entry("v0001-base", base_robust, captured_base),
    }


def test_a_candidate_worse_on_the_captured_held_out_part_is_rejected() -> None:
    policy = RobustloopConfig().gate
    production = [True] * 30 + [False] * 10
    # GIVEN a candidate that passes the robust and clean checks
    better = [True] * 38 + [False] * 2
    passed = decide(_evaluation(production, better), policy)
    assert passed.passed, passed.reasons
    assert passed.reasons[-1].startswith("captured held-out accuracy (n=40) 0.750 -> 0.950")
    assert passed.metrics["captured"]["difference"] == pytest.approx(0.2)
    # WHEN it gets one held-out captured example fewer right than production
    worse = [True] * 29 + [False] * 11
    rejected = decide(_evaluation(production, worse), policy)
    # THEN the gate rejects it, saying why; the robust and clean checks still passed
    assert not rejected.passed
    assert rejected.reasons[-1].endswith("FAIL")
    assert "drop +0.025 > allowed 0.000" in rejected.reasons[-1]
    assert all(r.endswith(": ok") for r in rejected.reasons[:-1])
    # a tolerance lets a small drop through
    lenient = policy.model_copy(update={"max_captured_drop": 0.05})
    assert decide(_evaluation(production, worse), lenient).passed


def test_the_evaluation_judges_on_the_held_out_part_only(config: RobustloopConfig) -> None:
    # GIVEN production and a candidate, and captured labels that production answers perfectly
    store = ModelStore(config.store.path)
    production = register_model(store, seed=0)
    store.promote(production)
    candidate = register_model(store, seed=1)
    splits = training.make_splits(config.data)
    images = splits.traffic.tensors[0][:COUNT]
    model, _ = store.load(production, torch.device("cpu"))
    with torch.inference_mode():
        answers = model(images).argmax(dim=1)
    _capture(config, labels=answers)
    _, holdout = load_captured(config.capture).split(config.capture.holdout_fraction)
    # WHEN the gate evaluates the pair for the captured recipe
    evaluation = evaluate_pair(config, candidate, captured=True)
    decision = decide(evaluation, config.gate)
    # THEN the captured part is the held-out one, production is right on all of it...
    assert evaluation["captured_n"] == len(holdout) >= config.capture.min_holdout
    assert evaluation["baseline"]["captured"]["accuracy"] == 1.0
    candidate_accuracy = evaluation["candidate"]["captured"]["accuracy"]
    assert candidate_accuracy < 1.0
    # ...and the candidate, worse there, is rejected for it
    assert not decision.passed
    assert "captured held-out accuracy" in decision.reasons[-1]
    assert decision.reasons[-1].endswith("FAIL")
    assert decision.metrics["captured"]["baseline_accuracy"] == 1.0
