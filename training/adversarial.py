"""Adversarial training: Madry's PGD-AT and "fast" FGSM-RS, with a catastrophic-overfitting guard.

Both minimise the loss on adversarial examples crafted on the fly against the current weights
(Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks"):

* ``pgd``: PGD-k with a random start, step ``2.5 * eps / k`` by default.
* ``fgsm-rs``: one FGSM step of ``1.25 * eps`` from a uniform random start (Wong, Rice and Kolter
  2020, "Fast is better than free"): about ``(k + 1) / 2`` times cheaper than PGD-k, but prone to
  *catastrophic overfitting*, where robustness to PGD collapses within an epoch while FGSM
  accuracy soars.
* ``fgsm-prior``: one FGSM step of ``0.75 * eps`` that starts each training example where its
  perturbation of the previous epoch ended (the first epoch from a uniform random start, as
  FGSM-RS). Over the epochs the steps accumulate into a multi-step attack against a moving model
  at the cost of one step each: the idea of ATTA (Zheng et al. 2020, "Efficient Adversarial
  Training with Transferable Adversarial Examples") and of the prior-guided initialisation of
  FGSM-PGI (Jia et al. 2022, without its regulariser). Its memory is one float16 perturbation
  per training image (94 MB for Fashion-MNIST's 60,000). In the one-minute remediation it
  reaches about a point more PGD-20 accuracy than FGSM-RS at the same clean accuracy under SGD
  with warm-up, 5 points more under Adam (docs/training.md).

Guard (Wong et al. 2020, section 5; Rice et al. 2020 for keeping the best checkpoint): before
training (as epoch 0, the starting weights), after every epoch, and when the clock stops
training, PGD-10 accuracy is measured on ``check_size`` fixed training images; the latest
checkpoint whose accuracy is within the check's noise (:func:`check_noise`, two standard
errors) of the best so far is kept, so a run that only harms hands back its starting weights.
Training stops when the accuracy falls by more than :data:`COLLAPSE_DROP` below the best epoch
of training, the signature of catastrophic overfitting. (Keeping the strict maximum of a noisy
512-image check would often return an earlier, less trained checkpoint: in one demo run epoch 1
measured 0.643 and the finished run 0.633, one standard error apart.)

A run that *diverges* raises :class:`TrainingDiverged` and hands back nothing: a non-finite
loss (at once, before that mini-batch's update), or clean check accuracy at chance when the
start was above it, or more than :data:`DIVERGED_CLEAN_DROP` below the start. Its message names
the epoch and the learning rate. (PGD accuracy is no sign of divergence: the first epoch of
adversarial training may lower it, and a barely trained start can measure high on a weak
attack.)
Warm-starting (fine-tuning the production model) is the caller's choice: pass a trained model,
or a fresh one.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

from robustloop.config import Method, Optimizer
from training._loop import Deadline, Perturb, log_epoch, steps_per_epoch, train_epoch, validate
from training.attacks import FGSM, PGD, Attack
from training.device import native_bf16
from training.evaluate import evaluate
from training.train import TrainResult

PRIOR_STEP = 0.75
"""FGSM-prior's default step, in units of eps (0.5 to 0.75 measured best; 1.25 worst)."""

COLLAPSE_DROP = 0.2
"""A fall of the check's PGD accuracy this far below the best epoch stops training."""

DIVERGED_CLEAN_DROP = 0.3
"""A fall of the check's clean accuracy this far below the start means the run diverged
(hardening the reference CNN costs 3 to 5 points of clean accuracy)."""


class TrainingDiverged(RuntimeError):
    """Adversarial training diverged; the model it was given must not be used.

    Attributes:
        epoch: the epoch in which it was detected (1-based).
        lr: the learning rate at that point.
        peak: the run's peak learning rate (the recipe's ``lr``).
        reason: what was seen, e.g. ``"the loss became nan"``.
    """

    def __init__(self, epoch: int, lr: float, peak: float, reason: str) -> None:
        self.epoch, self.lr, self.peak, self.reason = epoch, lr, peak, reason
        super().__init__(
            f"adversarial training diverged in epoch {epoch} (learning rate {lr:.3g}, peak "
            f"{peak:g}): {reason}; nothing was kept; lower remediation.lr (null = the "
            "optimizer's default) or raise remediation.warmup"
        )


