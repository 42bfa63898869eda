"""``robustloop init``, ``train``, ``harden``, ``evaluate`` and ``models ...``.

These names are a contract (the workflow steps, the demo and the checks call them):

* ``train [--epochs N]`` registers a standard model; its id is the last line on stdout.
* ``harden --from REF [--method M] [--eps E] [--steps K] [--epochs N] [--max-seconds S|none]
  [--recipe standard|captured] [--incident ID]`` registers an adversarially trained child of
  REF (not promoted); its id is the last line on stdout.
* ``evaluate --model REF --attack none|fgsm|pgd --eps E [--steps K] [--restarts R] [--n N]
  --json`` prints ``{"model", "attack", "eps", "n", "accuracy", "ci95"}``.
* ``models list [--json] | show REF | promote REF | rollback | export REF --format F PATH``.

torch is imported inside the handlers only (the receiver image has none).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustloop.commands.base import add_device_option, eps_option
from robustloop.config import (
    DEFAULT_CONFIG_PATH,
    Method,
    Recipe,
    RobustloopConfig,
    choices,
    dump_config,
    override,
)

if TYPE_CHECKING:
    import torch

    from training import ModelStore


def register(sub: Any) -> None:
    """Add the training sub-commands."""
    p = sub.add_parser("init", help="write robustloop.yaml with every default, commented")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(handler=_init, needs_config=False)

    p = sub.add_parser(
        "train", help="train a standard (undefended) model and register it; prints its id"
    )
    p.add_argument("--epochs", type=_positive_int, help="epochs (default: training.epochs)")
    p.add_argument("--max-seconds", type=_positive_float, help="stop cleanly after S seconds")
    p.add_argument(
        "--unless-production",
        action="store_true",
        help="train nothing when the store has a production version already; print its id "
        "(a first model, made once: the Helm chart's bootstrap Job runs after every upgrade)",
    )
    add_device_option(p)
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "harden",
        help="adversarially fine-tune a version and register the result (not promoted); "
        "prints its id",
    )
    p.add_argument(
        "--from", dest="base", default="production", help="VERSION or production (default)"
    )
    p.add_argument("--method", choices=choices(Method), help="default: remediation.method")
    p.add_argument("--eps", type=eps_option, help="L-inf radius (default: remediation.eps)")
    p.add_argument("--step-size", type=_positive_float, help="attack step size")
    p.add_argument("--steps", type=_positive_int, help="PGD steps (default: remediation.steps)")
    p.add_argument("--epochs", type=_positive_int, help="default: remediation.epochs")
    p.add_argument(
        "--max-seconds",
        type=_seconds_or_none,
        help="default: remediation.max_seconds; 'none': no clock, run every epoch",
    )
    p.add_argument(
        "--recipe",
        choices=choices(Recipe),
        help="standard, or captured: fine-tune on the captured traffic mixed with the training "
        "split (default: remediation.recipe)",
    )
    p.add_argument("--incident", default=None, help="incident id recorded as provenance")
    p.add_argument(
        "--scratch",
        action="store_true",
        help="train from fresh weights instead of fine-tuning (overrides remediation.warm_start)",
    )
    add_device_option(p)
    p.set_defaults(handler=_harden)

    p = sub.add_parser("evaluate", help="accuracy of a version on the held-out eval split")
    p.add_argument("--model", default="production", help="VERSION or production (default)")
    p.add_argument("--attack", choices=["none", "fgsm", "pgd"], default="none")
    p.add_argument("--eps", type=eps_option, default=None, help="default: remediation.eps")
    p.add_argument("--steps", type=_positive_int, default=20, help="PGD steps (default 20)")
    p.add_argument("--restarts", type=_positive_int, default=1, help="PGD restarts (default 1)")
    p.add_argument("--n", type=_positive_int, default=None, help="images (default: all)")
    p.add_argument(
        "--split", choices=["eval", "traffic"], default="eval", help="which split (default eval)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the attack's random starts")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_device_option(p)
    p.set_defaults(handler=_evaluate)

    models = sub.add_parser("models", help="list, show, promote, roll back or export versions")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = msub.add_parser("list", help="every version, oldest first")
    p.add_argument("--json", action="store_true", help="print the manifests as a JSON list")
    p.set_defaults(handler=_models_list)
    p = msub.add_parser("show", help="print one version's manifest as JSON")
    p.add_argument("version", help="VERSION or production")
    p.set_defaults(handler=_models_show)
    p = msub.add_parser("promote", help="point production at VERSION")
    p.add_argument("version")
    p.add_argument("--reason", default="manual", help="recorded in the pointer history")
    p.set_defaults(handler=_models_promote)
    p = msub.add_parser("rollback", help="point production back at the previous version")
    p.add_argument("--reason", default="manual", help="recorded in the pointer history")
    p.set_defaults(handler=_models_rollback)
    p = msub.add_parser(
        "average",
        help="register the uniform average of the weights of VERSIONs (a model soup); "
        "prints the new id, not promoted",
    )
    p.add_argument("versions", nargs="+", metavar="VERSION", help="two or more, one architecture")
    p.set_defaults(handler=_models_average)
    p = msub.add_parser("export", help="write a version for other runtimes (TorchScript, ONNX)")
    p.add_argument("version")
    p.add_argument("path", type=Path)
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.set_defaults(handler=_models_export)
    p = msub.add_parser(
        "import",
        help="register weights trained elsewhere (safetensors, or a .pt state_dict); prints "
        "the new id",
        description="Register a state_dict trained outside robustloop as a version of the "
        "configured model: its architecture (--architecture, default model.architecture) is "
        "built for the configured data's shape and classes, the weights must fit it exactly, "
        "and the clean accuracy on the eval split is measured and recorded. A .pt file is read "
        "with torch.load(weights_only=True): tensors only, never code.",
    )
    p.add_argument("weights", type=Path, metavar="WEIGHTS", help=".safetensors or .pt file")
    p.add_argument("--architecture", default=None, help="default: model.architecture")
    p.add_argument("--promote", action="store_true", help="also make it production")
    add_device_option(p)
    p.set_defaults(handler=_models_import)


# -- argument types ------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


NO_CLOCK = "none"
"""``harden --max-seconds none``: train every epoch, whatever remediation.max_seconds says."""


def _seconds_or_none(text: str) -> float | str:
    if text.strip().lower() == NO_CLOCK:
        return NO_CLOCK
    try:
        return _positive_float(text)
    except ValueError:  # not a number (ArgumentTypeError, for <= 0, is not a ValueError)
        raise argparse.ArgumentTypeError(f"seconds > 0 or 'none', got {text!r}") from None


# -- shared helpers ------------------------------------------------------------------------


def _store(cfg: RobustloopConfig) -> ModelStore:
    from training import ModelStore

    return ModelStore(cfg.store.path)


def _setup_torch(cfg: RobustloopConfig) -> torch.device:
    """Apply ``training.threads``; the resolved ``device`` (a user error if unusable)."""
    from training import DeviceError, resolve_device, use_threads

    use_threads(cfg.training.threads)
    try:
        return resolve_device(cfg.device)
    except DeviceError as exc:
        raise _fail(exc) from None


def _progress() -> bool:
    return sys.stderr.isatty()


def _errors() -> tuple[type[Exception], ...]:
    from training import DatasetError, StoreError, TrainingDiverged

    return (DatasetError, StoreError, TrainingDiverged, ValueError)


def _fail(exc: Exception) -> Exception:
    from robustloop.commands.base import CommandError

    return CommandError(str(exc))


# -- handlers ------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from robustloop.commands.base import CommandError

    path = Path(args.config) if args.config else DEFAULT_CONFIG_PATH
    if path.exists() and not args.force:
        raise CommandError(f"{path} exists; pass --force to overwrite it")
    path.write_text(dump_config(RobustloopConfig()), encoding="utf-8")
    print(f"wrote {path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from training import train_baseline

    cfg: RobustloopConfig = args.cfg
    if args.unless_production:
        try:
            current = _store(cfg).production()
        except _errors() as exc:
            raise _fail(exc) from None
        if current is not None:
            print(
                f"production is {current}; nothing trained (--unless-production)", file=sys.stderr
            )
            print(current)
            return 0
    if args.epochs:
        cfg = override(cfg, {"training": {"epochs": args.epochs}})
    _setup_torch(cfg)
    try:
        version = train_baseline(cfg, max_seconds=args.max_seconds, progress=_progress())
    except _errors() as exc:
        raise _fail(exc) from None
    production = _store(cfg).production()
    print(f"registered {version} (production: {production})", file=sys.stderr)
    print(version)
    return 0


def _harden(args: argparse.Namespace) -> int:
    from training import harden

    flags = {
        "method": args.method,
        "eps": args.eps,
        "step_size": args.step_size,
        "steps": args.steps,
        "epochs": args.epochs,
        "recipe": args.recipe,
    }
    changes: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if args.max_seconds is not None:
        changes["max_seconds"] = None if args.max_seconds == NO_CLOCK else args.max_seconds
    if args.scratch:
        changes["warm_start"] = False
    cfg = override(args.cfg, {"remediation": changes})  # checked as the file is checked
    _setup_torch(cfg)
    try:
        hardened = harden(
            cfg,
            base=args.base,
            incident=args.incident,
            progress=_progress(),
            warn=lambda text: print(f"robustloop: warning: {text}", file=sys.stderr),
        )
    except _errors() as exc:
        raise _fail(exc) from None
    print(
        f"registered {hardened.version} (parent {hardened.parent}; not promoted)", file=sys.stderr
    )
    print(hardened.version)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training import check_fits, evaluate, make_splits

    cfg: RobustloopConfig = args.cfg
    device = _setup_torch(cfg)
    eps = args.eps if args.eps is not None else cfg.remediation.eps
    try:
        model, manifest = _store(cfg).load(args.model, device)
        splits = make_splits(cfg.data)
        check_fits(splits, manifest.spec, manifest.version)
        dataset = getattr(splits, args.split)
        result = evaluate(
            model,
            dataset,
            attack=args.attack,
            eps=eps,
            steps=args.steps,
            restarts=args.restarts,
            n=args.n,
            seed=args.seed,
        )
    except _errors() as exc:
        raise _fail(exc) from None
    out = {"model": manifest.version, **result.as_dict()}
    if args.json:
        print(json.dumps(out))
    else:
        lo, hi = result.ci95
        label = "clean" if result.attack == "none" else f"{result.attack} eps={result.eps}"
        print(
            f"{manifest.version} {label}: accuracy {result.accuracy:.4f} "
            f"(95% CI {lo:.4f}-{hi:.4f}, n={result.n})"
        )
    return 0


def _models_list(args: argparse.Namespace) -> int:
    try:
        store = _store(args.cfg)
        manifests = store.list()
        production = store.production()
    except _errors() as exc:
        raise _fail(exc) from None
    if args.json:
        rows = [{**m.to_dict(), "production": m.version == production} for m in manifests]
        print(json.dumps(rows, indent=2))
        return 0
    if not manifests:
        print(f"no versions in {store.root}; run `robustloop train`")
        return 0
    print(f"{'':2}{'VERSION':16}{'PARENT':16}{'METHOD':10}{'CLEAN':>7}  CREATED")
    for m in manifests:
        mark = "* " if m.version == production else "  "
        clean = m.metrics.get("eval_clean_accuracy")
        clean_text = f"{clean:.4f}" if isinstance(clean, float) else "-"
        print(
            f"{mark}{m.version:16}{m.parent or '-':16}{m.recipe.get('method', '-'):10}"
            f"{clean_text:>7}  {m.created_at}"
        )
    return 0


def _models_show(args: argparse.Namespace) -> int:
    try:
        manifest = _store(args.cfg).manifest(args.version)
    except _errors() as exc:
        raise _fail(exc) from None
    print(json.dumps(manifest.to_dict(), indent=2))
    return 0


def _models_promote(args: argparse.Namespace) -> int:
    try:
        version = _store(args.cfg).promote(
            args.version, {"command": "models promote", "reason": args.reason}
        )
    except _errors() as exc:
        raise _fail(exc) from None
    print(version)
    return 0


def _models_rollback(args: argparse.Namespace) -> int:
    try:
        version = _store(args.cfg).rollback({"command": "models rollback", "reason": args.reason})
    except _errors() as exc:
        raise _fail(exc) from None
    print(version)
    return 0


def _models_average(args: argparse.Namespace) -> int:
    from training import average_versions

    cfg: RobustloopConfig = args.cfg
    _setup_torch(cfg)
    try:
        version = average_versions(cfg, args.versions)
    except _errors() as exc:
        raise _fail(exc) from None
    print(
        f"registered {version} (average of {', '.join(args.versions)}; not promoted)",
        file=sys.stderr,
    )
    print(version)
    return 0


def _models_import(args: argparse.Namespace) -> int:
    from training import import_weights

    cfg: RobustloopConfig = args.cfg
    if args.architecture is not None:
        cfg = override(cfg, {"model": {"architecture": args.architecture}})
    _setup_torch(cfg)
    try:
        version = import_weights(cfg, args.weights)
        if args.promote:
            _store(cfg).promote(version, {"command": "models import"})
    except _errors() as exc:
        raise _fail(exc) from None
    production = _store(cfg).production()
    print(f"registered {version} from {args.weights} (production: {production})", file=sys.stderr)
    print(version)
    return 0


def _models_export(args: argparse.Namespace) -> int:
    from training.export import ExportError, export_model

    try:
        model, manifest = _store(args.cfg).load(args.version)
        export_model(model, args.path, args.format, manifest.spec.input_shape)
    except ExportError as exc:
        raise _fail(exc) from None
    except _errors() as exc:
        raise _fail(exc) from None
    print(f"exported {manifest.version} as {args.format} to {args.path}", file=sys.stderr)
    print(args.path)
    return 0
