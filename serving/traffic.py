"""Traffic generator: clean, attacked or noisy requests of the traffic split to the model server.

``robustloop traffic`` streams images of the *traffic* split (never seen in training or by the
gate) at a steady rate, and for a fraction of its requests sends the true labels back through the
feedback endpoint, as a canary client would. Modes:

- ``clean``: the images as they are;
- ``fgsm`` / ``pgd``: a white-box, adaptive attacker (the threat model robustloop defends
  against). It reads the version the server says it serves (metadata endpoint, and each response's
  ``model_version``), loads those very weights from the model store, and crafts every request
  against that model; after a rollout it attacks the new version, not the old one;
- ``bpda``: the same white-box, adaptive attacker, aware of the detector as well
  (:class:`training.BPDA`): PGD that keeps the squeeze score and the entropy of its images near
  their clean levels, with the server's own squeezer settings (``serving.squeeze_bits``,
  ``serving.squeezers``);
- ``square``: a black-box attacker (:class:`training.Square`, the Square attack) that reads no
  weights: it asks the server's infer endpoint for the probabilities of its candidate images, at
  most ``query_budget`` queries per image, and then sends the image it settled on. Its queries
  are real requests: the server classifies them and computes their signals like any other;
- ``noise``: natural drift, Gaussian noise with standard deviation ``eps`` (default
  :data:`DEFAULT_NOISE_SIGMA`, about as harmful to an undefended CNN as a weak attack; see
  docs/serving.md), used to check that alerts do not fire on mere corruption.

In an attack mode, ``attack_fraction`` F of the requests are attacked and the others sent clean
(:class:`AttackSchedule`: spread evenly with a seeded phase, so that any n consecutive requests
hold n*F attacked ones, give or take one).

Every second it writes one JSON line: ``{"t", "mode", "version", "sent", "images", "correct",
"accuracy", "correct_fraction", "errors", "feedback", "attacked", "attacked_accuracy",
"queries"}``. ``accuracy`` and ``correct_fraction`` are the same number, the share of this
second's images the server classified correctly (attacked and clean requests together; null when
none were answered); ``attacked`` counts the requests sent attacked, ``attacked_accuracy`` is the
accuracy on their images alone, and ``queries`` counts the black-box attacker's queries (requests
it sent to choose its images, not counted in ``sent``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import requests
import torch
from torch import nn

from robustloop.config import RobustloopConfig, attack_eps, check_eps
from robustloop.tokens import read_token_file
from serving.reload import Store

log = logging.getLogger(__name__)

Mode = Literal["clean", "fgsm", "pgd", "bpda", "square", "noise"]
MODES: tuple[str, ...] = ("clean", "fgsm", "pgd", "bpda", "square", "noise")
ATTACK_MODES: tuple[str, ...] = ("fgsm", "pgd", "bpda", "square")
"""The modes that attack (the others send clean or noisy images)."""
WHITE_BOX_MODES: tuple[str, ...] = ("fgsm", "pgd", "bpda")
"""The attack modes that load the served version's weights from the store."""
DEFAULT_QUERY_BUDGET = 100
"""Queries per image of the black-box (``square``) attacker. A live attacker pays a round trip
per query, so the budget sets its pace (a hundred round trips to a server on the same machine
take about a second); a larger budget fools more images (``bench/attackers.py --queries``)."""
DEFAULT_NOISE_SIGMA = 0.3
"""Gaussian noise that costs an undefended CNN about as much accuracy as FGSM at eps 0.05
(0.83 -> 0.60 and 0.59 in bench/detection.py)."""
DEFAULT_PGD_STEPS = 10
REQUEST_TIMEOUT_SECONDS = 10.0


class TrafficError(Exception):
    """The generator cannot run as asked (bad options, no server); the message says why."""