CHECK_STEPS = 10
"""PGD steps of the per-epoch check."""


METHODS: tuple[str, ...] = ("pgd", "fgsm-rs", "fgsm-prior")
"""Adversarial training methods by name (``remediation.method``): :func:`make_training_attack`."""
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")
"""Optimizers of adversarial training by name (``remediation.optimizer``), see
:func:`make_optimizer`."""
DEFAULT_LR: dict[str, float] = {"sgd": 0.1, "adam": 3e-3}
"""Peak learning rate of each optimizer when the recipe names none (docs/training.md: SGD
measured best at 0.15 to 0.2 and diverged at 0.3; 0.1 keeps a factor of three from that)."""


def learning_rate_warning(optimizer: Optimizer | str, lr: float) -> str | None:
    """A warning when ``lr`` is ten times below or above ``optimizer``'s default, else None.

    Configs written by ``robustloop init`` before the optimizer was configurable hold Adam's
    3e-3, which under SGD would barely move the weights.
    """
    default = DEFAULT_LR.get(optimizer)
    if default is None or default / 10 <= lr <= default * 10:
        return None
    return (
        f"remediation.lr {lr:g} is far from {optimizer}'s usual scale (default {default:g}); "
        "set remediation.lr: null for the optimizer's default"
    )


SGD_MOMENTUM = 0.9
"""Nesterov momentum of the ``sgd`` optimizer."""


def make_optimizer(name: Optimizer | str, params: Any, lr: float) -> torch.optim.Optimizer:
    """The optimizer of adversarial training by name: ``sgd`` (Nesterov momentum
    :data:`SGD_MOMENTUM`, as "fast" AT) or ``adam``.

    Raises:
        ValueError: unknown name (the message lists the choices).
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


PRECISIONS = ("auto", "fp32", "bf16")
"""Precisions of adversarial training by name (``remediation.precision``)."""


def use_bf16(
    precision: Literal["auto", "fp32", "bf16"] | str, device: torch.device | None = None
) -> bool:
    """Whether ``precision`` means bfloat16 autocast on ``device`` (default: the CPU).

    ``auto`` is bf16 where the device computes it natively (:func:`training.device.native_bf16`:
    a CPU with AVX512-BF16 or AMX, where it runs about 1.5 times the samples per second of
    float32, or an Ampere or later GPU); elsewhere bf16 would be emulated and slower, so
    ``auto`` is fp32. The recipe converges in both (docs/training.md).

    Raises:
        ValueError: unknown precision (the message lists the choices).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision != "auto":
        return precision == "bf16"
    return native_bf16(device or torch.device("cpu"))


def make_training_attack(
    method: Method | str,
    model: nn.Module,
    *,
    eps: float,
    step_size: float | None,
    steps: int,
) -> Attack:
    """The attack that crafts training examples for ``method`` (for ``fgsm-prior``, the FGSM
    step that :class:`PriorStart` begins at each example's previous perturbation).

    Raises:
        ValueError: unknown method (the message lists the choices).
    """
    if method == "pgd":
        return PGD(model, eps=eps, step_size=step_size, steps=steps, random_start=True)
    if method == "fgsm-rs":
        return FGSM(model, eps=eps, random_start=True, step_size=step_size)
    if method == "fgsm-prior":
        return FGSM(model, eps=eps, step_size=step_size or PRIOR_STEP * eps)
    raise ValueError(f"unknown adversarial training method {method!r}; choose one of {METHODS}")


