"""Which hardening recipe buys the most robustness in a fixed time budget?

Runs ``training.adversarial_train`` from one model of the store for ``--seconds`` per recipe
(optimizer, learning rate and warm-up, precision, training eps, method), one after the other in
this process, and
evaluates each result in float32 on the first ``--n`` images of the held-out eval split:
clean, FGSM and PGD-20 accuracy at eps 0.1. The number of training samples each recipe got in
its budget is printed too: bfloat16 buys samples, the learning rate what they teach.

Run: ``.venv/bin/python bench/harden_recipes.py --from v0001`` (about 75 s per recipe on 2
cores). Keep the machine otherwise idle: the budget is wall time.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from _machine import machine_header

#: name -> overrides of the defaults below
RECIPES: dict[str, dict[str, Any]] = {
    "fp32 lr 1e-3": {"bf16": False, "lr": 1e-3},
    "bf16 lr 1e-3": {"lr": 1e-3},
    "bf16 lr 2e-3": {"lr": 2e-3},
    "bf16 lr 3e-3": {},
    "bf16 lr 4e-3": {"lr": 4e-3},
    "fp32 lr 3e-3": {"bf16": False},
    "bf16 lr 3e-3 train eps 0.125": {"eps": 0.125},
    "bf16 lr 2e-3 batch 256": {"lr": 2e-3, "batch_size": 256},
    "bf16 lr 1e-3 PGD-2": {"lr": 1e-3, "method": "pgd", "steps": 2},
    "bf16 lr 3e-3 5 epochs": {"epochs": 5},
    "bf16 lr 3e-3 step eps": {"step_size": 0.1},
    "bf16 lr 3e-3 step eps 5 epochs": {"step_size": 0.1, "epochs": 5},
    "bf16 lr 3e-3 PGD-2 5 epochs": {"method": "pgd", "steps": 2, "epochs": 5},
    "bf16 lr 3e-3 PGD-3 5 epochs": {"method": "pgd", "steps": 3, "epochs": 5},
    "bf16 lr 2e-3 PGD-2 5 epochs": {"lr": 2e-3, "method": "pgd", "steps": 2, "epochs": 5},
    "fgsm-prior bf16 lr 3e-3": {"method": "fgsm-prior"},
    "fgsm-prior step 0.5 eps": {"method": "fgsm-prior", "step_size": 0.05},
    "fgsm-prior 4 epochs": {"method": "fgsm-prior", "epochs": 4},
    "fgsm-prior step 0.5 eps 4 epochs": {"method": "fgsm-prior", "step_size": 0.05, "epochs": 4},
    "adam lr 3e-3 warmup 0.2": {"warmup": 0.2},
    "sgd lr 0.05": {"optimizer": "sgd", "lr": 0.05},
    "sgd lr 0.05 warmup 0.2": {"optimizer": "sgd", "lr": 0.05, "warmup": 0.2},
    "sgd lr 0.1 warmup 0.2": {"optimizer": "sgd", "lr": 0.1, "warmup": 0.2},
    "sgd lr 0.15 warmup 0.2": {"optimizer": "sgd", "lr": 0.15, "warmup": 0.2},
    "sgd lr 0.2 warmup 0.2": {"optimizer": "sgd", "lr": 0.2, "warmup": 0.2},
    "fgsm-prior sgd lr 0.1 warmup 0.2": {
        "method": "fgsm-prior",
        "optimizer": "sgd",
        "lr": 0.1,
        "warmup": 0.2,
    },
}
DEFAULTS: dict[str, Any] = {
    "method": "fgsm-rs",
    "eps": 0.1,
    "step_size": None,  # the method's default (FGSM-RS: 1.25 eps; FGSM-prior: 0.75 eps)
    "steps": 7,
    "optimizer": "adam",  # the recipes above the sgd ones were measured with Adam, no warm-up
    "lr": 3e-3,
    "warmup": 0.0,
    "batch_size": 128,
    "bf16": True,
    "epochs": None,  # the config's remediation.epochs
}


def precision_of(recipe: dict[str, Any]) -> str:
    """``bf16`` or ``fp32``: the training precision of a recipe (its overrides or all of it)."""
    return "bf16" if {**DEFAULTS, **recipe}["bf16"] else "fp32"


def main() -> int:
    from robustloop.config import load_config
    from training import ModelStore, adversarial_train, evaluate, make_splits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="robustloop.yaml (store, data)")
    parser.add_argument("--from", dest="base", default="v0001", help="model to harden")
    parser.add_argument("--seconds", type=float, default=60.0, help="budget per recipe")
    parser.add_argument("--n", type=int, default=1000, help="eval images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precisions = {precision_of(RECIPES[name]) for name in args.recipes}
    print(
        machine_header(
            precision=precisions.pop() if len(precisions) == 1 else "per recipe (column precision)"
        ),
        flush=True,
    )
    cfg = load_config(args.config)
    splits = make_splits(cfg.data)
    store = ModelStore(cfg.store.path)
    print(
        f"# from {store.resolve(args.base)}, {args.seconds:g} s per recipe, {args.threads} "
        f"threads; evaluation: first {args.n} eval images, eps 0.1, PGD-20, float32"
    )
    print(f"{'recipe':32} {'precision':9} {'samples':>8} {'clean':>6} {'FGSM':>6} {'PGD-20':>6}")
    for name in args.recipes:
        recipe = {**DEFAULTS, **RECIPES[name]}
        model, _ = store.load(args.base)
        start = time.perf_counter()
        result = adversarial_train(
            model,
            splits.train,
            method=recipe["method"],
            eps=recipe["eps"],
            step_size=recipe["step_size"],
            steps=recipe["steps"],
            epochs=recipe["epochs"] or cfg.remediation.epochs,
            batch_size=recipe["batch_size"],
            lr=recipe["lr"],
            optimizer=recipe["optimizer"],
            warmup=recipe["warmup"],
            seed=cfg.training.seed,
            max_seconds=args.seconds,
            check_size=cfg.remediation.check_size,
            progress=False,
            bf16=recipe["bf16"],
        )
        wall = time.perf_counter() - start
        samples = sum(entry["samples"] for entry in result.history)
        accuracy = {
            attack: evaluate(
                result.model, splits.eval, attack=attack, eps=0.1, steps=20, n=args.n
            ).accuracy
            for attack in ("none", "fgsm", "pgd")
        }
        print(
            f"{name:32} {precision_of(recipe):9} {samples:8d} {accuracy['none']:6.3f} "
            f"{accuracy['fgsm']:6.3f} {accuracy['pgd']:6.3f}   "
            f"{json.dumps({'wall_s': round(wall, 1), **recipe})}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
