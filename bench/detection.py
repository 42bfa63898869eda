"""How well does each label-free signal tell attacked traffic from clean traffic?

For an undefended CNN, computes on the traffic split the three signals the server exports
(normalised entropy, 1 - max probability, feature-squeezing score) for clean images and for
images under FGSM (eps 0.05 and 0.1), PGD (eps 0.1, 10 steps) and Gaussian noise, and prints the
AUROC of each signal against clean traffic: per request (one image) and for windows of 10, 50
and 100 requests (the window's mean score, as an alert rule's ``rate(_sum)/rate(_count)`` sees
it). The three signals are measured on the same images in the same run, so their AUROCs compare
directly. It also prints the accuracy under each condition, the squeeze score's AUROC for
several bit depths (which chose ``signals.DEFAULT_SQUEEZE_BITS``) and accuracy under several
noise levels (which chose the traffic generator's default noise sigma).

Run: ``.venv/bin/python bench/detection.py`` (trains a model on ``--train-limit`` images first,
or uses the production model of ``--store``). Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _machine import machine_header
from torch import nn

from robustloop.config import DataConfig

SIGNALS = ("entropy", "squeeze", "1-maxprob")


def _use_repo_packages() -> None:
    """Run as a script, bench/ comes first on sys.path and `import serving` would find
    bench/serving.py instead of the package: drop bench/ from the path."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    scores = np.concatenate([negatives, positives])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    average_rank = upper - (counts - 1) / 2.0  # 1-based mean rank of each tied group
    ranks = average_rank[inverse]
    n_neg, n_pos = len(negatives), len(positives)
    u = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_neg * n_pos))


