"""Standard and adversarial training, and evaluation, on small slices of Fashion-MNIST."""

from __future__ import annotations

import copy
import itertools
import logging
import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import training.adversarial as adversarial_module
from robustloop.config import DataConfig
from tests.conftest import DATASET_ROOT
from training import (
    ARCHITECTURES,
    DEFAULT_LR,
    FGSM,
    Splits,
    TrainingDiverged,
    TrainResult,
    adversarial_train,
    average_weights,
    build_model,
    evaluate,
    make_splits,
    train_standard,
    use_bf16,
)
from training.adversarial import (
    DIVERGED_CLEAN_DROP,
    PriorStart,
    check_noise,
    divergence,
    learning_rate_warning,
    make_training_attack,
    training_perturbation,
)
from training.evaluate import wilson_interval

pytestmark = pytest.mark.skipif(not DATASET_ROOT.is_dir(), reason=f"{DATASET_ROOT} absent")


@pytest.fixture(scope="module")
def splits() -> Splits:
    return make_splits(DataConfig(train_limit=1000, eval_size=500, traffic_size=100))


@pytest.fixture(scope="module")
def standard(splits: Splits) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("cnn")
    train_standard(model, splits.train, epochs=1, batch_size=50, lr=2e-3, seed=0, progress=False)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _recipe(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments of a small, quick ``adversarial_train`` run; each test overrides what
    it is about (FGSM-RS, Adam at 1e-3 without warm-up, one epoch of batches of 50)."""
    recipe: dict[str, Any] = {
        "method": "fgsm-rs",
        "eps": 0.1,
        "step_size": None,
        "steps": 1,
        "epochs": 1,
        "batch_size": 50,
        "lr": 1e-3,
        "optimizer": "adam",
        "warmup": 0.0,
        "seed": 0,
        "max_seconds": None,
        "check_size": 32,
        "progress": False,
    }
    return {**recipe, **overrides}


def _copy(model: nn.Module) -> nn.Module:
    clone = build_model("cnn")
    clone.load_state_dict(model.state_dict())
    return clone


def test_every_architecture_maps_images_to_ten_logits() -> None:
    for name in ARCHITECTURES:
        assert build_model(name)(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(
        ValueError, match=r"choose one of cnn, wide-cnn, torchvision:NAME or package"
    ):
        build_model("resnet")


def test_models_are_built_channels_last_and_compute_the_same_function() -> None:
    torch.manual_seed(0)
    model = build_model("cnn")
    conv = model[3]  # the second convolution (the first has one input channel)
    assert isinstance(conv, nn.Conv2d)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # the layout really changed
    plain = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    images = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain(images), rtol=1e-4, atol=1e-5)


def test_pooling_before_relu_computes_what_relu_before_pooling_would() -> None:
    torch.manual_seed(0)
    model = build_model("cnn")
    layers = list(model)
    pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
    assert len(pools) == 2
    for pool in pools:  # each convolution, then pooling, then ReLU
        assert [type(layer) for layer in layers[pool - 1 : pool + 2]] == [
            nn.Conv2d,
            nn.MaxPool2d,
            nn.ReLU,
        ]
    for pool in pools:  # the textbook order: convolution, ReLU, pooling
        layers[pool], layers[pool + 1] = layers[pool + 1], layers[pool]
    textbook = nn.Sequential(*layers)
    images = torch.rand(16, 1, 28, 28)
    labels = torch.randint(0, 10, (16,))
    grads = []
    for net in (model, textbook):
        x = images.clone().requires_grad_(True)
        nn.functional.cross_entropy(net(x), labels).backward()
        grads.append(x.grad)
    torch.testing.assert_close(model(images), textbook(images), rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_average_weights_is_the_elementwise_mean_and_refuses_mismatches() -> None:
    torch.manual_seed(0)
    one, two = build_model("cnn"), build_model("cnn")
    before = _state(one)
    soup = average_weights([one, two])
    for key, value in soup.state_dict().items():
        torch.testing.assert_close(value, (one.state_dict()[key] + two.state_dict()[key]) / 2)
        assert torch.equal(one.state_dict()[key], before[key]), "an ingredient changed"
    assert soup[3].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="at least two"):
        average_weights([one])
    with pytest.raises(ValueError, match="model 2 does not have the weights of model 1"):
        average_weights([one, build_model("wide-cnn")])


def test_standard_training_learns_and_is_reproducible(splits: Splits, standard: nn.Module) -> None:
    result = evaluate(standard, splits.eval, attack="none")
    assert result.accuracy > 0.6
    small = TensorDataset(*(t[:200] for t in splits.train.tensors))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("cnn")
        train_standard(model, small, epochs=1, batch_size=50, lr=2e-3, seed=0, progress=False)
        runs.append(model.state_dict())
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key


@pytest.mark.parametrize(
    ("method", "optimizer", "lr", "warmup"),
    [
        ("fgsm-prior", "sgd", DEFAULT_LR["sgd"], 0.2),  # the remediation's recipe
        ("fgsm-rs", "sgd", DEFAULT_LR["sgd"], 0.2),
        ("fgsm-rs", "adam", 2e-3, 0.0),
    ],
    ids=["fgsm-prior-sgd", "fgsm-rs-sgd", "fgsm-rs-adam"],
)
def test_short_hardening_raises_pgd_accuracy(
    splits: Splits,
    standard: nn.Module,
    method: str,
    precision: str,
    optimizer: str,
    lr: float,
    warmup: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """GIVEN a standard model, WHEN it gets two more epochs of fast adversarial training
    (FGSM-prior and FGSM-RS, SGD with warm-up and Adam, each in float32 and under bfloat16
    autocast), THEN its PGD accuracy rises, and clearly beats two more epochs of standard
    training; the check of the starting weights and each epoch log one line (the progress bar
    shows only on a terminal)."""
    bf16 = precision == "bf16"
    before = evaluate(standard, splits.eval, attack="pgd", eps=0.1, steps=5)
    more_standard = _copy(standard)
    with caplog.at_level(logging.INFO, logger="training"):
        train_standard(
            more_standard, splits.train, epochs=2, batch_size=50, lr=2e-3, seed=1, progress=False
        )
        recipe = _recipe(
            method=method, epochs=2, lr=lr, optimizer=optimizer, warmup=warmup, check_size=64
        )
        result = adversarial_train(_copy(standard), splits.train, **recipe, bf16=bf16)
    control = evaluate(more_standard, splits.eval, attack="pgd", eps=0.1, steps=5)
    after = evaluate(result.model, splits.eval, attack="pgd", eps=0.1, steps=5)
    assert after.accuracy > before.accuracy, (before.accuracy, after.accuracy)
    assert after.accuracy > control.accuracy + 0.1, (control.accuracy, after.accuracy)
    assert [h["epoch"] for h in result.history] == [0, 1, 2] and not result.stopped_early
    assert result.best in result.history[1:], "training beat the starting weights"
    assert not result.model.training
    lines = [record.getMessage() for record in caplog.records if record.name == "training"]
    assert [line.split(":")[0] for line in lines] == [
        "train epoch 1/2",
        "train epoch 2/2",
        f"{method} start",
        f"{method} epoch 1/2",
        f"{method} epoch 2/2",
    ]
    assert f"samples {len(splits.train)}" in lines[0] and "loss " in lines[0]
    assert "check_pgd_accuracy " in lines[-1]


def test_fgsm_prior_starts_each_example_where_its_last_perturbation_ended(
    splits: Splits, standard: nn.Module
) -> None:
    images, labels = splits.eval.tensors[0][:6], splits.eval.tensors[1][:6]
    dataset = TensorDataset(images, labels)
    attack = make_training_attack("fgsm-prior", standard, eps=0.1, step_size=None, steps=1)
    assert isinstance(attack, FGSM) and attack.step_size == pytest.approx(0.075)
    starts: list[torch.Tensor] = []
    original_forward = attack.forward

    def recording_forward(
        x: torch.Tensor, y: torch.Tensor, start: torch.Tensor | None
    ) -> torch.Tensor:
        assert start is not None
        starts.append(start.clone())
        return original_forward(x, y, start)

    attack.forward = recording_forward  # type: ignore[method-assign]
    perturb = training_perturbation("fgsm-prior", attack, dataset)
    assert isinstance(perturb, PriorStart)
    initial = perturb.memory.clone()
    assert float(initial.abs().max()) <= 0.1 and float(initial.std()) > 0.02  # uniform start
    first = perturb(images[:3], labels[:3], torch.arange(3))
    torch.testing.assert_close(starts[0], (images[:3] + initial[:3].float()).clamp(0, 1))
    second = perturb(images[2:4], labels[2:4], torch.tensor([2, 3]))
    assert float((second - images[2:4]).abs().max()) <= 0.1 + 1e-6
    # example 2 begins at its first adversarial example (float16 memory), example 3 afresh
    torch.testing.assert_close(starts[1][0], first[2], rtol=0, atol=1e-3)
    torch.testing.assert_close(starts[1][1], (images[3] + initial[3].float()).clamp(0, 1))
    assert torch.equal(perturb.memory[4:], initial[4:]), "unvisited examples keep their start"
    with pytest.raises(ValueError, match="choose one of"):
        make_training_attack("trades", standard, eps=0.1, step_size=None, steps=1)


def test_pgd_training_is_seeded(splits: Splits, standard: nn.Module, precision: str) -> None:
    small = TensorDataset(*(t[:100] for t in splits.train.tensors))
    kwargs = _recipe(method="pgd", steps=2, seed=4, bf16=precision == "bf16")
    one = adversarial_train(_copy(standard), small, **kwargs)
    two = adversarial_train(_copy(standard), small, **kwargs)
    assert one.history[1]["loss"] == two.history[1]["loss"]
    for key, value in one.model.state_dict().items():
        assert torch.equal(value, two.model.state_dict()[key]), key


def test_max_seconds_stops_cleanly_with_a_checked_model(
    splits: Splits, standard: nn.Module, precision: str
) -> None:
    recipe = _recipe(method="pgd", steps=2, epochs=5, max_seconds=1e-9, bf16=precision == "bf16")
    result = adversarial_train(_copy(standard), splits.train, **recipe)
    assert result.stopped_early
    assert [h["epoch"] for h in result.history] == [0, 1]
    assert result.history[1]["samples"] == 50, "stops after the first mini-batch"
    assert result.best in result.history
    assert "check_pgd_accuracy" in result.best


def _assert_weights(model: nn.Module, state: dict[str, torch.Tensor], why: str) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{why} ({key} differs)"


def _train_with_fake_checks(
    splits: Splits,
    standard: nn.Module,
    monkeypatch: pytest.MonkeyPatch,
    checks: list[tuple[float, float]],
    check_size: int,
) -> tuple[TrainResult, list[dict[str, torch.Tensor]]]:
    """FGSM-RS on 100 images for ``len(checks) - 1`` epochs, the guard's check answering
    ``checks`` (clean, PGD accuracy) in turn, the first for the starting weights; returns the
    result and the weights at each check."""
    answers = iter(checks)
    states: list[dict[str, torch.Tensor]] = []

    def fake_check(model: nn.Module, *args: object) -> tuple[float, float]:
        states.append(_state(model))
        return next(answers)

    monkeypatch.setattr(adversarial_module, "_check", fake_check)
    small = TensorDataset(*(t[:100] for t in splits.train.tensors))
    recipe = _recipe(epochs=len(checks) - 1, check_size=check_size)
    result = adversarial_train(_copy(standard), small, **recipe)
    return result, states


def test_collapse_guard_keeps_the_best_checkpoint_and_stops(
    splits: Splits, standard: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catastrophic overfitting: PGD accuracy on the check set collapses after epoch 2, to
    above the start, so the run is not a divergence: the best checkpoint is handed back."""
    checks = [(0.8, 0.05), (0.8, 0.30), (0.8, 0.45), (0.9, 0.10), (0.9, 0.5)]
    result, states = _train_with_fake_checks(splits, standard, monkeypatch, checks, 32)
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert result.history[-1]["catastrophic_overfitting"] is True
    assert result.stopped_early
    assert result.best is result.history[2]
    _assert_weights(result.model, states[2], "the epoch-2 checkpoint must be kept")


def test_the_latest_checkpoint_within_the_checks_noise_of_the_best_is_kept(
    splits: Splits, standard: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On 100 check images two standard errors are about 0.1 at accuracy 0.6: epoch 2 (0.55)
    is not measurably worse than epoch 1 (0.60) and has trained longer; epoch 3 (0.45) is."""
    checks = [(0.8, 0.10), (0.8, 0.60), (0.8, 0.55), (0.8, 0.45)]
    # check_size 512 is capped at the 100 training images
    result, states = _train_with_fake_checks(splits, standard, monkeypatch, checks, 512)
    assert check_noise(0.6, 100) == pytest.approx(0.098, abs=1e-3)
    assert len(result.history) == 4 and not result.stopped_early
    assert result.best is result.history[2]
    _assert_weights(result.model, states[2], "the epoch-2 checkpoint must be kept")


def test_the_starting_weights_are_handed_back_when_no_epoch_beats_them(
    splits: Splits, standard: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 0 competes: an epoch measurably worse than the start on the PGD check (with a
    clean accuracy that shows no divergence) leaves the starting weights in place."""
    checks = [(0.8, 0.50), (0.8, 0.35)]  # 0.15 down: beyond the check's noise (0.1)
    start = _state(standard)
    result, states = _train_with_fake_checks(splits, standard, monkeypatch, checks, 512)
    assert result.best is result.history[0] and result.best["epoch"] == 0
    assert not torch.equal(states[1]["0.weight"], start["0.weight"]), "epoch 1 did train"
    _assert_weights(result.model, start, "the starting weights must be kept")


@pytest.mark.parametrize(
    ("checks", "reason"),
    [
        ([(0.8, 0.05), (0.09, 0.09)], "clean check accuracy fell to chance (0.090; start 0.800)"),
        ([(0.8, 0.05), (0.45, 0.30)], "clean check accuracy fell from 0.800 to 0.450"),
    ],
    ids=["chance", "far-below-clean"],
)
def test_an_epoch_far_below_the_start_raises_and_names_epoch_and_rate(
    splits: Splits,
    standard: nn.Module,
    monkeypatch: pytest.MonkeyPatch,
    checks: list[tuple[float, float]],
    reason: str,
) -> None:
    with pytest.raises(TrainingDiverged) as raised:
        _train_with_fake_checks(splits, standard, monkeypatch, [*checks, (0.8, 0.5)], 512)
    message = str(raised.value)
    assert raised.value.epoch == 1 and reason in message
    assert message.startswith("adversarial training diverged in epoch 1 (learning rate ")
    assert "lower remediation.lr" in message and "\n" not in message


def test_divergence_rules_are_relative_to_the_start() -> None:
    """A start at chance (a fresh model) cannot fall to chance; the drops are the constants."""

    def entry(clean: float, robust: float, loss: float = 1.0) -> dict[str, float]:
        return {"check_clean_accuracy": clean, "check_pgd_accuracy": robust, "loss": loss}

    fresh, trained = entry(0.1, 0.0), entry(0.8, 0.5)
    assert divergence(fresh, entry(0.1, 0.0), 10, 512) is None
    assert divergence(trained, entry(0.8 - DIVERGED_CLEAN_DROP + 0.01, 0.5), 10, 512) is None
    assert divergence(trained, entry(0.8, 0.0), 10, 512) is None, "PGD accuracy is no sign"
    assert divergence(trained, entry(0.75, 0.45, math.nan), 10, 512) == "the loss became nan"
    assert "fell to chance" in str(divergence(trained, entry(0.12, 0.1), 10, 512))
    # with 100 classes 0.12 is far above chance, but still far below the start
    assert "fell from 0.800 to 0.120" in str(divergence(trained, entry(0.12, 0.1), 100, 512))


def test_a_divergent_learning_rate_raises_at_once_and_names_epoch_and_rate(
    splits: Splits, standard: nn.Module, precision: str
) -> None:
    """``remediation.lr: 5``: the run stops in its first epoch with a one-line reason."""
    recipe = _recipe(method="fgsm-prior", optimizer="sgd", lr=5.0, warmup=0.0, epochs=3)
    with pytest.raises(TrainingDiverged) as raised:
        adversarial_train(_copy(standard), splits.train, **recipe, bf16=precision == "bf16")
    message = str(raised.value)
    assert raised.value.epoch == 1 and 0 < raised.value.lr <= raised.value.peak == 5.0
    assert message.startswith("adversarial training diverged in epoch 1 (learning rate ")
    assert "peak 5)" in message and "lower remediation.lr" in message
    assert "\n" not in message


def test_a_non_finite_loss_stops_before_the_update(splits: Splits, standard: nn.Module) -> None:
    images, labels = splits.train.tensors[0][:100].clone(), splits.train.tensors[1][:100]
    images[:] = float("nan")
    with pytest.raises(TrainingDiverged, match="the loss became nan after 0 samples"):
        adversarial_train(_copy(standard), TensorDataset(images, labels), **_recipe())


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"method": "trades"}, "unknown adversarial training method 'trades'; choose one of"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; choose one of"),
        ({"warmup": 1.0}, r"warmup must be in \[0, 1\), got 1.0"),
        ({"warmup": -0.1}, r"warmup must be in \[0, 1\)"),
    ],
)
def test_bad_adversarial_training_arguments_are_refused_and_train_nothing(
    splits: Splits, bad: dict[str, Any], message: str
) -> None:
    model = build_model("cnn")
    before = _state(model)
    with pytest.raises(ValueError, match=message):
        adversarial_train(
            model, splits.train, **_recipe(**{"optimizer": "sgd", "warmup": 0.2, **bad})
        )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_learning_rate_of_the_other_optimizers_scale_is_warned_about() -> None:
    """A config written before the optimizer choice holds Adam's 3e-3: under SGD, warn."""
    warning = learning_rate_warning("sgd", 3e-3)
    assert warning is not None and "remediation.lr 0.003" in warning and "null" in warning
    assert learning_rate_warning("adam", 0.1) is not None
    assert learning_rate_warning("sgd", DEFAULT_LR["sgd"]) is None
    assert learning_rate_warning("sgd", 0.02) is None
    assert learning_rate_warning("adam", 1e-3) is None