@dataclass(frozen=True)
class TrafficOptions:
    """What ``robustloop traffic`` was asked to do."""

    url: str
    rate: float = 10.0
    duration: float = 10.0
    mode: Mode = "clean"
    eps: float | None = None
    feedback_fraction: float = 0.2
    batch: int = 1
    pgd_steps: int = DEFAULT_PGD_STEPS
    seed: int = 0
    requests: int | None = None
    """Send exactly this many requests (as fast as ``rate`` allows, however long that takes);
    None: send at ``rate`` until ``duration`` seconds have passed."""
    attack_fraction: float = 1.0
    """Attack modes: the fraction of requests attacked, in (0, 1]; the others go clean."""
    query_budget: int | None = None
    """``square``: queries per image; None: :data:`DEFAULT_QUERY_BUDGET`."""
    bpda_weight: float | None = None
    """``bpda``: weight of its squeeze-score and entropy penalties (``training.BPDA``'s
    ``squeeze_weight`` and ``entropy_weight``); None: BPDA's default. Lower hides less and harms
    more."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TrafficError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0.0 < self.attack_fraction <= 1.0:
            raise TrafficError(f"attack fraction must be in (0, 1], got {self.attack_fraction}")
        if self.attack_fraction != 1.0 and self.mode not in ATTACK_MODES:
            raise TrafficError(
                f"an attack fraction applies to the attack modes ({', '.join(ATTACK_MODES)}), "
                f"not to {self.mode}"
            )
        if self.query_budget is not None and self.mode != "square":
            raise TrafficError(f"a query budget applies to the square mode, not to {self.mode}")
        if self.query_budget is not None and self.query_budget < 1:
            raise TrafficError(f"query budget must be >= 1, got {self.query_budget}")
        if self.bpda_weight is not None and self.mode != "bpda":
            raise TrafficError(f"a BPDA weight applies to the bpda mode, not to {self.mode}")
        if self.bpda_weight is not None and not 0.0 <= self.bpda_weight < float("inf"):
            raise TrafficError(f"BPDA weight must be a number >= 0, got {self.bpda_weight}")
        if self.rate <= 0 or self.duration <= 0 or self.batch < 1:
            raise TrafficError("rate and duration must be > 0 and batch >= 1")
        if not 0.0 <= self.feedback_fraction <= 1.0:
            raise TrafficError(f"feedback fraction must be in [0, 1], got {self.feedback_fraction}")
        if self.eps is not None and self.mode != "noise":
            try:
                check_eps(self.eps)
            except ValueError as exc:
                raise TrafficError(str(exc)) from None
        if self.eps is not None and self.mode == "noise" and not 0.0 < self.eps <= 1.0:
            raise TrafficError(f"noise standard deviation must be in (0, 1], got {self.eps}")
        if self.pgd_steps < 1:
            raise TrafficError(f"steps must be >= 1, got {self.pgd_steps}")
        if self.requests is not None and self.requests < 1:
            raise TrafficError(f"requests must be >= 1, got {self.requests}")

    def strength(self, config: RobustloopConfig) -> float:
        """Attack radius (attack modes; default :func:`robustloop.config.attack_eps`) or noise
        standard deviation (noise; default :data:`DEFAULT_NOISE_SIGMA`)."""
        if self.eps is not None:
            return self.eps
        return DEFAULT_NOISE_SIGMA if self.mode == "noise" else attack_eps(config)


@dataclass
class TrafficSummary:
    """Totals of one run of the generator."""

    sent: int = 0
    images: int = 0
    correct: int = 0
    errors: int = 0
    feedback: int = 0
    attacked: int = 0
    """Requests sent attacked."""
    attacked_images: int = 0
    attacked_correct: int = 0
    queries: int = 0
    """Queries the black-box attacker sent to choose its images (not counted in ``sent``)."""
    versions: list[str] = field(default_factory=list)  # served versions, in the order seen

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.images if self.images else None

    @property
    def attacked_accuracy(self) -> float | None:
        """Accuracy on the images of the attacked requests alone."""
        return self.attacked_correct / self.attacked_images if self.attacked_images else None

    def add(self, other: TrafficSummary) -> None:
        """Add ``other``'s counts to these (versions excepted)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def reset(self) -> None:
        """Zero the counts (versions excepted)."""
        for name in _COUNTS:
            setattr(self, name, 0)


