"""Adversarial-training speed, measured against peers in one run.

1. Throughput (samples/s) of our PGD-AT step against the same loop built on torchattacks' PGD:
   same model, batch, steps, step size, eps and seed; ratio ours / torchattacks (goal >= 1.0).
2. Our FGSM-RS against our PGD-7 in that loop (expect >= 4x); FGSM-RS with the models'
   channels-last weights (``training.models.MEMORY_FORMAT``) against the same model laid out
   contiguously (NCHW); and FGSM-RS and PGD-7 with the models' order of layers (max pooling,
   then ReLU) against the textbook order (ReLU, then pooling), which computes the same
   function: what the layout and the order buy. ``--bf16`` runs parts 1 and 2 under bfloat16
   autocast, as the remediation does on CPUs with native bfloat16.
3. Wall time of ``robustloop harden --method M --max-seconds S`` from a standard model, for
   each method of ``--harden-methods`` (default: fgsm-rs, then fgsm-prior, in one run), and the
   PGD-20 accuracy (eps 0.1) each reaches on the held-out eval split (goal: >= 0.70 within 60 s
   on 2 cores, wall time of the whole command). CPU seconds are printed too: on a shared
   machine wall time depends on the neighbours, CPU time much less.
4. Optional (``--time-to-target fgsm-rs ...``): the wall time ``harden --method M`` needs to
   reach that accuracy at all, without a clock: ``harden --epochs N --max-seconds none`` for
   N in ``--target-epochs`` (1 2 3 4 5 6 8 10 12) until one run reaches it. Each N is a run of
   its own, because the learning rate's cosine decay spans the run's epochs; the first N to
   reach the target is an estimate from one noisy evaluation per N (``--harden-n`` images),
   and a little optimistic for being the first crossing.

The throughput runs alternate between the contenders (A B A B ...) and report the median, so
that a busy neighbour slows both alike. torchattacks is a benchmark-only dependency::

    pip install --no-deps torchattacks   # its requests pin would downgrade urllib3
    nice -n 10 python bench/training_speed.py --config C --harden-from v0001

Parts 3 and 4 harden ``--harden-from`` (default: production; skipped where the store has none)
at the config's ``remediation.precision`` (``auto`` unless set), or at ``--precision``'s, which
they get through a copy of the config. The header names the machine and the precision each part
ran at.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch
from _machine import machine_header
from torch import nn

from robustloop.config import RobustloopConfig, dump_config, load_config
from training import METHODS, ModelStore, build_model, make_splits, use_bf16
from training.adversarial import make_optimizer, make_training_attack

AttackFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TARGET = 0.70
"""PGD-20 accuracy (eps 0.1) that parts 3 and 4 time the hardening to."""
GOAL_SECONDS = 60.0
"""Wall time of ``harden`` the goal allows to reach :data:`TARGET` (on 2 cores)."""


def at_throughput(
    model: nn.Module,
    attack: AttackFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    bf16: bool = False,
) -> float:
    """Samples/s of adversarial training steps (attack, forward, backward, and the update by
    the remediation's default optimizer, SGD with Nesterov momentum) over the data; ``bf16``:
    the attack and the forward pass under bfloat16 autocast, as ``training._loop``."""
    # a tenth of the default peak: the fresh model trains from scratch here, without warm-up
    optimizer = make_optimizer("sgd", model.parameters(), lr=0.01)
    model.train()
    start = time.perf_counter()
    for i in range(0, len(labels), batch):
        x, y = images[i : i + batch], labels[i : i + batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            adv = attack(x, y)
            model.train()
            loss = nn.functional.cross_entropy(model(adv).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(labels) / (time.perf_counter() - start)


def _fresh(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("cnn")


def compare(
    contenders: dict[str, Callable[[nn.Module], AttackFn]],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int,
    repeats: int,
    seed: int,
    bf16: bool = False,
) -> dict[str, float]:
    """Median samples/s of each contender, runs interleaved, each from the same fresh model.

    Every contender first runs one untimed batch, so that whoever runs first does not pay the
    process's one-time costs.
    """
    results: dict[str, list[float]] = {name: [] for name in contenders}
    for factory in contenders.values():  # untimed warm-up: one-time allocations, kernel choice
        model = _fresh(seed)
        at_throughput(model, factory(model), images[:batch], labels[:batch], batch, bf16)
    for _ in range(repeats):
        for name, factory in contenders.items():
            model = _fresh(seed)
            torch.manual_seed(seed)
            speed = at_throughput(model, factory(model), images, labels, batch, bf16)
            results[name].append(speed)
    return {name: statistics.median(values) for name, values in results.items()}


def _torchattacks_pgd(eps: float, alpha: float, steps: int) -> Callable[[nn.Module], AttackFn]:
    import torchattacks  # benchmark-only dependency

    def factory(model: nn.Module) -> AttackFn:
        attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        return attack

    return factory


def _ours(method: str, eps: float, steps: int) -> Callable[[nn.Module], AttackFn]:
    def factory(model: nn.Module) -> AttackFn:
        return make_training_attack(method, model, eps=eps, step_size=None, steps=steps)

    return factory


def _contiguous(factory: Callable[[nn.Module], AttackFn]) -> Callable[[nn.Module], AttackFn]:
    """``factory`` on the model converted to the contiguous (NCHW) layout first."""

    def convert(model: nn.Module) -> AttackFn:
        return factory(model.to(memory_format=torch.contiguous_format))

    return convert


def _relu_first(factory: Callable[[nn.Module], AttackFn]) -> Callable[[nn.Module], AttackFn]:
    """``factory`` on the model with each ReLU moved before its max pooling (the textbook
    order, which computes the same function), in place."""

    def reorder(model: nn.Module) -> AttackFn:
        layers = cast(nn.Sequential, model)
        pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
        for pool in pools:  # conv, pool, ReLU -> conv, ReLU, pool
            layers[pool], layers[pool + 1] = layers[pool + 1], layers[pool]
        return factory(layers)

    return reorder


def harden_config(cfg: RobustloopConfig, directory: Path) -> Path:
    """Write ``cfg`` to ``directory``/robustloop.yaml for the CLI runs of parts 3 and 4.

    Relative paths stay relative to the working directory (``load_config`` keeps them so), so
    the copy names the same store and data as the config it came from.
    """
    path = directory / "robustloop.yaml"
    path.write_text(dump_config(cfg), encoding="utf-8")
    return path


def precision_phrase(args: argparse.Namespace, cfg: RobustloopConfig) -> str:
    """The precision of each part this run measures, for the machine header: parts 1 and 2
    as ``--bf16`` says, parts 3 and 4 as ``remediation.precision`` resolves on this machine."""
    parts = []
    if not args.skip_throughput:
        parts.append(f"{'bf16' if args.bf16 else 'fp32'} (parts 1-2)")
    if args.harden_from and (args.harden_methods or args.time_to_target):
        precision = cfg.remediation.precision
        resolved = "bf16" if use_bf16(precision) else "fp32"
        parts.append(f"{resolved} (parts 3-4: remediation.precision {precision})")
    return ", ".join(parts) or "fp32"


def harden_run(
    config: Path | None,
    base: str,
    method: str,
    n: int,
    *,
    seconds: float | None,
    epochs: int | None = None,
) -> dict[str, object]:
    """Time the CLI's hardening, then measure PGD-20 accuracy of what it registered.

    ``seconds`` None runs without a clock (``--max-seconds none``); ``epochs`` None keeps the
    config's ``remediation.epochs``.
    """
    cli = [sys.executable, "-m", "robustloop"] + (["--config", str(config)] if config else [])
    harden = [
        *cli,
        "harden",
        "--from",
        base,
        "--method",
        method,
        "--incident",
        "bench-training-speed",
    ]
    harden += ["--max-seconds", "none" if seconds is None else str(seconds)]
    harden += ["--epochs", str(epochs)] if epochs else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(harden, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    version = out.strip().splitlines()[-1]
    evaluated = subprocess.run(
        [
            *cli,
            "evaluate",
            "--model",
            version,
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--steps",
            "20",
            "--n",
            str(n),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(evaluated)
    return {
        "version": version,
        "wall_seconds": wall,
        "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "pgd20_accuracy": result["accuracy"],
        "ci95": result["ci95"],
        "n": result["n"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=None, help="robustloop.yaml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=8, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per contender")
    parser.add_argument("--steps", type=int, default=7, help="PGD steps")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--bf16", action="store_true", help="parts 1 and 2 under bfloat16 autocast (CPU)"
    )
    parser.add_argument(
        "--harden-from",
        default="production",
        help="standard version to harden for part 3 (default production; skipped if none)",
    )
    parser.add_argument("--harden-seconds", type=float, default=60.0)
    parser.add_argument(
        "--harden-methods",
        nargs="*",
        default=["fgsm-rs", "fgsm-prior"],
        choices=METHODS,
        help="methods of part 3, one CLI run each (none: skip part 3)",
    )
    parser.add_argument("--harden-n", type=int, default=1000, help="eval images for PGD-20")
    parser.add_argument(
        "--time-to-target",
        nargs="*",
        default=[],
        choices=METHODS,
        help=f"part 4: methods to harden for --target-epochs until PGD-20 >= {TARGET:.2f}",
    )
    parser.add_argument(
        "--target-epochs",
        nargs="+",
        type=int,
        default=[1, 2, 3, 4, 5, 6, 8, 10, 12],
        help="epoch counts part 4 tries, in order (default 1 2 3 4 5 6 8 10 12)",
    )
    parser.add_argument(
        "--skip-throughput", action="store_true", help="run only parts 3 and 4 (need --harden-from)"
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="remediation.precision of the harden runs of parts 3 and 4 (default: the "
        "config's, auto unless set; auto = bf16 where the CPU has native bfloat16)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = load_config(args.config)
    if args.precision is not None:
        cfg.remediation.precision = args.precision
    print(machine_header(precision=precision_phrase(args, cfg)), flush=True)
    if args.harden_from and (args.harden_methods or args.time_to_target):
        threads = cfg.training.threads or "0 (torch's default)"
        print(f"# parts 3-4: robustloop harden, training.threads {threads}", flush=True)
    if not args.skip_throughput:
        images, labels = make_splits(cfg.data).train.tensors
        count = args.batch * args.batches
        images, labels = images[:count], labels[:count]
        alpha = 2.5 * args.eps / args.steps
        print(
            f"# cnn, batch {args.batch}, {count} samples per run, median of {args.repeats} "
            f"interleaved runs, {'bfloat16 autocast' if args.bf16 else 'float32'}"
        )

        contenders = {f"ours PGD-{args.steps}": _ours("pgd", args.eps, args.steps)}
        try:
            contenders[f"torchattacks PGD-{args.steps}"] = _torchattacks_pgd(
                args.eps, alpha, args.steps
            )
        except ImportError:
            print("# torchattacks is not installed (pip install --no-deps torchattacks): skipped")
        contenders["ours FGSM-RS"] = _ours("fgsm-rs", args.eps, args.steps)
        contenders["ours FGSM-RS, NCHW"] = _contiguous(_ours("fgsm-rs", args.eps, args.steps))
        contenders["ours FGSM-RS, ReLU first"] = _relu_first(_ours("fgsm-rs", args.eps, args.steps))
        contenders[f"ours PGD-{args.steps}, ReLU first"] = _relu_first(
            _ours("pgd", args.eps, args.steps)
        )
        speeds = compare(contenders, images, labels, args.batch, args.repeats, args.seed, args.bf16)
        for name, speed in speeds.items():
            print(f"{name:26} {speed:9.1f} samples/s")
        ours, fast = speeds[f"ours PGD-{args.steps}"], speeds["ours FGSM-RS"]
        theirs = speeds.get(f"torchattacks PGD-{args.steps}")
        if theirs is not None:
            ratio = ours / theirs
            verdict = "MET" if ratio >= 1.0 else "MISSED"
            print(f"ratio ours/torchattacks PGD-AT: {ratio:.3f} ({verdict} goal >= 1.0)")
        speedup = fast / ours
        print(
            f"ratio FGSM-RS/PGD-{args.steps}: {speedup:.2f} "
            f"({'MET' if speedup >= 4.0 else 'MISSED'} expectation >= 4)"
        )
        layout = fast / speeds["ours FGSM-RS, NCHW"]
        print(f"ratio FGSM-RS channels-last/NCHW weights: {layout:.2f}")
        for name in ("FGSM-RS", f"PGD-{args.steps}"):
            order = speeds[f"ours {name}"] / speeds[f"ours {name}, ReLU first"]
            print(f"ratio {name} pooling first/ReLU first: {order:.2f}")

    if args.harden_from == "production" and ModelStore(cfg.store.path).production() is None:
        print("# no production model in the store (robustloop train): part 3 skipped")
    elif args.harden_from:
        with tempfile.TemporaryDirectory(prefix="bench-training-speed-") as tmp:
            config = args.config if args.precision is None else harden_config(cfg, Path(tmp))
            for method in args.harden_methods:
                run = harden_run(
                    config, args.harden_from, method, args.harden_n, seconds=args.harden_seconds
                )
                ok = run["pgd20_accuracy"] >= TARGET and run["wall_seconds"] <= GOAL_SECONDS  # type: ignore[operator]
                print(
                    f"harden --method {method} --max-seconds {args.harden_seconds:g}: "
                    f"{_describe(run)} ({'MET' if ok else 'MISSED'} goal >= {TARGET:.2f} within "
                    f"{GOAL_SECONDS:g} s)",
                    flush=True,
                )
            for method in args.time_to_target:
                time_to_target(args, method, config)
    return 0


def _describe(run: dict[str, object]) -> str:
    lo, hi = cast(tuple[float, float], run["ci95"])
    return (
        f"{run['version']} in {run['wall_seconds']:.1f} s wall ({run['cpu_seconds']:.1f} s CPU), "
        f"PGD-20 eps 0.1 accuracy {run['pgd20_accuracy']:.4f} [{lo:.4f}, {hi:.4f}] on "
        f"{run['n']} eval images"
    )


def time_to_target(args: argparse.Namespace, method: str, config: Path | None) -> None:
    """Part 4: ``harden --method M --epochs N --max-seconds none`` for growing N until the
    PGD-20 accuracy reaches :data:`TARGET`; the wall time of that run is how long the method
    needs. Each N is a separate run (the cosine schedule spans its own N epochs). ``config``:
    the CLI's ``--config``."""
    for epochs in args.target_epochs:
        run = harden_run(
            config, args.harden_from, method, args.harden_n, seconds=None, epochs=epochs
        )
        print(f"harden --method {method} --epochs {epochs}: {_describe(run)}", flush=True)
        if run["pgd20_accuracy"] >= TARGET:  # type: ignore[operator]
            wall = run["wall_seconds"]
            verdict = "MET" if wall <= GOAL_SECONDS else "MISSED"  # type: ignore[operator]
            print(
                f"time to PGD-20 >= {TARGET:.2f} with harden --method {method}: {wall:.1f} s wall, "
                f"{epochs} epochs ({verdict} goal <= {GOAL_SECONDS:g} s)",
                flush=True,
            )
            return
    print(
        f"time to PGD-20 >= {TARGET:.2f} with harden --method {method}: not reached within "
        f"{args.target_epochs[-1]} epochs (MISSED goal <= {GOAL_SECONDS:g} s)",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