def test_bad_training_arguments_are_refused(splits: Splits) -> None:
    model = build_model("cnn")
    with pytest.raises(ValueError, match="epochs"):
        train_standard(model, splits.train, epochs=0, batch_size=50, lr=1e-3, seed=0)


def test_evaluation_reports_wilson_intervals(splits: Splits, standard: nn.Module) -> None:
    clean = evaluate(standard, splits.eval, attack="none", n=110)
    fgsm = evaluate(standard, splits.eval, attack="fgsm", eps=0.1, n=110)
    assert clean.as_dict().keys() == {"attack", "eps", "n", "accuracy", "ci95"}
    assert clean.n == 110 and clean.correct.shape == (110,) and clean.correct.dtype == torch.bool
    assert clean.accuracy == pytest.approx(float(clean.correct.float().mean()))
    lo, hi = clean.as_dict()["ci95"]
    assert lo < clean.accuracy < hi
    assert fgsm.accuracy <= clean.accuracy
    assert standard.training is False
    again = evaluate(standard, splits.eval, attack="pgd", eps=0.1, steps=3, n=50, seed=1)
    assert torch.equal(
        again.correct,
        evaluate(standard, splits.eval, attack="pgd", eps=0.1, steps=3, n=50, seed=1).correct,
    )
    with pytest.raises(ValueError, match="between 1 and 500"):
        evaluate(standard, splits.eval, n=501)
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(standard, splits.eval, attack="cw")