class PriorStart:
    """Runs ``attack`` on each training example from where its last perturbation ended.

    Keeps one perturbation per example of the dataset, indexed by position, in host memory
    whatever the device; before an example's first visit it is uniform in the eps-ball
    (FGSM-RS's start).

    Args:
        attack: the step to take (its ``eps`` bounds the perturbations).
        shape: shape of the dataset's image tensor ``[N, ...]``.
    """

    def __init__(self, attack: Attack, shape: torch.Size) -> None:
        self.attack = attack
        eps = attack.eps
        self.memory = torch.empty(shape, dtype=torch.float16).uniform_(-eps, eps)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> torch.Tensor:
        # the attack projects its start onto the eps-ball within [0, 1]
        prior = self.memory[indices].to(images.device, torch.float32)
        adv = self.attack(images, labels, start=images + prior)
        self.memory[indices] = (adv - images).to("cpu", self.memory.dtype)
        return adv


def training_perturbation(method: Method | str, attack: Attack, dataset: TensorDataset) -> Perturb:
    """What replaces each mini-batch during adversarial training with ``method``."""
    if method == "fgsm-prior":
        return PriorStart(attack, dataset.tensors[0].shape)
    return lambda images, labels, _indices: attack(images, labels)


def check_noise(accuracy: float, n: int) -> float:
    """Two standard errors of an accuracy measured on ``n`` images (binomial).

    A checkpoint whose check accuracy is within this of the best is not measurably worse.
    """
    return 2 * math.sqrt(accuracy * (1 - accuracy) / max(n, 1))


def _check(
    model: nn.Module, check_set: TensorDataset, eps: float, seed: int
) -> tuple[float, float]:
    clean = evaluate(model, check_set, attack="none", seed=seed).accuracy
    robust = evaluate(model, check_set, attack="pgd", eps=eps, steps=CHECK_STEPS, seed=seed)
    return clean, robust.accuracy


def divergence(start: dict[str, Any], entry: dict[str, Any], classes: int, n: int) -> str | None:
    """Why the checked ``entry`` shows a diverged run, judged against the ``start`` (epoch 0),
    or None. ``classes`` sets chance accuracy; ``n`` is the check's size (its noise)."""
    clean, start_clean = entry["check_clean_accuracy"], start["check_clean_accuracy"]
    chance = 1 / classes
    near_chance = chance + check_noise(chance, n)
    if not math.isfinite(entry["loss"]):
        return f"the loss became {entry['loss']}"
    if start_clean > near_chance >= clean:
        return f"clean check accuracy fell to chance ({clean:.3f}; start {start_clean:.3f})"
    if clean < start_clean - DIVERGED_CLEAN_DROP:
        return f"clean check accuracy fell from {start_clean:.3f} to {clean:.3f}"
    return None


