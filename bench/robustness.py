"""Robustness of the standard and the hardened model on the whole test part of the dataset.

Clean, FGSM and PGD-k (with restarts) accuracy at each eps, with Wilson 95 % intervals, for two
versions of a model store, and the robustness goals checked:

* hardened model at eps 0.1: clean >= 0.86 and PGD >= 0.78 (the published PGD-AT result for a
  small CNN on Fashion-MNIST is 88.5 % clean, 78.5 % robust);
* no gradient masking: FGSM accuracy at eps 0.2 below that at eps 0.1, for both models.

``--strong N`` adds a stronger check on the first N images at the first eps: torchattacks'
APGD with the cross-entropy loss, targeted APGD with the DLR loss (two of AutoAttack's four
attacks, Croce and Hein 2020) and the gradient-free Square attack, then the accuracy under the
worst of all attacks per image (clean and PGD included). Masked gradients would show as a worst
case far below PGD's accuracy, or as Square, which uses no gradients, beating PGD.
torchattacks is a benchmark-only dependency (``pip install --no-deps torchattacks``).

Produce the two versions with the CLI first, for example::

    robustloop --config C train            # the standard model (v0001)
    robustloop --config C harden --from v0001
    nice -n 10 python bench/robustness.py --config C

By default the standard model is the oldest version trained by ``train`` and the hardened one the
newest version trained by ``harden``; where the store has none, the script runs those commands
first (with the config's recipe). ``--n`` evaluates a seeded random subset of the 10,000 test
images when the whole set would take too long (the output says which).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _machine import describe_machine, machine_header
from torch.utils.data import TensorDataset

from robustloop.config import load_config
from training import ModelStore, evaluate, load_images
from training.data import to_float
from training.evaluate import EvalResult, wilson_interval


def _pick(store: ModelStore, ref: str | None, standard: bool, config: Path | None) -> str:
    """The named version, else the oldest standard / newest hardened one, created if absent."""
    if ref is not None:
        return store.resolve(ref)
    manifests = [m for m in store.list() if (m.recipe.get("method") == "standard") == standard]
    if manifests:
        return manifests[0].version if standard else manifests[-1].version
    cli = [sys.executable, "-m", "robustloop"] + (["--config", str(config)] if config else [])
    if standard:
        command = [*cli, "train"]
    else:
        command = [*cli, "harden", "--from", _pick(store, None, True, config)]
    print(f"# none in the store, running: {' '.join(command[1:])}", flush=True)
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="robustloop.yaml")
    parser.add_argument("--standard", default=None, help="standard version (default: oldest)")
    parser.add_argument("--hardened", default=None, help="hardened version (default: newest)")
    parser.add_argument("--n", type=int, default=10_000, help="test images (default: all)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--steps", type=int, default=20, help="PGD steps")
    parser.add_argument("--restarts", type=int, default=3, help="PGD restarts")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument(
        "--strong",
        type=int,
        default=0,
        metavar="N",
        help="also run APGD-CE, APGD-T (DLR) and Square on the first N images (0: skip)",
    )
    parser.add_argument("--apgd-steps", type=int, default=50, help="APGD iterations")
    parser.add_argument("--square-queries", type=int, default=1000, help="Square queries")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_header(), flush=True)  # evaluation runs in float32

    cfg = load_config(args.config)
    store = ModelStore(cfg.store.path)
    versions = {
        "standard": _pick(store, args.standard, True, args.config),
        "hardened": _pick(store, args.hardened, False, args.config),
    }
    data = load_images(cfg.data)  # the configured dataset's whole test part
    total = len(data.test_labels)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(0))
    idx = order[: args.n] if args.n < len(order) else torch.arange(total)
    test = TensorDataset(to_float(data.test_images[idx]), data.test_labels[idx])
    scope = "the full test set" if len(idx) == total else "a seeded subset of the test set"
    print(f"# {len(idx)} images ({scope}); PGD-{args.steps}, {args.restarts} restarts")
    for role, version in versions.items():
        print(f"# {role}: {version} ({store.manifest(version).recipe.get('method')})")

    models = {role: store.load(v)[0] for role, v in versions.items()}
    jobs: list[tuple[str, str, float]] = [(role, "none", 0.0) for role in models]
    jobs += [(role, "fgsm", eps) for role in models for eps in args.eps]
    jobs += [("hardened", "pgd", eps) for eps in args.eps]
    jobs += [("standard", "pgd", eps) for eps in args.eps]
    rows: list[dict[str, Any]] = []
    results: dict[tuple[str, str, float], EvalResult] = {}
    print(f"{'model':10} {'attack':7} {'eps':>5} {'accuracy':>9}  {'95% CI':15} {'seconds':>8}")
    for role, attack, eps in jobs:
        start = time.perf_counter()
        result = evaluate(
            models[role],
            test,
            attack=attack,
            eps=eps,
            steps=args.steps,
            restarts=args.restarts,
            batch_size=500,
        )
        seconds = time.perf_counter() - start
        results[role, attack, eps] = result
        lo, hi = result.ci95
        print(
            f"{role:10} {attack:7} {eps:5.2f} {result.accuracy:9.4f}  [{lo:.4f}, {hi:.4f}] "
            f"{seconds:8.1f}",
            flush=True,
        )
        rows.append(
            {"model": role, "version": versions[role], **result.as_dict(), "seconds": seconds}
        )

    if args.strong:
        eps = args.eps[0]
        n = min(args.strong, len(test))
        images, labels = test.tensors[0][:n], test.tensors[1][:n]
        print(f"\n# strong attacks on the first {n} images, eps {eps:g}")
        print(f"{'model':10} {'attack':16} {'accuracy':>9}  {'95% CI':15} {'seconds':>8}")
        pgd_name = f"PGD-{args.steps}x{args.restarts}"
        for role, model in models.items():
            correct = {
                "clean": results[role, "none", 0.0].correct[:n],
                pgd_name: results[role, "pgd", eps].correct[:n],
            }
            for name, attack in _strong_attacks(model, eps, args).items():
                start = time.perf_counter()
                correct[name] = _correct_under(model, attack, images, labels)
                _print_accuracy(role, name, correct[name], time.perf_counter() - start)
            correct["worst case"] = torch.stack(list(correct.values())).all(dim=0)
            _print_accuracy(role, "worst case", correct["worst case"], None)
            accuracy = {name: float(mask.float().mean()) for name, mask in correct.items()}
            square = next(name for name in accuracy if name.startswith("Square"))
            print(
                f"{role}: worst case {accuracy['worst case']:.4f} against {pgd_name} "
                f"{accuracy[pgd_name]:.4f} on these images (gap "
                f"{accuracy[pgd_name] - accuracy['worst case']:.4f}); gradient-free Square "
                f"{accuracy[square]:.4f} {'>=' if accuracy[square] >= accuracy[pgd_name] else '<'}"
                f" {pgd_name}"
            )
            rows.append({"model": role, "strong": {"n": n, "eps": eps, **accuracy}})

    def acc(role: str, attack: str, eps: float) -> float | None:
        result = results.get((role, attack, eps))
        return None if result is None else result.accuracy

    print("\n# goals")
    clean, pgd = acc("hardened", "none", 0.0), acc("hardened", "pgd", 0.1)
    if clean is not None and pgd is not None:
        print(f"hardened clean >= 0.86: {clean:.4f} {'MET' if clean >= 0.86 else 'MISSED'}")
        print(f"hardened PGD@0.1 >= 0.78: {pgd:.4f} {'MET' if pgd >= 0.78 else 'MISSED'}")
    for role in models:
        low, high = acc(role, "fgsm", 0.1), acc(role, "fgsm", 0.2)
        if low is not None and high is not None:
            verdict = "MET" if high < low else "MISSED (gradient masking?)"
            print(f"{role} FGSM@0.2 < FGSM@0.1: {high:.4f} < {low:.4f} {verdict}")
    if args.out:
        report = {"machine": describe_machine(), "versions": versions, "rows": rows}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _strong_attacks(model: torch.nn.Module, eps: float, args: argparse.Namespace) -> dict[str, Any]:
    """torchattacks' APGD-CE, APGD-T (DLR loss, every other class as target) and Square."""
    import torchattacks  # benchmark-only dependency

    steps, queries = args.apgd_steps, args.square_queries
    return {
        f"APGD-CE-{steps}": torchattacks.APGD(model, eps=eps, steps=steps, loss="ce", seed=0),
        f"APGD-T-{steps}": torchattacks.APGDT(model, eps=eps, steps=steps, n_classes=10, seed=0),
        f"Square-{queries}": torchattacks.Square(model, eps=eps, n_queries=queries, seed=0),
    }


def _correct_under(
    model: torch.nn.Module, attack: Any, images: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Whether ``model`` classifies each image correctly after ``attack``, in batches of 500."""
    model.eval()
    correct = []
    for start in range(0, len(labels), 500):
        x, y = images[start : start + 500], labels[start : start + 500]
        adv = attack(x, y).detach()
        if float((adv - x).abs().max()) > attack.eps + 1e-5:
            raise AssertionError(f"{type(attack).__name__} left the eps-ball")
        with torch.no_grad():
            correct.append(model(adv).argmax(dim=1) == y)
    return torch.cat(correct)


def _print_accuracy(role: str, name: str, correct: torch.Tensor, seconds: float | None) -> None:
    hits, n = int(correct.sum()), len(correct)
    lo, hi = wilson_interval(hits, n)
    timing = f"{seconds:8.1f}" if seconds is not None else ""
    print(f"{role:10} {name:16} {hits / n:9.4f}  [{lo:.4f}, {hi:.4f}] {timing}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