def test_wilson_interval_matches_known_values() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)


def test_learning_rate_follows_the_clock_when_time_runs_short() -> None:
    """A run cut short by max_seconds still ends with a small learning rate."""
    import time

    from training._loop import Deadline, cosine_lr

    assert cosine_lr(1.0, 0, 100) == 1.0
    assert cosine_lr(1.0, 50, 100) == pytest.approx(0.5)
    assert cosine_lr(1.0, 100, 100) == pytest.approx(0.0)
    deadline = Deadline(max_seconds=1000.0)
    deadline.start = time.monotonic() - 1000.0
    assert cosine_lr(1.0, 1, 100, deadline) == pytest.approx(0.0, abs=1e-6)
    assert cosine_lr(1.0, 50, 100, Deadline(None)) == pytest.approx(0.5)


def test_warmup_climbs_linearly_to_the_peak_then_decays_to_zero() -> None:
    """The one-cycle shape of 'fast' AT: 0 -> peak over the warm-up fraction, cosine to 0."""
    import time

    from training._loop import WARMUP_MIN_STEPS, Deadline, cosine_lr

    assert WARMUP_MIN_STEPS == 30
    rates = [cosine_lr(0.1, step, 200, warmup=0.2) for step in range(201)]
    assert rates[0] == pytest.approx(0.1 * 0.005 / 0.2), "the first step is small, not zero"
    assert rates[19] == pytest.approx(0.05)
    assert max(rates) == rates[39] == rates[40] == pytest.approx(0.1)
    assert rates[120] == pytest.approx(0.05) and rates[200] == pytest.approx(0.0)
    assert all(a < b for a, b in itertools.pairwise(rates[:40]))
    assert all(a > b for a, b in itertools.pairwise(rates[40:]))
    # the clock's fraction moves the decay: half the budget gone is past the peak
    deadline = Deadline(max_seconds=1000.0)
    deadline.start = time.monotonic() - 500.0
    late = cosine_lr(0.1, 100, 200, deadline, warmup=0.2)
    assert late < 0.1 and late == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.375)))