_COUNTS = (
    "sent",
    "images",
    "correct",
    "errors",
    "feedback",
    "attacked",
    "attacked_images",
    "attacked_correct",
    "queries",
)


class AttackSchedule:
    """Which requests of a run are attacked: a fraction ``F`` of them, spread evenly.

    Request ``k`` (counted from 0) is attacked when ``floor((k + 1) F + u)`` exceeds
    ``floor(k F + u)``, with a phase ``u`` in [0, 1) drawn from the seed. So any ``n``
    consecutive requests hold ``n F`` attacked ones give or take one (a Prometheus window sees
    the fraction asked for, not a random draw of it), and the same seed attacks the same
    requests.
    """

    def __init__(self, fraction: float, seed: int) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.phase = random.Random(f"attack-schedule-{seed}").random()

    def attacked(self, k: int) -> bool:
        """Whether request ``k`` is attacked."""
        f, u = self.fraction, self.phase
        return math.floor((k + 1) * f + u) > math.floor(k * f + u)


class ServerClient:
    """A keep-alive HTTP client of one model on an OIP v2 server."""

    def __init__(self, url: str, model: str, feedback_token: str | None = None) -> None:
        self.base = url.rstrip("/") + f"/v2/models/{model}"
        self.session = requests.Session()
        self.feedback_headers = (
            {"Authorization": f"Bearer {feedback_token}"} if feedback_token is not None else {}
        )

    def served_version(self) -> str | None:
        """The version the server says it serves now; None if it is not ready."""
        response = self.session.get(self.base, timeout=REQUEST_TIMEOUT_SECONDS)
        if response.status_code != 200:
            return None
        versions = response.json().get("versions") or [None]
        return str(versions[0]) if versions[0] is not None else None

    def _infer(self, images: torch.Tensor, outputs: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(images.shape),
                    "datatype": "FP32",
                    "data": images.reshape(-1).tolist(),
                }
            ]
        }
        if outputs is not None:
            body["outputs"] = [{"name": name} for name in outputs]
        response = self.session.post(
            self.base + "/infer", json=body, timeout=REQUEST_TIMEOUT_SECONDS
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def infer(self, images: torch.Tensor) -> tuple[list[int], list[str], str]:
        """Classify images; returns predicted classes, sample ids and the version that answered.

        Raises:
            requests.HTTPError: the server answered with an error status.
        """
        result = self._infer(images)
        outputs = {out["name"]: out["data"] for out in result["outputs"]}
        return outputs["predicted_class"], outputs["sample_ids"], str(result["model_version"])

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """The served model's probabilities [N, K] for ``images`` (one infer request that asks
        for the ``probabilities`` output only): the black box of :class:`training.Square`.

        Raises:
            requests.HTTPError: the server answered with an error status.
        """
        result = self._infer(images.cpu(), outputs=["probabilities"])
        (output,) = result["outputs"]
        return torch.tensor(output["data"], dtype=torch.float32).reshape(output["shape"])

    def feedback(self, ids: list[str], labels: list[int]) -> dict[str, int]:
        response = self.session.post(
            self.base + "/feedback",
            json={"ids": ids, "labels": labels},
            headers=self.feedback_headers,
            timeout=REQUEST_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        counts: dict[str, int] = response.json()
        return counts

    def close(self) -> None:
        self.session.close()


class AdaptiveAttacker:
    """Crafts adversarial images against whichever version the server serves (white-box).

    Loads each new version's weights from the store the first time it is asked to attack it,
    and keeps only the latest model.

    Args:
        store: the server's model store.
        mode: ``fgsm``, ``pgd`` or ``bpda``.
        eps: L-inf radius.
        pgd_steps: steps of ``pgd`` and ``bpda``.
        squeeze_bits: the server's ``serving.squeeze_bits`` (``bpda`` keeps that score low).
        squeezers: the server's ``serving.squeezers``.
        bpda_weight: ``bpda``'s squeeze and entropy penalty weight (None: BPDA's default).
    """

    def __init__(
        self,
        store: Store,
        mode: Mode,
        eps: float,
        pgd_steps: int,
        *,
        squeeze_bits: int | None = None,
        squeezers: tuple[str, ...] | None = None,
        bpda_weight: float | None = None,
    ) -> None:
        if mode not in WHITE_BOX_MODES:
            raise TrafficError(
                f"the adaptive attacker runs {', '.join(WHITE_BOX_MODES)}, not {mode}"
            )
        self._store = store
        self._mode = mode
        self._eps = eps
        self._steps = pgd_steps
        self._squeeze_bits = squeeze_bits
        self._squeezers = squeezers
        self._bpda_weight = bpda_weight
        self.version: str | None = None
        self._attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
        self.model: nn.Module | None = None

    @property
    def attack(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """The attack on the version last crafted against (None before the first craft)."""
        return self._attack

    def craft(self, images: torch.Tensor, labels: torch.Tensor, version: str) -> torch.Tensor:
        """Adversarial copies of ``images`` against version ``version`` of the served model.

        Raises:
            TrafficError: that version cannot be loaded from the store.
        """
        if version != self.version or self._attack is None:
            from training import BPDA, StoreError, make_attack

            try:
                model, _ = self._store.load(version)
            except StoreError as exc:
                raise TrafficError(
                    f"the attacker cannot load the served version {version}: {exc}; it needs "
                    "the server's model store (store.path in the config)"
                ) from None
            model.eval()
            attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
            if self._mode == "pgd":
                attack = make_attack("pgd", model, self._eps, steps=self._steps)
            elif self._mode == "bpda":
                detector: dict[str, Any] = {}
                if self._squeeze_bits is not None:
                    detector["bits"] = self._squeeze_bits
                if self._squeezers is not None:
                    detector["squeezers"] = self._squeezers
                if self._bpda_weight is not None:
                    detector["squeeze_weight"] = self._bpda_weight
                    detector["entropy_weight"] = self._bpda_weight
                attack = BPDA(model, eps=self._eps, steps=self._steps, **detector)
            else:
                attack = make_attack("fgsm", model, self._eps)
            self._attack, self.model, self.version = attack, model, version
            log.info("attacker now targets version %s (%s, eps %g)", version, self._mode, self._eps)
        return self._attack(images, labels)


class BlackBoxAttacker:
    """Crafts adversarial images through the server's API alone (the Square attack).

    Reads no weights and needs no store: whichever version serves answers its queries, so it
    follows a rollout without knowing of it.

    Args:
        scores: the black box, e.g. :meth:`ServerClient.scores`.
        eps: L-inf radius.
        query_budget: queries per image.
        seed: seed of the random search.
    """

    def __init__(
        self,
        scores: Callable[[torch.Tensor], torch.Tensor],
        eps: float,
        query_budget: int,
        seed: int,
    ) -> None:
        from training import Square

        self.attack = Square(scores, eps=eps, max_queries=query_budget, seed=seed)

    def craft(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Adversarial copies of ``images``; :attr:`spent` says how many queries they took.

        Raises:
            requests.RequestException: a query failed (:attr:`spent` counts those sent).
        """
        return self.attack(images, labels)

    @property
    def spent(self) -> int:
        """Infer requests the last :meth:`craft` sent (also when it failed half-way); each asks
        about the images of the batch not yet fooled, at most ``query_budget`` times each."""
        return self.attack.calls


def add_noise(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of standard deviation ``sigma``, clipped back to [0, 1]."""
    noise = torch.randn(images.shape, generator=generator) * sigma
    return (images + noise).clamp(0.0, 1.0)


def run_traffic(
    config: RobustloopConfig,
    options: TrafficOptions,
    out: IO[str],
    *,
    store: Store | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    stop: threading.Event | None = None,
) -> TrafficSummary:
    """Send traffic as ``options`` say, writing one JSON line a second to ``out``.

    The run ends after ``options.duration`` seconds even when a slow server (or slow crafting)
    kept it below ``options.rate``; with ``options.requests`` it ends after exactly that many
    requests instead.

    Args:
        config: the robustloop config (model name, data split, store path, squeezer settings).
        options: rate, duration, mode, strength, fractions, batch size, query budget.
        out: where the per-second JSON lines go.
        store: the model store the white-box attacker reads; default
            ``ModelStore(config.store.path)``.
        data: (images, labels) to send; default the config's traffic split.
        stop: set it to end the run early.

    Returns:
        The run's totals. Failed requests are counted as errors and the run goes on (the server
        may be restarting); they never end it.
    """
    strength = options.strength(config)
    options = dataclasses.replace(options, eps=strength)  # resolved once, for _send_one
    if data is None:
        from training import make_splits

        traffic = make_splits(config.data).traffic
        images_all, labels_all = traffic.tensors[0], traffic.tensors[1]
    else:
        images_all, labels_all = data
    token_file = config.serving.feedback_token_file
    token = read_token_file(token_file, "serving.feedback_token_file") if token_file else None
    client = ServerClient(options.url, config.model.name, token)
    attacker: AdaptiveAttacker | BlackBoxAttacker | None = None
    if options.mode in WHITE_BOX_MODES:
        if store is None:
            from training import ModelStore

            store = ModelStore(config.store.path)
        attacker = AdaptiveAttacker(
            store,
            options.mode,
            strength,
            options.pgd_steps,
            squeeze_bits=config.serving.squeeze_bits,
            squeezers=tuple(config.serving.squeezers),
            bpda_weight=options.bpda_weight,
        )
    elif options.mode == "square":
        budget = options.query_budget or DEFAULT_QUERY_BUDGET
        attacker = BlackBoxAttacker(client.scores, strength, budget, options.seed)
    schedule = AttackSchedule(options.attack_fraction, options.seed)
    rng = random.Random(options.seed)
    noise_gen = torch.Generator().manual_seed(options.seed)
    order = torch.randperm(len(images_all), generator=torch.Generator().manual_seed(options.seed))
    cursor = 0
    summary = TrafficSummary()
    window = TrafficSummary()
    version: str | None = None
    stop = stop or threading.Event()
    started = time.monotonic()
    next_log = started + 1.0
    next_version_check = started
    try:
        total = options.requests or int(options.rate * options.duration)
        deadline = None if options.requests else started + options.duration
        for k in range(total):
            due = started + k / options.rate
            if deadline is not None and due >= deadline:
                break
            while (now := time.monotonic()) < due and not stop.is_set():
                if now >= next_log:
                    next_log = _flush(out, options, version, window, summary, next_log)
                stop.wait(min(due, next_log) - now)
            if stop.is_set() or (deadline is not None and now >= deadline):
                break
            if now >= next_version_check:
                version = _served_version(client, version)
                next_version_check = now + 1.0
            index = order[cursor : cursor + options.batch]
            if len(index) < options.batch:
                index = torch.cat([index, order[: options.batch - len(index)]])
            cursor = (cursor + options.batch) % len(order)
            images, labels = images_all[index], labels_all[index]
            request = _Request(images, labels, attacker if schedule.attacked(k) else None)
            version = _send_one(client, options, request, version, rng, noise_gen, window)
            if version is not None and (not summary.versions or summary.versions[-1] != version):
                summary.versions.append(version)
            if time.monotonic() >= next_log:
                next_log = _flush(out, options, version, window, summary, next_log)
        if window.sent or window.errors or window.queries:
            _flush(out, options, version, window, summary, next_log)
    finally:
        client.close()
    return summary


@dataclass(frozen=True)
class _Request:
    """One request's images and labels, and the attacker that crafts it (None: not attacked)."""

    images: torch.Tensor
    labels: torch.Tensor
    attacker: AdaptiveAttacker | BlackBoxAttacker | None


def _served_version(client: ServerClient, known: str | None) -> str | None:
    try:
        return client.served_version() or known
    except requests.RequestException as exc:
        log.debug("metadata request failed: %s", exc)
        return known


def _send_one(
    client: ServerClient,
    options: TrafficOptions,
    request: _Request,
    version: str | None,
    rng: random.Random,
    noise_gen: torch.Generator,
    window: TrafficSummary,
) -> str | None:
    """Prepare and send one request; count it in ``window``. Returns the latest known version."""
    images, labels, attacker = request.images, request.labels, request.attacker
    if isinstance(attacker, AdaptiveAttacker):
        if version is None:
            window.errors += 1
            log.warning("server at %s is not ready (no version to attack yet)", options.url)
            return version
        images = attacker.craft(images, labels, version)
    elif isinstance(attacker, BlackBoxAttacker):
        try:
            images = attacker.craft(images, labels)
        except (requests.RequestException, KeyError, ValueError) as exc:
            window.queries += attacker.spent
            window.errors += 1
            log.warning("a query of the black-box attacker failed: %s", exc)
            return version
        window.queries += attacker.spent
    elif options.mode == "noise":
        assert options.eps is not None  # resolved by run_traffic
        images = add_noise(images, options.eps, noise_gen)
    window.sent += 1
    if attacker is not None:
        window.attacked += 1
    try:
        predicted, ids, answered_by = client.infer(images)
    except (requests.RequestException, KeyError, ValueError) as exc:
        window.errors += 1
        log.warning("infer request failed: %s", exc)
        return version
    truth = labels.tolist()
    correct = sum(int(p == t) for p, t in zip(predicted, truth, strict=True))
    window.images += len(truth)
    window.correct += correct
    if attacker is not None:
        window.attacked_images += len(truth)
        window.attacked_correct += correct
    if options.feedback_fraction > 0 and rng.random() < options.feedback_fraction:
        try:
            client.feedback(ids, truth)
            window.feedback += len(ids)
        except requests.RequestException as exc:
            window.errors += 1
            log.warning("feedback request failed: %s", exc)
    return answered_by


def _flush(
    out: IO[str],
    options: TrafficOptions,
    version: str | None,
    window: TrafficSummary,
    summary: TrafficSummary,
    due: float,
) -> float:
    """Write the window's JSON line, add it to the totals, reset it; returns the next due time."""
    accuracy = window.accuracy
    line: dict[str, Any] = {
        "t": round(time.time(), 3),
        "mode": options.mode,
        "version": version,
        "sent": window.sent,
        "images": window.images,
        "correct": window.correct,
        "accuracy": accuracy,
        "correct_fraction": accuracy,
        "errors": window.errors,
        "feedback": window.feedback,
        "attacked": window.attacked,
        "attacked_accuracy": window.attacked_accuracy,
        "queries": window.queries,
    }
    out.write(json.dumps(line) + "\n")
    out.flush()
    summary.add(window)
    window.reset()
    now = time.monotonic()
    return due + 1.0 if due + 1.0 > now else now + 1.0


def open_log(path: Path | None) -> IO[str]:
    """The per-second log: ``path`` opened for appending, or stdout."""
    if path is None:
        return sys.stdout
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8")


__all__ = [
    "ATTACK_MODES",
    "DEFAULT_NOISE_SIGMA",
    "DEFAULT_QUERY_BUDGET",
    "MODES",
    "WHITE_BOX_MODES",
    "AdaptiveAttacker",
    "AttackSchedule",
    "BlackBoxAttacker",
    "Mode",
    "ServerClient",
    "TrafficError",
    "TrafficOptions",
    "TrafficSummary",
    "add_noise",
    "open_log",
    "run_traffic",
]