def window_means(scores: np.ndarray, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``count`` windows of ``size`` requests drawn without replacement within each."""
    if size == 1:
        return scores
    index = np.stack([rng.choice(len(scores), size=size, replace=False) for _ in range(count)])
    return np.asarray(scores[index].mean(axis=1))


def signals_of(model: nn.Module, images: torch.Tensor, bits: int) -> dict[str, np.ndarray]:
    """The three signals per image, in batches; higher means 'more suspicious' for each."""
    from serving.signals import max_probability, normalised_entropy, squeeze_score

    parts: dict[str, list[torch.Tensor]] = {name: [] for name in SIGNALS}
    with torch.inference_mode():
        for chunk in images.split(500):
            probs = torch.softmax(model(chunk), dim=1)
            parts["entropy"].append(normalised_entropy(probs))
            parts["1-maxprob"].append(1.0 - max_probability(probs))
            parts["squeeze"].append(squeeze_score(model, chunk, bits=bits, probs=probs))
    return {name: torch.cat(values).numpy().astype(np.float64) for name, values in parts.items()}


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.inference_mode():
        predicted = torch.cat([model(c).argmax(1) for c in images.split(500)])
    return float((predicted == labels).float().mean())


def craft(
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    return torch.cat(
        [attack(x, y) for x, y in zip(images.split(250), labels.split(250), strict=True)]
    )


def get_model(args: argparse.Namespace, data: DataConfig) -> tuple[nn.Module, str]:
    from training import ModelStore, build_model, make_splits, train_standard

    if args.store is not None:
        store = ModelStore(args.store)
        version = store.production()
        if version is None:
            raise SystemExit(f"store {args.store} has no production model")
        model, _ = store.load(version)
        return model, f"production model {version} of {args.store}"
    splits = make_splits(data)
    torch.manual_seed(args.seed)
    model = build_model("cnn")
    result = train_standard(
        model,
        splits.train,
        epochs=args.epochs,
        batch_size=128,
        lr=1e-3,
        seed=args.seed,
        progress=False,
    )
    model = result.model.eval()
    return model, (
        f"cnn trained {args.epochs} epoch(s) on {len(splits.train)} images in {result.seconds:.0f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=None, help="use this store's production")
    parser.add_argument("--train-limit", type=int, default=20000, help="training images")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs")
    parser.add_argument("--n", type=int, default=2000, help="traffic images per condition")
    parser.add_argument("--windows", type=int, default=1000, help="windows drawn per size")
    parser.add_argument("--bits", type=int, default=None, help="squeeze bits (default: server's)")
    parser.add_argument(
        "--sigma", type=float, default=None, help="noise sigma (default: traffic's)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _use_repo_packages()
    from serving import signals, traffic
    from serving.traffic import add_noise
    from training import make_attack, make_splits

    if args.bits is None:
        args.bits = signals.DEFAULT_SQUEEZE_BITS
    if args.sigma is None:
        args.sigma = traffic.DEFAULT_NOISE_SIGMA
    torch.set_num_threads(args.threads)
    print(machine_header())
    started = time.monotonic()

    data = DataConfig(train_limit=args.train_limit)
    model, described = get_model(args, data)
    model.eval()
    split = make_splits(data).traffic
    images, labels = split.tensors[0][: args.n], split.tensors[1][: args.n]
    print(f"model: {described}; {len(images)} traffic images per condition")

    noise_gen = torch.Generator().manual_seed(args.seed)
    conditions: dict[str, torch.Tensor] = {"clean": images}
    conditions["fgsm eps=0.05"] = craft(make_attack("fgsm", model, 0.05), images, labels)
    conditions["fgsm eps=0.1"] = craft(make_attack("fgsm", model, 0.1), images, labels)
    conditions["pgd-10 eps=0.1"] = craft(make_attack("pgd", model, 0.1, steps=10), images, labels)
    conditions[f"noise sigma={args.sigma:g}"] = add_noise(images, args.sigma, noise_gen)

    rng = np.random.default_rng(args.seed)
    measured = {name: signals_of(model, x, args.bits) for name, x in conditions.items()}
    clean = measured["clean"]
    sizes = (1, 10, 50, 100)
    header = f"{'condition':<18} {'accuracy':>8}  {'signal':<10}" + "".join(
        f" {'AUROC@' + str(k):>10}" for k in sizes
    )
    print("\nAUROC of each signal against clean traffic (per request, and window means):")
    print(header)
    print("-" * len(header))
    for name, x in conditions.items():
        if name == "clean":
            print(f"{name:<18} {accuracy(model, x, labels):>8.3f}")
            continue
        for i, signal in enumerate(SIGNALS):
            cells = []
            for k in sizes:
                neg = window_means(clean[signal], k, args.windows, rng)
                pos = window_means(measured[name][signal], k, args.windows, rng)
                cells.append(f" {auroc(neg, pos):>10.3f}")
            acc = f"{accuracy(model, x, labels):>8.3f}" if i == 0 else " " * 8
            label = name if i == 0 else ""
            print(f"{label:<18} {acc}  {signal:<10}" + "".join(cells))

    print(
        "\nclean mean of each signal: " + ", ".join(f"{s} {clean[s].mean():.3f}" for s in SIGNALS)
    )

    print("\nsqueeze AUROC per request by bit depth (the bit-depth squeezer's setting):")
    noise_name = f"noise sigma={args.sigma:g}"
    print(f"{'bits':>4} {'fgsm 0.1':>9} {'pgd 0.1':>9} {'noise':>9} {'clean mean':>11}")
    for bits in (1, 2, 3, 4, 5):
        base = signals_of(model, images, bits)["squeeze"]
        row = [
            auroc(base, signals_of(model, conditions[c], bits)["squeeze"])
            for c in ("fgsm eps=0.1", "pgd-10 eps=0.1", noise_name)
        ]
        print(f"{bits:>4} " + " ".join(f"{v:>9.3f}" for v in row) + f" {base.mean():>11.3f}")

    print("\naccuracy under Gaussian noise (to match a weak attack's harm):")
    for sigma in (0.1, 0.15, 0.2, 0.3, 0.4):
        noisy = add_noise(images, sigma, torch.Generator().manual_seed(args.seed))
        print(f"  sigma {sigma:<5g} accuracy {accuracy(model, noisy, labels):.3f}")
    print(f"\ntotal {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
