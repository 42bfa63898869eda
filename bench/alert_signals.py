"""Would the calibrated window alerts fire under attack, and under natural drift?

For an undefended CNN (a small one trained here, or ``--model`` from the store), calibrates
window thresholds on the eval split exactly as ``robustloop calibrate`` does
(alert_rules.calibration: clean mean plus the Gaussian quantile of the window mean, for
``alerts.false_alarms_per_hour`` at ``alerts.expected_rate``), then, on the traffic split,
measures for clean traffic, FGSM, PGD and Gaussian noise (natural drift):

- the mean of each label-free signal, and its shift in units of the calibrated margin
  (``(mean - baseline) / delta``: above 1 the window alert fires on average);
- the fraction of 30 s windows whose mean exceeds the threshold (bootstrap windows of the
  expected size), i.e. how often the alert's condition holds.

Signals: the entropy, and the squeeze score (serving.signals.squeeze_score) with each squeezer
alone (``bit-depth``, the server's default; ``median``, the 2x2 median filter) and with both
(``max-both``, the maximum: ``serving.squeezers: [bit-depth, median-2x2]``), to show which
squeezer reacts to attacks and which to noise.

Run: ``.venv/bin/python bench/alert_signals.py [--model v0001]`` (about 2 minutes on 2 cores).
Prints figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine_header


def _use_repo_packages() -> None:
    """bench/serving.py would shadow the serving package: drop bench/ from sys.path."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def _signals(model: torch.nn.Module, images: torch.Tensor) -> dict[str, np.ndarray]:
    from serving.signals import normalised_entropy, squeeze_score

    out: dict[str, list[float]] = {"entropy": [], "bit-depth": [], "median": [], "max-both": []}
    with torch.inference_mode():
        for start in range(0, len(images), 500):
            x = images[start : start + 500]
            p = torch.softmax(model(x), dim=1)
            out["entropy"] += normalised_entropy(p).tolist()
            for name, squeezers in (
                ("bit-depth", ["bit-depth"]),
                ("median", ["median-2x2"]),
                ("max-both", ["bit-depth", "median-2x2"]),
            ):
                out[name] += squeeze_score(model, x, squeezers=squeezers, probs=p).tolist()
    return {k: np.asarray(v) for k, v in out.items()}


def main() -> int:
    _use_repo_packages()
    import training
    from alert_rules import duration_seconds
    from alert_rules.calibration import SignalStats, window_threshold
    from robustloop.config import RobustloopConfig
    from serving.traffic import DEFAULT_NOISE_SIGMA

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n", type=int, default=2000, help="eval and traffic images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--model", help="a version of the store (store.path) instead of training a small model"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(machine_header())

    cfg = RobustloopConfig()
    cfg.data.train_limit = args.train_limit
    cfg.data.eval_size = args.n
    cfg.data.traffic_size = args.n
    splits = training.make_splits(cfg.data)
    if args.model:
        model, manifest = training.ModelStore(cfg.store.path).load(args.model)
        print(f"model {manifest.version} from {cfg.store.path}")
    else:
        model = training.build_model("cnn")
        t0 = time.time()
        training.train_standard(
            model, splits.train, epochs=args.epochs, batch_size=128, lr=1e-3, seed=0, progress=False
        )
        print(
            f"trained on {args.train_limit} images, {args.epochs} epochs, {time.time() - t0:.0f}s"
        )
    model.eval()

    a = cfg.alerts
    window = duration_seconds(a.squeeze.window)
    rates = {
        "entropy": a.expected_rate,
        "bit-depth": a.expected_rate * cfg.serving.squeeze_fraction,
        "median": a.expected_rate * cfg.serving.squeeze_fraction,
        "max-both": a.expected_rate * cfg.serving.squeeze_fraction,
    }
    eval_x, _ = splits.eval.tensors
    clean_eval = _signals(model, eval_x)
    thresholds = {
        name: window_threshold(
            SignalStats.of(clean_eval[name].tolist()),
            window_seconds=window,
            samples_per_second=rates[name],
            false_alarms_per_hour=a.false_alarms_per_hour,
        )
        for name in rates
    }

    x, y = splits.traffic.tensors
    generator = torch.Generator().manual_seed(1)
    scenarios: dict[str, torch.Tensor] = {"clean": x}
    for eps in (0.05, 0.1):
        scenarios[f"FGSM eps {eps}"] = training.make_attack("fgsm", model, eps)(x, y)
    scenarios["PGD-10 eps 0.1"] = training.make_attack("pgd", model, 0.1, steps=10)(x, y)
    for sigma in (0.1, DEFAULT_NOISE_SIGMA):
        noise = torch.randn(x.shape, generator=generator) * sigma
        scenarios[f"noise sigma {sigma}"] = (x + noise).clamp(0, 1)

    rng = np.random.default_rng(0)
    print(
        f"\nthresholds for {a.false_alarms_per_hour:g} false alarms/h, {window:g}s windows, "
        f"{a.expected_rate:g} images/s (squeeze on {cfg.serving.squeeze_fraction:g} of them):"
    )
    for name, th in thresholds.items():
        print(f"  {name:9s} baseline {th.baseline:.4f} + {th.delta:.4f} = {th.threshold:.4f}")
    header = f"\n{'traffic':18s} {'accuracy':>8s}"
    for name in rates:
        header += f" | {name:>9s} mean  shift  P(win)"
    print(header)
    for label, images in scenarios.items():
        with torch.inference_mode():
            accuracy = (model(images).argmax(dim=1) == y).float().mean().item()
        values = _signals(model, images)
        row = f"{label:18s} {accuracy:8.3f}"
        for name, th in thresholds.items():
            n = max(1, round(th.samples_per_window))
            windows = rng.choice(values[name], size=(2000, n)).mean(axis=1)
            shift = (values[name].mean() - th.baseline) / th.delta
            fired = float((windows > th.threshold).mean())
            row += f" | {values[name].mean():14.4f} {shift:6.1f} {fired:7.2f}"
        print(row)
    print(
        "\nshift: (mean - baseline) / calibrated margin; P(win): fraction of bootstrap windows "
        "above the threshold"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
