"""What each attacker of the traffic generator costs the demo's model, and what the detector sees.

For the demo's undefended model (the baseline of the config's store, as ``robustloop demo``
starts from; trained first, as the demo does, where the store has none), on the traffic split,
prints for clean images and for each attacker of ``robustloop traffic`` at one eps:

- the accuracy;
- the mean feature-squeezing score and the mean normalised entropy, computed as the server
  computes them (the config's ``serving.squeezers`` and ``serving.squeeze_bits``), and their
  shift from clean, which is what the window alerts react to;
- the seconds spent crafting, and for Square the queries per image; and the mean signals of
  Square's queries themselves, which are requests to the server like any other (its detector
  sees them as well as the images Square settles on).

The attackers run with the traffic generator's settings: FGSM; PGD and BPDA with its default
steps (``--steps``); Square with its default query budget (``--queries``), asking a local copy
of the model for probabilities exactly as it asks the server's infer endpoint. BPDA runs once
per ``--bpda-weights`` value (its squeeze and entropy weights): the weight trades accuracy lost
against signal shift.

Run: ``.venv/bin/python bench/attackers.py [--config C] [--quick]``. ``--quick`` measures the
model of ``robustloop demo --quick`` (its small store in the run folder) on fewer images.
Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _machine import machine_header


def _use_repo_packages() -> None:
    """bench/serving.py would shadow the serving package: drop bench/ from sys.path."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="robustloop.yaml (store, data)")
    parser.add_argument("--model", default=None, help="version (default: the demo's baseline)")
    parser.add_argument("--quick", action="store_true", help="the quick demo's model, 200 images")
    parser.add_argument("--n", type=int, default=None, help="traffic images (default 500)")
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf radius (default 0.1)")
    parser.add_argument("--steps", type=int, default=None, help="PGD and BPDA steps")
    parser.add_argument("--queries", type=int, default=None, help="Square queries per image")
    parser.add_argument(
        "--bpda-weights",
        type=float,
        nargs="+",
        default=[1.0, 0.3],
        help="BPDA's squeeze and entropy weights, one row each (default: 1, the traffic "
        "generator's, and 0.3)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _use_repo_packages()
    import training
    from robustloop.commands.stack import quick_config
    from robustloop.config import load_config
    from robustloop.stack.local import undefended_root
    from serving.signals import normalised_entropy, squeeze_score
    from serving.traffic import DEFAULT_PGD_STEPS, DEFAULT_QUERY_BUDGET

    torch.set_num_threads(args.threads)
    print(machine_header(), flush=True)  # everything runs in float32 on the CPU
    cfg = load_config(args.config)
    if args.quick:
        cfg = quick_config(cfg)
    n = args.n or (200 if args.quick else 500)
    steps = args.steps or DEFAULT_PGD_STEPS
    queries = args.queries or DEFAULT_QUERY_BUDGET
    store = training.ModelStore(cfg.store.path)
    if store.production() is None:
        print(f"# no model in {cfg.store.path}: training the demo's baseline first", flush=True)
        training.train_baseline(cfg)
    version = store.resolve(args.model) if args.model else undefended_root(cfg)
    assert version is not None
    model, _ = store.load(version, "cpu")
    model.eval()
    traffic = training.make_splits(cfg.data).traffic
    images, labels = traffic.tensors[0][:n], traffic.tensors[1][:n]
    serving = cfg.serving
    print(
        f"# model {version} of {cfg.store.path}; {len(images)} traffic images; eps {args.eps:g}; "
        f"squeeze score: {'+'.join(serving.squeezers)}, {serving.squeeze_bits} bits"
    )

    def signals(x: torch.Tensor) -> tuple[float, float, float]:
        """Accuracy, mean squeeze score and mean entropy of ``x``, as the server sees them."""
        with torch.inference_mode():
            probs = torch.softmax(model(x), dim=1)
            squeeze = squeeze_score(
                model, x, squeezers=serving.squeezers, bits=serving.squeeze_bits, probs=probs
            )
            right = (probs.argmax(dim=1) == labels).float().mean()
            return float(right), float(squeeze.mean()), float(normalised_entropy(probs).mean())

    seen = {"images": 0, "squeeze": 0.0, "entropy": 0.0}
    local = training.model_scores(model)

    def black_box(x: torch.Tensor) -> torch.Tensor:
        """The model's probabilities, noting the signals of every query as the server would."""
        probs = local(x)
        with torch.inference_mode():
            squeeze = squeeze_score(
                model, x, squeezers=serving.squeezers, bits=serving.squeeze_bits, probs=probs
            )
        seen["images"] += len(x)
        seen["squeeze"] += float(squeeze.sum())
        seen["entropy"] += float(normalised_entropy(probs).sum())
        return probs

    torch.manual_seed(args.seed)
    square = training.Square(black_box, eps=args.eps, max_queries=queries, seed=args.seed)
    attackers: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "clean": lambda x, y: x,
        "fgsm": training.FGSM(model, eps=args.eps),
        f"pgd-{steps}": training.PGD(model, eps=args.eps, steps=steps),
    }
    for weight in args.bpda_weights:
        attackers[f"bpda-{steps} w{weight:g}"] = training.BPDA(
            model,
            eps=args.eps,
            steps=steps,
            squeeze_weight=weight,
            entropy_weight=weight,
            bits=serving.squeeze_bits,
            squeezers=tuple(serving.squeezers),
        )
    attackers[f"square-{queries}"] = square
    header = (
        f"{'attacker':14} {'accuracy':>8} {'squeeze':>8} {'(shift)':>8} {'entropy':>8} "
        f"{'(shift)':>8} {'seconds':>8}  queries/image"
    )
    print(header)
    print("-" * len(header))
    clean: tuple[float, float, float] | None = None
    for name, attack in attackers.items():
        started = time.perf_counter()
        adv, spent_queries = _craft(attack, images, labels)
        seconds = time.perf_counter() - started
        accuracy, squeeze, entropy = signals(adv)
        clean = clean or (accuracy, squeeze, entropy)
        spent = ""
        if attack is square:
            spent = f"{spent_queries / len(images):.1f} (budget {queries})"
        print(
            f"{name:14} {accuracy:8.3f} {squeeze:8.4f} {squeeze - clean[1]:+8.4f} "
            f"{entropy:8.4f} {entropy - clean[2]:+8.4f} {seconds:8.1f}  {spent}",
            flush=True,
        )
    count = seen["images"]
    squeeze, entropy = seen["squeeze"] / count, seen["entropy"] / count
    print(
        f"{'its queries':14} {'':>8} {squeeze:8.4f} {squeeze - clean[1]:+8.4f} {entropy:8.4f} "
        f"{entropy - clean[2]:+8.4f} {'':>8}  ({count} query images; the server sees them too)"
    )
    return 0


def _craft(
    attack: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """The attack on ``images`` in batches of 100, and the queries a score attack spent."""
    parts, queries = [], 0
    for x, y in zip(images.split(100), labels.split(100), strict=True):
        parts.append(attack(x, y))
        spent = getattr(attack, "queries", None)
        if isinstance(spent, torch.Tensor):
            queries += int(spent.sum())
    return torch.cat(parts), queries


if __name__ == "__main__":
    raise SystemExit(main())
