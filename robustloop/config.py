"""The one configuration model: ``robustloop.yaml``.

Every component reads its section from here; alert rules, the Alertmanager config, the Helm
chart's copies and the workflow's default parameters are generated from it. Every field has a
default and a description: ``robustloop init`` writes the defaults, the CLI's ``--help`` and the
config table in docs/configuration.md are generated from the descriptions.

This module imports pydantic and yaml only (the webhook image loads it and has no torch).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

DEFAULT_CONFIG_PATH = Path("robustloop.yaml")

# The names a user may write in the file. The components own what the names mean, each with its
# own registry (training.METHODS, training.OPTIMIZERS, training.DEVICES); tests/test_config.py
# checks that each registry and its type here name the same choices. The CLI offers these as
# choices without importing torch.
Method = Literal["pgd", "fgsm-rs", "fgsm-prior"]
"""Adversarial training methods by name."""
Device = Literal["auto", "cpu", "cuda"]
"""Where models train, are attacked, evaluated and served."""
Optimizer = Literal["sgd", "adam"]
"""Optimizers of adversarial training by name."""
Precision = Literal["auto", "fp32", "bf16"]
"""Arithmetic of adversarial training."""
Recipe = Literal["standard", "captured"]
"""What a remediation fine-tunes on: the training split alone (standard), or the traffic the
model server captured, mixed with the training split (captured)."""


def choices(names: Any) -> tuple[str, ...]:
    """The choices of a ``Literal`` type above, e.g. ``choices(Method)``."""
    return tuple(get_args(names))


Eps = Annotated[float, Field(gt=0, le=1)]
"""An L-inf radius in pixel units: pixels are in [0, 1], so a radius is in (0, 1]. The one rule
for every eps, in the file, on the command line and in workflow parameters (:func:`check_eps`)."""
_EPS = TypeAdapter(Eps)


def check_eps(value: float) -> float:
    """``value`` if it is a valid eps (:data:`Eps`).

    Raises:
        ValueError: it is not; the message states the rule.
    """
    try:
        return float(_EPS.validate_python(value))
    except ValidationError:
        raise ValueError(f"eps must be in (0, 1] (pixels are in [0, 1]), got {value}") from None


def attack_eps(config: RobustloopConfig) -> float:
    """The eps a simulated attacker uses by default: ``stack.attack_eps``, else the eps the
    model is hardened against (``remediation.eps``)."""
    if config.stack.attack_eps is not None:
        return config.stack.attack_eps
    return config.remediation.eps


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message says what to fix."""