def test_warmup_takes_at_least_its_minimum_of_steps_however_fast_the_clock() -> None:
    """A slow machine spends the clock's warm-up fraction in few steps; the rate still climbs
    over WARMUP_MIN_STEPS of them (SGD diverged to chance when the peak came within 10)."""
    import time

    from training._loop import WARMUP_MIN_STEPS, Deadline, cosine_lr

    deadline = Deadline(max_seconds=30.0)
    deadline.start = time.monotonic() - 15.0  # half the budget gone, past a 20 % warm-up
    rates = [cosine_lr(0.1, step, 1410, deadline, warmup=0.2) for step in range(40)]
    decayed = 0.1 * 0.5 * (1 + math.cos(math.pi * 0.375))  # the clock's point of the decay
    climb = [0.1 * (step + 1) / WARMUP_MIN_STEPS for step in range(40)]
    assert rates == pytest.approx([min(c, decayed) for c in climb], rel=1e-3)
    assert rates[0] < rates[10] < rates[20] == pytest.approx(decayed, rel=1e-3) == rates[-1]
    # by steps alone: a run of 100 steps with a 20 % warm-up climbs for 29 steps, then decays
    by_steps = [cosine_lr(0.1, step, 100, warmup=0.2) for step in range(100)]
    assert by_steps[19] == pytest.approx(0.1 * 20 / 30)
    assert all(a < b for a, b in itertools.pairwise(by_steps[:29]))
    assert all(a > b for a, b in itertools.pairwise(by_steps[29:]))
    assert by_steps[28] == pytest.approx(0.1 * 29 / 30) and max(by_steps) < 0.1
    # a run shorter than the minimum climbs by tenths of its steps until it meets the decay
    short = [cosine_lr(0.1, step, 10, warmup=0.2) for step in range(10)]
    top = short.index(max(short))
    assert short[0] == pytest.approx(0.01) and 0 < top < 9 and max(short) < 0.1
    assert all(a < b for a, b in itertools.pairwise(short[: top + 1]))
    assert all(a > b for a, b in itertools.pairwise(short[top:]))
    # no warm-up: no minimum either
    assert cosine_lr(0.1, 0, 100) == pytest.approx(0.1)


def test_precision_names_resolve_and_unknown_ones_are_refused() -> None:
    assert use_bf16("bf16") is True
    assert use_bf16("fp32") is False
    assert use_bf16("auto") in (True, False)  # depends on the CPU: native bfloat16 or not
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        use_bf16("fp16")