def adversarial_train(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    method: Method | str,
    eps: float,
    step_size: float | None,
    steps: int,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: Optimizer | str,
    warmup: float,
    seed: int,
    max_seconds: float | None,
    check_size: int,
    progress: bool = True,
    bf16: bool = False,
) -> TrainResult:
    """Adversarially train ``model`` in place and return the best checkpoint.

    The learning rate climbs linearly over the first ``warmup`` fraction of the run, then decays
    along a cosine; the run is ``epochs`` or ``max_seconds``, whichever ends first (a run that
    follows the clock is reproducible only without ``max_seconds``).
    Every mini-batch is replaced by its adversarial examples (pure adversarial training, as
    Madry et al.). The check set is the first ``check_size`` images of a seeded permutation of
    ``dataset``.

    Args:
        model: the starting point: a trained model to fine-tune, or a fresh one.
        dataset: training images and labels.
        method: ``pgd``, ``fgsm-rs`` or ``fgsm-prior``.
        eps: L-inf radius trained against.
        step_size: the attack's step; None for the method's default.
        steps: PGD steps (``pgd`` only).
        epochs: passes over ``dataset``.
        batch_size: mini-batch size.
        lr: peak learning rate (:data:`DEFAULT_LR` holds each optimizer's default).
        optimizer: ``sgd`` or ``adam`` (:func:`make_optimizer`).
        warmup: fraction of the run spent climbing to ``lr``, in [0, 1).
        seed: seeds data order, random starts and the check set: same inputs, same model.
        max_seconds: stop after the mini-batch during which this budget ran out, check, and
            return the best checkpoint so far.
        check_size: images of the catastrophic-overfitting check.
        progress: show a tqdm bar on stderr.
        bf16: craft the examples and run the forward pass under CPU bfloat16 autocast (about
            1.4x the samples per second on CPUs with AVX512-BF16 or AMX); the check stays
            float32.

    Raises:
        ValueError: unknown method, empty dataset or invalid numbers.
    """
    validate(dataset, epochs, batch_size, lr)
    if check_size < 1:
        raise ValueError(f"check_size must be >= 1, got {check_size}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")
    attack = make_training_attack(method, model, eps=eps, step_size=step_size, steps=steps)
    deadline = Deadline(max_seconds)
    images, labels = dataset.tensors[0], dataset.tensors[1]
    check_idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 7))
    check_idx = check_idx[: min(check_size, len(labels))]
    check_set = TensorDataset(images[check_idx], labels[check_idx])
    updater = make_optimizer(optimizer, model.parameters(), lr)
    total_steps = epochs * steps_per_epoch(dataset, batch_size)
    classes = int(labels.max()) + 1
    clean, robust = _check(model, check_set, eps, seed)
    start = {
        "epoch": 0,
        "samples": 0,
        "check_clean_accuracy": clean,
        "check_pgd_accuracy": robust,
        "seconds": deadline.elapsed,
    }
    log_epoch(f"{method} start", start)
    history: list[dict[str, Any]] = [start]
    best: dict[str, Any] = start
    best_state = copy.deepcopy(model.state_dict())
    stopped = False
    step = 0
    top = robust  # the best check so far, the start's included
    top_trained = 0.0  # the best check of a trained epoch (the collapse guard's reference)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        perturb = training_perturbation(method, attack, dataset)
        generator = torch.Generator().manual_seed(seed)
        for epoch in range(1, epochs + 1):
            model.train()
            desc = f"{method} epoch {epoch}/{epochs}"
            result = train_epoch(
                model,
                updater,
                dataset,
                generator,
                batch_size=batch_size,
                lr=lr,
                step=step,
                total_steps=total_steps,
                deadline=deadline,
                desc=desc,
                progress=progress,
                schedule_by_clock=True,
                perturb=perturb,
                metric="adv_acc",
                bf16=bf16,
                warmup=warmup,
            )
            step, stopped = result.step, result.stopped
            if result.diverged:
                reason = f"the loss became {result.loss} after {result.samples} samples"
                raise TrainingDiverged(epoch, result.lr, lr, reason)
            clean, robust = _check(model, check_set, eps, seed)
            entry = {
                "epoch": epoch,
                "samples": result.samples,
                "loss": result.loss,
                "train_adv_accuracy": result.accuracy,
                "check_clean_accuracy": clean,
                "check_pgd_accuracy": robust,
                "seconds": deadline.elapsed,
            }
            history.append(entry)
            log_epoch(desc, entry)
            why = divergence(start, entry, classes, len(check_set))
            if why is not None:
                raise TrainingDiverged(epoch, result.lr, lr, why)
            top, top_trained = max(robust, top), max(robust, top_trained)
            # Later checkpoints have seen more data and a lower learning rate: keep the latest
            # unless it is worse than the best so far by more than the check's own noise.
            if robust >= top - check_noise(top, len(check_set)):
                best = entry
                best_state = copy.deepcopy(model.state_dict())
            if robust < top_trained - COLLAPSE_DROP:
                entry["catastrophic_overfitting"] = True
                stopped = True
            if stopped:
                break

    model.load_state_dict(best_state)
    model.eval()
    finished = epoch == epochs and history[-1]["samples"] == len(dataset)
    return TrainResult(
        model=model,
        history=history,
        stopped_early=stopped and not finished,
        seconds=deadline.elapsed,
        best=best,
    )