class _Section(BaseModel):
    """Base of every section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    format: Literal["fashion-mnist", "imagefolder", "npz"] = Field(
        "fashion-mnist",
        description="fashion-mnist: the four IDX files; imagefolder: root/train/<class>/* and "
        "root/test/<class>/* (PNG or JPEG); npz: one file with x_train, y_train, x_test, y_test "
        "and optionally class_names.",
    )
    root: Path = Field(
        Path("/usr/share/datasets/fashion-mnist"),
        description="Folder (fashion-mnist, imagefolder) or .npz file. The default is where the "
        "Debian package dataset-fashion-mnist installs the IDX files.",
    )
    image_size: tuple[Annotated[int, Field(ge=4)], Annotated[int, Field(ge=4)]] | None = Field(
        None,
        description="[H, W]: imagefolder images are resized to it; null = as stored (all one "
        "size).",
    )
    channels: Literal[1, 3] | None = Field(
        None,
        description="1 or 3: imagefolder images are converted to it; null = as stored.",
    )
    seed: int = Field(0, description="Seed of the deterministic train/eval/traffic split.")
    eval_size: int = Field(
        5000,
        ge=100,
        description="Images of the official test set held out for evaluation and the gate only.",
    )
    traffic_size: int = Field(
        5000,
        ge=100,
        description="Images of the official test set that clients send (canaries included); "
        "disjoint from the eval split.",
    )
    train_limit: int | None = Field(
        None,
        ge=100,
        description="Use only the first N training images (after shuffling); null = all.",
    )


class Normalization(_Section):
    mean: list[float] = Field(..., min_length=1, description="Per-channel mean.")
    std: list[Annotated[float, Field(gt=0)]] = Field(
        ..., min_length=1, description="Per-channel standard deviation (> 0)."
    )


class ModelConfig(_Section):
    name: str = Field(
        "fashion-cnn",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Served model name (the OIP v2 model name, the `model` label on every metric "
        "and alert, the Argo mutex key).",
    )
    architecture: str = Field(
        "cnn",
        pattern=r"^(cnn|wide-cnn|torchvision:\w+|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="cnn: the paper's reference CNN (conv32, conv64, fc128, fc K); wide-cnn: "
        "twice the width; torchvision:NAME (e.g. torchvision:resnet18); or "
        "package.module:function, your factory, called with in_channels, num_classes and "
        "image_size (this imports and runs your code).",
    )
    python_path: list[str] = Field(
        default_factory=list,
        description="Folders put on sys.path before a package.module:function is imported.",
    )
    normalize: Normalization | None = Field(
        None,
        description="{mean: [...], std: [...]}, one value per channel, applied inside the model "
        "(inputs, attacks and eps stay pixels in [0, 1]); null = none.",
    )


class StoreConfig(_Section):
    path: Path = Field(
        Path(".robustloop/store"),
        description="Folder of the versioned model store (manifests, weights, production pointer).",
    )


class TrainingConfig(_Section):
    epochs: int = Field(3, ge=1, description="Epochs of standard (undefended) training.")
    batch_size: int = Field(128, ge=1, description="Mini-batch size for training.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    seed: int = Field(0, description="Seed of weight initialisation and data order.")
    threads: int = Field(
        0, ge=0, description="torch CPU threads for training and attacks; 0 = torch's default."
    )


class RemediationConfig(_Section):
    method: Method = Field(
        "fgsm-prior",
        description="Adversarial training: pgd (Madry et al. 2018); fgsm-rs, FGSM with a "
        "random start ('fast' AT, Wong, Rice and Kolter 2020); fgsm-prior, FGSM that starts "
        "each example where its previous epoch's perturbation ended (as ATTA, Zheng et al. "
        "2020): no slower than fgsm-rs, and in the one-minute remediation a point more "
        "PGD-20 accuracy under sgd (5 under adam).",
    )
    eps: Eps = Field(0.1, description="L-inf radius trained against.")
    step_size: float | None = Field(
        None,
        gt=0,
        description="Attack step size; null = 2.5*eps/steps for PGD, 1.25*eps for FGSM-RS, "
        "0.75*eps for FGSM-prior.",
    )
    steps: int = Field(7, ge=1, description="PGD steps per training example (pgd only).")
    epochs: int = Field(3, ge=1, description="Epochs of adversarial fine-tuning.")
    max_seconds: float | None = Field(
        60.0,
        gt=0,
        description="Stop training cleanly after this many seconds, keeping the best checkpoint.",
    )
    warm_start: bool = Field(
        True,
        description="Fine-tune the production model (true) or train from scratch (false).",
    )
    check_size: int = Field(
        512,
        ge=32,
        description="Training images used each epoch to check PGD accuracy (catastrophic "
        "overfitting guard; the best checkpoint is kept).",
    )
    optimizer: Optimizer = Field(
        "sgd",
        description="sgd: SGD with Nesterov momentum 0.9, the optimizer of 'fast' AT (Wong et "
        "al. 2020); adam: Adam. In the one-minute remediation, sgd with the warm-up reaches "
        "about 8 points more PGD-20 accuracy than adam without it (docs/training.md).",
    )
    lr: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of adversarial training; null = the optimizer's "
        "default (0.1 for sgd, 3e-3 for adam).",
    )
    warmup: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Fraction of the run (steps, or the clock's budget if that ends first) over "
        "which the learning rate climbs linearly to its peak before the cosine decay.",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Mini-batch size of adversarial training (64: twice the updates of 128 "
        "for the same samples at the same samples per second; 3 to 5 points more PGD-20 "
        "accuracy from one epoch, docs/training.md).",
    )
    precision: Precision = Field(
        "auto",
        description="bf16: craft the examples and run the forward pass under bfloat16 "
        "autocast (weights stay float32); auto = bf16 where the device computes it natively "
        "(AVX512-BF16 or AMX CPUs, Ampere or later GPUs), else fp32. The recipe converges in "
        "both. Evaluation and the gate always run in float32.",
    )
    recipe: Recipe = Field(
        "standard",
        description="standard: adversarial fine-tuning on the training split; captured: on the "
        "traffic the model server captured (capture.*), mixed with the training split, and the "
        "gate also judges the captured held-out part. CanaryAccuracyEscalated selects captured "
        "for its runs (docs/training.md).",
    )


class GateConfig(_Section):
    attack_steps: int = Field(20, ge=20, description="PGD steps of the gate's attack (>= 20).")
    restarts: int = Field(
        1, ge=1, description="PGD random starts of the gate's attack (1 = one random start)."
    )
    eps: Eps | None = Field(None, description="Gate eps; null = the remediation eps.")
    n: int = Field(
        500, ge=100, description="Held-out eval images the gate judges on (<= data.eval_size)."
    )
    min_robust_gain: float = Field(
        0.05, ge=0, description="Robust accuracy must rise by at least this (absolute)."
    )
    max_clean_drop: float = Field(
        0.10, ge=0, description="Clean accuracy may fall by at most this (absolute)."
    )
    max_captured_drop: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Captured recipe: accuracy on the held-out captured examples may fall by at "
        "most this below production's (absolute, on the paired examples; 0 = not worse).",
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance level of the paired (McNemar) tests."
    )


class RolloutConfig(_Section):
    watch_seconds: float = Field(
        120.0, ge=0, description="After a promotion, watch canary accuracy this long."
    )
    max_consecutive_rollbacks: int = Field(
        2, ge=0, description="Stop automatic rollbacks after this many in a row, and say so."
    )
    prometheus_url: str = Field(
        "http://127.0.0.1:9090",
        description="Prometheus the post-rollout guard queries for canary accuracy, and whose "
        "loaded rules a promotion waits for.",
    )
    rules_wait_seconds: float = Field(
        180.0,
        ge=0,
        description="Before production moves to a new version, wait at most this long for "
        "Prometheus to load the rules calibrated for it (else nothing is promoted); "
        "0 = do not wait (the rules are published, then production moves).",
    )
    poll_seconds: float = Field(
        10.0, gt=0, description="How often the post-rollout guard looks at canary accuracy."
    )
    min_canary_samples: int = Field(
        50,
        ge=1,
        description="Canary feedback needed per version before the guard judges (else it keeps).",
    )


Squeezer = Literal["bit-depth", "median-2x2"]
"""A squeezer of the squeeze score (serving.signals.SQUEEZERS)."""
_DEFAULT_SQUEEZERS: list[Squeezer] = ["bit-depth"]


class ServingConfig(_Section):
    host: str = Field("127.0.0.1", description="Model server bind address.")
    port: int = Field(8080, ge=0, le=65535, description="Model server port (0 = any free port).")
    max_batch: int = Field(256, ge=1, description="Largest batch (N) one infer request may hold.")
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest request body; larger gets 413. Each request is also held to what "
        "its largest legal form needs (max_batch images of the served model as JSON, 24 bytes "
        "a value: 4.9 MB for 28x28 gray images), and its JSON values are counted before it is "
        "parsed, so the memory a request costs is bounded by what is legal.",
    )
    squeeze_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Fraction of requests on which the feature-squeezing score is computed "
        "(one extra forward pass per squeezer; bench/serving.py measures the overhead).",
    )
    squeeze_bits: int = Field(
        2,
        ge=1,
        le=8,
        description="Bit depth of the bit-depth squeezer. 2 suits Fashion-MNIST (docs/alerts.md); "
        "a dataset with finer detail wants more (Xu et al. used 1 for MNIST, 5 for CIFAR-10): "
        "calibrate and measure detection with your data.",
    )
    squeezers: list[Squeezer] = Field(
        default_factory=lambda: _DEFAULT_SQUEEZERS.copy(),
        min_length=1,
        description="Squeezers of the squeeze score (the maximum over them). median-2x2 also "
        "reacts to natural noise, so that drift looks like an attack (docs/alerts.md).",
    )
    feedback_ttl_seconds: float = Field(
        600.0,
        gt=0,
        description="How long a prediction waits for its ground-truth feedback; with "
        "feedback_signing_key_file, how long its signed sample id is valid (later is a 410).",
    )
    feedback_max_entries: int = Field(
        100_000,
        ge=1,
        description="Bound of the map of predictions awaiting feedback (when full, the client "
        "holding the most gives up its oldest), of the signed sample ids remembered against "
        "replay (the same rule), and of the entries of one feedback request.",
    )
    feedback_rate_per_client: float = Field(
        500.0,
        ge=0,
        description="Feedback labels one client (address) may send per second, on average; "
        "more gets 429 with Retry-After, nothing counted. 0 = no limit.",
    )
    feedback_burst_per_client: int = Field(
        5000,
        ge=1,
        description="Feedback labels one client may send at once (its token bucket's size); "
        "a feedback request with more entries is refused (400).",
    )
    threads: int = Field(
        1,
        ge=0,
        description="torch CPU threads of the model server; 0 = torch's default (one per core). "
        "A request is a small batch that one thread serves as fast; more threads per request "
        "compete with concurrent requests and with training on the same machine.",
    )
    http_threads: int = Field(
        8,
        ge=1,
        le=64,
        description="Requests one model server process handles at once (its threads share "
        "the process's metrics and, without feedback_signing_key_file, its feedback map).",
    )
    feedback_token_file: Path | None = Field(
        None,
        description="File holding the bearer token that feedback must carry, a credential "
        "separate from inference (a client that may classify must not be able to forge canary "
        "accuracy); null = feedback is open: only on a network trusted labellers alone reach.",
    )
    feedback_signing_key_file: Path | None = Field(
        None,
        description="File holding a secret of at least 32 characters, read at start, with "
        "which the server signs each prediction's sample id (HMAC-SHA256 over the model, the "
        "version, the predicted class, an expiry and a nonce): feedback is then judged from "
        "the id alone, by any replica that holds the same key, so replicas behind one Service "
        "need no session affinity. null = each process remembers its own predictions, and "
        "feedback must reach the process that made them.",
    )
    reload_interval_seconds: float = Field(
        1.0, gt=0, description="How often the server checks the production pointer."
    )


class CaptureConfig(_Section):
    enabled: bool = Field(
        False,
        description="Keep the input of each classified image until its ground truth is fed "
        "back, then write (input, label) to `path`, for the captured recipe. Off by default: "
        "captured inputs are user data kept on disk (docs/serving.md).",
    )
    path: Path = Field(
        Path(".robustloop/captured"),
        description="Folder of the captured set (chunk files listed with their sha256 in "
        "manifest.json): the model server writes it, the captured recipe and the gate read it.",
    )
    max_examples: int = Field(
        20_000,
        ge=1,
        description="The captured set keeps at most this many examples, the oldest dropped first.",
    )
    retention_seconds: float = Field(
        7 * 86400.0,
        gt=0,
        description="Examples older than this are dropped when the server writes and ignored "
        "when the set is read.",
    )
    chunk_examples: int = Field(
        256,
        ge=1,
        description="Labelled examples wait in memory until this many are ready (or "
        "flush_seconds have passed), then go to disk as one chunk file.",
    )
    flush_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest wait of a labelled example in memory before it is written (and "
        "what a crash of the server can lose).",
    )
    max_pending_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Memory for inputs awaiting their ground truth (each waits at most "
        "serving.feedback_ttl_seconds); when full, the oldest are dropped and never captured.",
    )
    holdout_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Fraction of the captured examples held out for the gate and never trained "
        "on (chosen by a hash of each example's id, so an example keeps its side).",
    )
    mix: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of captured training examples (repeated as needed) in the captured "
        "recipe's fine-tuning set; the rest is drawn from the training split.",
    )
    min_examples: int = Field(
        100,
        ge=1,
        description="The captured recipe fails with fewer captured training examples than this.",
    )
    min_holdout: int = Field(
        20,
        ge=1,
        description="The captured recipe fails with fewer held-out captured examples than this "
        "(the gate judges the candidate on them).",
    )


class SignalAlert(_Section):
    enabled: bool = Field(True, description="Whether this signal can alert.")
    threshold: float = Field(..., description="Alert threshold (meaning depends on `mode`).")
    mode: Literal["absolute", "relative"] = Field(
        "absolute",
        description="absolute: compare the window's value with `threshold`; relative: with "
        "baseline * threshold (canary) or baseline + threshold (label-free).",
    )
    baseline: float | None = Field(
        None, description="Clean baseline of the signal (written by `robustloop calibrate`)."
    )
    window: str = Field(
        "30s", description="PromQL range of the comparison window (a Prometheus duration)."
    )
    for_: str = Field(
        "10s", alias="for", description="How long the condition must hold (a Prometheus duration)."
    )
    severity: Literal["critical", "warning", "info"] = Field(
        "critical", description="The alert's severity label."
    )
    min_rate: float = Field(
        0.5,
        ge=0,
        description="Minimum samples per second in the window below which the signal says nothing.",
    )
    remediate: bool = Field(
        True,
        description='Label the alert remediation="adversarial-training", so that the receiver '
        'may start a remediation; false = remediation="none", notify only.',
    )

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False
    )

    @model_validator(mode="after")
    def _check(self) -> SignalAlert:
        for name, value in (("window", self.window), ("for", self.for_)):
            if not _PROM_DURATION.fullmatch(value) or (name == "window" and _all_zero(value)):
                raise ValueError(
                    f"{name} {value!r} is not a Prometheus duration such as 30s, 1m or 1m30s"
                    + (" (and must not be zero)" if name == "window" else "")
                )
        if self.mode == "relative" and self.baseline is None:
            raise ValueError(
                "mode relative needs a baseline: run `robustloop calibrate` or set baseline"
            )
        return self


_PROM_DURATION = re.compile(r"(?=\d)(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")


_DURATION_PART = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "y": 365 * 86400.0,
}


def duration_seconds(duration: str) -> float:
    """Seconds in a Prometheus duration such as ``30s``, ``1m30s`` or ``500ms``.

    The config model checks the syntax; this only adds the parts up.
    """
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(duration))


SAMPLES_PER_WINDOW = 4
"""A signal's window holds at least this many scrapes: ``rate()`` needs two samples in its
window, and Prometheus advises four so that one missed scrape does not empty it."""


def _all_zero(duration: str) -> bool:
    return not any(c in "123456789" for c in duration)


class CanaryAlert(SignalAlert):
    escalate_after: str | None = Field(
        None,
        description="CanaryAccuracyEscalated: when canary accuracy has stayed below its "
        "threshold this long without the squeeze signature (no AdversarialAttackDetected: "
        "natural drift, or an attack that keeps the squeeze score flat), remediate with the "
        "captured recipe (needs capture.enabled). A Prometheus duration longer than `for`; "
        "null = never (the canary alert only notifies).",
    )

    @model_validator(mode="after")
    def _check_escalation(self) -> CanaryAlert:
        after = self.escalate_after
        if after is None:
            return self
        if not _PROM_DURATION.fullmatch(after) or _all_zero(after):
            raise ValueError(f"escalate_after {after!r} is not a Prometheus duration such as 10m")
        if duration_seconds(after) <= duration_seconds(self.for_):
            raise ValueError(
                f"escalate_after {after} must be longer than for {self.for_}: the escalation "
                "follows a CanaryAccuracyDegraded that persists"
            )
        return self


def _canary() -> CanaryAlert:
    return CanaryAlert(threshold=0.6, window="15s", remediate=False, **{"for": "3s"})


def _entropy() -> SignalAlert:
    return SignalAlert(threshold=0.35, window="30s", remediate=False, **{"for": "10s"})


def _squeeze() -> SignalAlert:
    return SignalAlert(threshold=0.25, window="30s", **{"for": "10s"})


_SIGNAL_DEFAULTS: dict[str, Callable[[], SignalAlert]] = {
    "canary_accuracy": _canary,
    "entropy": _entropy,
    "squeeze": _squeeze,
}


class HealthAlerts(_Section):
    enabled: bool = Field(
        True,
        description="Render the loop's own alerts (group robustloop.health): a served version "
        "without calibration, failed hot reloads, refused or stuck submissions, a stopped "
        "dispatcher, a receiver Prometheus does not see. Notification only.",
    )
    uncalibrated_for: str = Field(
        "5m",
        description="RobustloopServedVersionUncalibrated: how long the served version may differ "
        "from alerts.calibrated_version (the label-free alerts judge nothing meanwhile).",
    )
    submission_pending_for: str = Field(
        "10m",
        description="RobustloopRemediationNotSubmitted: how long a decided remediation may wait "
        "for the workflow engine to accept it.",
    )
    dispatcher_silent_for: str = Field(
        "2m",
        description="RobustloopDispatcherStalled: how long the receiver's dispatcher may go "
        "without completing a pass.",
    )

    @model_validator(mode="after")
    def _check(self) -> HealthAlerts:
        for name in ("uncalibrated_for", "submission_pending_for", "dispatcher_silent_for"):
            value = getattr(self, name)
            if not _PROM_DURATION.fullmatch(value) or _all_zero(value):
                raise ValueError(f"{name} {value!r} is not a Prometheus duration such as 5m")
        return self


class AlertsConfig(_Section):
    canary_accuracy: CanaryAlert = Field(
        default_factory=_canary,
        description="Labelled canary accuracy (feedback counters): alert when below threshold "
        "(notification only by default: an attack and natural drift both lower it; see "
        "escalate_after).",
    )
    entropy: SignalAlert = Field(
        default_factory=_entropy,
        description="Mean normalised softmax entropy: alert when above threshold.",
    )
    squeeze: SignalAlert = Field(
        default_factory=_squeeze,
        description="Mean feature-squeezing score: alert when above threshold.",
    )
    attack_signature: bool = Field(
        True,
        description="Render AdversarialAttackDetected, which remediates: canary accuracy below "
        "its threshold while the squeeze score is above its own. As fast as the canary alert, "
        "and silent under natural drift, which lowers accuracy without raising the squeeze score.",
    )
    false_alarms_per_hour: float = Field(
        0.1, gt=0, description="Target false-alarm rate used by `robustloop calibrate`."
    )
    expected_rate: float = Field(
        10.0,
        gt=0,
        description="Expected classified images per second on clean traffic, used by "
        "`robustloop calibrate`.",
    )
    calibrated_version: str | None = Field(
        None,
        description="Model version the label-free thresholds were calibrated for (written by "
        "`robustloop calibrate`); their alerts judge only this version. null = every version.",
    )
    health: HealthAlerts = Field(
        default_factory=HealthAlerts, description="The loop's own alerts (notification only)."
    )
    scrape_interval: str = Field(
        "1s",
        description="How often Prometheus scrapes the model server (the embedded stack's "
        "stack.scrape_interval; on a cluster its ServiceMonitor's, 30s in the chart's rules). "
        "Every signal's window must hold at least 4 scrapes: rate() needs two samples in its "
        "window, and one missed scrape must not empty it.",
    )
    group_wait: str = Field(
        "1s", description="Alertmanager: wait before the first notification of a new group."
    )
    group_interval: str = Field(
        "1m",
        description="Alertmanager: wait before notifying about changes of a group. Every "
        "remediating alert keeps firing for the longer of this and group_wait after its "
        "condition clears (the rules' keep_firing_for), so that an episode shorter than "
        "Alertmanager's wait still reaches the receiver.",
    )
    repeat_interval: str = Field(
        "1h", description="Alertmanager: re-send a still-firing group after this long."
    )
    runbook_base_url: str = Field(
        "https://github.com/robustloop/robustloop/blob/main/alert_rules/RUNBOOK.md",
        description="Base of every alert's runbook_url annotation.",
    )
    receiver_url: str = Field(
        "http://127.0.0.1:9095/api/v1/alerts",
        description="Where Alertmanager delivers remediation alerts (the webhook receiver).",
    )
    credentials_file: str = Field(
        "webhook-token",
        description="File Alertmanager reads the receiver's bearer token from.",
    )

    @model_validator(mode="before")
    @classmethod
    def _partial_signal_sections(cls, data: Any) -> Any:
        """A signal's section overrides only the keys it names; the others keep that signal's
        own defaults, not the generic ones of a signal alert (a canary section that names only
        ``escalate_after`` must not make the canary alert remediate, nor need a threshold)."""
        if not isinstance(data, dict):
            return data
        merged = dict(data)
        for name, default in _SIGNAL_DEFAULTS.items():
            given = merged.get(name)
            if isinstance(given, dict):
                base = default().model_dump(by_alias=True)
                if "for_" in given:
                    base.pop("for")
                merged[name] = {**base, **given}
        return merged

    @model_validator(mode="after")
    def _check_durations(self) -> AlertsConfig:
        for name in ("group_wait", "group_interval", "repeat_interval", "scrape_interval"):
            value = getattr(self, name)
            if not _PROM_DURATION.fullmatch(value) or _all_zero(value):
                raise ValueError(f"{name} {value!r} is not a duration such as 1s, 5m or 1h")
        least = SAMPLES_PER_WINDOW * duration_seconds(self.scrape_interval)
        for name in ("canary_accuracy", "entropy", "squeeze"):
            window = getattr(self, name).window
            if duration_seconds(window) < least:
                raise ValueError(
                    f"{name}.window {window} holds fewer than {SAMPLES_PER_WINDOW} scrapes at "
                    f"scrape_interval {self.scrape_interval}: its rate() would be empty and "
                    f"the alert could never fire; make the window at least {least:g}s"
                )
        return self

    @property
    def label_free_enabled(self) -> bool:
        """Whether a label-free alert (entropy, squeeze) is on: those judge only
        ``calibrated_version``."""
        return self.entropy.enabled or self.squeeze.enabled

    def for_scrape_interval(self, interval: str) -> tuple[AlertsConfig, list[str]]:
        """This section for a Prometheus that scrapes every ``interval``: windows shorter than
        4 scrapes are widened to that (and ``for`` durations under one scrape raised to one).
        Returns the new section and a line per change."""
        scrape = duration_seconds(interval)
        least = SAMPLES_PER_WINDOW * scrape
        changes: list[str] = []
        update: dict[str, Any] = {"scrape_interval": interval}
        for name in ("canary_accuracy", "entropy", "squeeze"):
            signal: SignalAlert = getattr(self, name)
            widened: dict[str, str] = {}
            if duration_seconds(signal.window) < least:
                widened["window"] = f"{least:g}s"
            if duration_seconds(signal.for_) < scrape:
                widened["for_"] = interval
            for key, value in widened.items():
                old = getattr(signal, key)
                changes.append(f"alerts.{name}.{key.rstrip('_')}: {old} -> {value}")
            update[name] = signal.model_copy(update=widened)
        return AlertsConfig.model_validate(self.model_dump() | update), changes


class WebhookConfig(_Section):
    host: str = Field("127.0.0.1", description="Receiver bind address.")
    port: int = Field(9095, ge=0, le=65535, description="Receiver port (0 = any free port).")
    auth: Literal["bearer", "none"] = Field(
        "bearer", description="bearer: require a bearer token; none: no auth (explicit opt-out)."
    )
    token_file: Path | None = Field(
        None,
        description="File holding the bearer token, re-read when it changes (a rotated "
        "Kubernetes Secret); else ROBUSTLOOP_WEBHOOK_TOKEN is used (read once).",
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="Largest alert payload; larger gets 413."
    )
    allow_labels: dict[str, str] = Field(
        default_factory=lambda: {"remediation": "adversarial-training"},
        description="Only alerts carrying all these labels can start a remediation.",
    )
    models: list[str] = Field(
        default_factory=list,
        description="Models this receiver may remediate: an alert's model label must name one "
        "(each model has its own one-at-a-time slot and daily budget); empty = model.name only.",
    )
    cooldown_seconds: float = Field(
        300.0, ge=0, description="After a remediation of a model ends, ignore new incidents."
    )
    daily_budget: int = Field(
        10, ge=0, description="Remediations per model per UTC day; the rest are recorded only."
    )
    dry_run: bool = Field(False, description="Record and decide, but submit nothing.")
    db_path: Path = Field(
        Path(".robustloop/webhook.sqlite3"), description="SQLite outbox of incidents."
    )
    submit_timeout_seconds: float = Field(
        10.0, gt=0, description="Timeout of every call to the submitter."
    )
    poll_seconds: float = Field(
        5.0, gt=0, description="How often the dispatcher reads the state of submitted runs."
    )
    backoff_initial_seconds: float = Field(
        1.0, gt=0, description="First retry delay after a transient submission failure."
    )
    backoff_max_seconds: float = Field(
        300.0, gt=0, description="Retry delay cap (the delay doubles after each failure)."
    )
    lost_run_seconds: float = Field(
        300.0,
        gt=0,
        description="A submitted run that the submitter does not know after this long is failed.",
    )
    drop_resolved_after_seconds: float = Field(
        3600.0,
        gt=0,
        description="A pending submission whose alert resolved longer ago than this is dropped "
        "unsubmitted (suppressed, reason stale), e.g. after a long outage of the submitter.",
    )


class ArgoConfig(_Section):
    host: str = Field(
        "http://argo-workflows-server.argo.svc:2746",
        description="Argo Server URL: http:// for a server that serves plain HTTP (the "
        "argo-workflows Helm chart's default, here its release argo-workflows in namespace "
        "argo), https:// for one that serves TLS (Argo's own install manifests, or the chart "
        "with server.secure: true).",
    )
    namespace: str = Field("robustloop", description="Namespace the workflows run in.")
    token_file: Path | None = Field(
        None, description="File holding the Argo Server bearer token (service account token)."
    )
    verify_tls: bool = Field(
        True, description="Verify the Argo Server's TLS certificate (https:// hosts only)."
    )
    ca_file: Path | None = Field(
        None,
        description="PEM file of the CA certificate(s) the Argo Server's certificate is "
        "verified against (for a self-signed server, its own certificate); null = the "
        "system's CA bundle.",
    )


class SubmitterConfig(_Section):
    kind: Literal["local", "argo"] = Field(
        "local", description="local: the local executor; argo: the Argo Server."
    )
    argo: ArgoConfig = Field(default_factory=ArgoConfig, description="Argo Server settings.")
    runs_dir: Path = Field(
        Path(".robustloop/runs"),
        description="Where the local executor records runs (Argo-shaped Workflow JSON).",
    )


class StackConfig(_Section):
    run_dir: Path = Field(
        Path(".robustloop/run"),
        description="Folder of `robustloop up`: generated configs, TSDB, logs.",
    )
    scrape_interval: str = Field("1s", description="Prometheus scrape interval (embedded stack).")
    evaluation_interval: str = Field(
        "1s", description="Prometheus rule evaluation interval (embedded stack)."
    )
    prometheus_binary: str = Field(
        "prometheus", description="Prometheus executable (a name on PATH, or a path)."
    )
    alertmanager_binary: str = Field(
        "prometheus-alertmanager",
        description="Alertmanager executable (Debian names it prometheus-alertmanager).",
    )
    ready_timeout_seconds: float = Field(
        90.0, gt=0, description="How long `up` waits for every process to become ready."
    )
    traffic_rate: float = Field(
        10.0, gt=0, description="Requests per second the demo's client sends."
    )
    feedback_fraction: float = Field(
        0.5, ge=0, le=1, description="Fraction of demo requests whose ground truth is fed back."
    )
    clean_seconds: float = Field(
        30.0, gt=0, description="Demo: seconds of clean traffic before the attack."
    )
    attack_eps: Eps | None = Field(
        None, description="Demo: FGSM eps of the attack; null = remediation.eps."
    )
    timeout_seconds: float = Field(
        600.0, gt=0, description="Demo: give up if not recovered this long after attack start."
    )
    recovered_accuracy: float = Field(
        0.7,
        ge=0,
        le=1,
        description="Demo: attacked accuracy that counts as recovered (over the recovery window).",
    )
    recovery_window_seconds: float = Field(
        30.0,
        gt=0,
        description="Demo: the first seconds of attacked traffic the hardened model answers; "
        "their accuracy is accuracy_after, judged against recovered_accuracy.",
    )
    drift_seconds: float = Field(
        120.0, gt=0, description="Demo (--scenario drift): seconds of natural-noise traffic."
    )


class RobustloopConfig(_Section):
    """Everything robustloop reads; ``robustloop init`` writes the defaults."""

    device: Device = Field(
        "auto",
        description="Where models train, are attacked, evaluated and served: auto (a CUDA GPU "
        "where torch sees one, else the CPU), cpu or cuda. Each command's --device overrides it.",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Dataset and splits.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The served model.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Model store.")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="Standard training."
    )
    remediation: RemediationConfig = Field(
        default_factory=RemediationConfig, description="Adversarial training recipe."
    )
    gate: GateConfig = Field(default_factory=GateConfig, description="Promotion gate policy.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Post-rollout guard.")
    serving: ServingConfig = Field(default_factory=ServingConfig, description="Model server.")
    capture: CaptureConfig = Field(
        default_factory=CaptureConfig,
        description="Capture of labelled live traffic by the model server (opt-in).",
    )
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Detection rules.")
    webhook: WebhookConfig = Field(
        default_factory=WebhookConfig, description="Alertmanager webhook receiver."
    )
    submitter: SubmitterConfig = Field(
        default_factory=SubmitterConfig, description="Where remediations run."
    )
    stack: StackConfig = Field(
        default_factory=StackConfig, description="Embedded local stack (`robustloop up`)."
    )

    @model_validator(mode="after")
    def _check_escalation_needs_capture(self) -> RobustloopConfig:
        after = self.alerts.canary_accuracy.escalate_after
        if after is not None and self.alerts.canary_accuracy.enabled and not self.capture.enabled:
            raise ValueError(
                f"alerts.canary_accuracy.escalate_after {after} remediates with the captured "
                "recipe, which trains on captured traffic: set capture.enabled: true (or "
                "escalate_after: null)"
            )
        return self


def load_config(path: Path | str | None = None) -> RobustloopConfig:
    """Load and validate ``robustloop.yaml``.

    With no path, reads ``./robustloop.yaml`` if it exists and otherwise returns the defaults.
    Relative paths inside the file are kept relative to the working directory.

    Raises:
        ConfigError: the file named is missing, is not YAML, or fails validation; the message
            names the file and every offending field.
    """
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return RobustloopConfig()
        path = DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found; create one with `robustloop init --config {path}`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw: Any = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return RobustloopConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path} is invalid: {_problems(exc)}") from None


def override(config: RobustloopConfig, changes: Mapping[str, Any]) -> RobustloopConfig:
    """A new config: ``config`` with ``changes`` applied and validated; ``config`` is untouched.

    The one way command-line flags and workflow parameters change the config, so that they obey
    the same rules (ranges, choices) as the file, and a shared config is never mutated.

    Args:
        config: the config in force.
        changes: nested like the file, e.g. ``{"remediation": {"eps": 0.05}, "device": "cpu"}``.

    Raises:
        ConfigError: a change is invalid; the message names each offending field and value.
    """
    merged = _merge(config.model_dump(by_alias=True), changes)
    try:
        return RobustloopConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid setting: {_problems(exc)}") from None


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _problems(exc: ValidationError) -> str:
    def where(err: Any) -> str:
        loc = ".".join(str(p) for p in err["loc"])
        return f"{loc}: " if loc else ""  # a rule across sections names its fields itself

    return "; ".join(
        f"{where(err)}{err['msg']} (got {err['input']!r})"
        if not isinstance(err["input"], dict)
        else f"{where(err)}{err['msg']}"
        for err in exc.errors()
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (a second ``webhook:``
    block would otherwise silently replace the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def dump_config(config: RobustloopConfig) -> str:
    """Render a config as YAML with field descriptions as comments above each key."""
    lines = [
        "# robustloop configuration. Every key is optional; these are the defaults.",
        "# Reference: docs/configuration.md.",
    ]
    _dump_section(config, lines, indent=0)
    return "\n".join(lines) + "\n"


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.removesuffix("...").strip()


def _dump_section(section: BaseModel, lines: list[str], indent: int) -> None:
    pad = " " * indent
    for name, field in type(section).model_fields.items():
        key = field.alias or name
        value = getattr(section, name)
        if field.description:
            lines.append(f"{pad}# {field.description}")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{key}:")
            _dump_section(value, lines, indent + 2)
        else:
            lines.append(f"{pad}{key}: {_yaml_scalar(value)}")


def iter_fields(section: BaseModel | None = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) of every leaf field: docs/configuration.md's table."""
    section = RobustloopConfig() if section is None else section
    rows: list[tuple[str, str, str]] = []
    for name, field in type(section).model_fields.items():
        key = f"{prefix}{field.alias or name}"
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            rows.extend(iter_fields(value, key + "."))
        else:
            rows.append((key, _yaml_scalar(value), field.description or ""))
    return rows
