"""``robustloop workflow render|run-local``, ``robustloop runs list|show``, ``gate``, ``guard``.

Heavy imports (Hera's step code, torch) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from robustloop.commands.base import add_device_option
from robustloop.config import DEFAULT_CONFIG_PATH, RobustloopConfig

if TYPE_CHECKING:  # annotations only: the Argo client is imported where it is used
    from webhook.submitters import ArgoSubmitter

_T = TypeVar("_T")
SOURCES = ("local", "argo")


def register(sub: Any) -> None:
    """Add the workflow sub-commands to the robustloop parser."""
    wf = sub.add_parser("workflow", help="the remediation WorkflowTemplate: render, run locally")
    wf_sub = wf.add_subparsers(dest="workflow_command", metavar="ACTION", required=True)

    p = wf_sub.add_parser(
        "render", help="regenerate workflows/robustloop-remediate.yaml from the Hera definition"
    )
    p.add_argument("--output", type=Path, default=None, help="write here instead of the golden")
    p.add_argument("--check", action="store_true", help="exit 1 if the golden file is stale")
    p.add_argument("--stdout", action="store_true", help="print the YAML instead of writing it")
    p.set_defaults(handler=_render)

    p = wf_sub.add_parser(
        "run-local",
        help="run the remediation workflow on this machine (same template, same entry points)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="workflow name (default: generated); "
        "if a run of that name exists, exit 3 and do nothing",
    )
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="workflow parameter (repeatable), e.g. -p incident-id=abc -p epochs=1",
    )
    p.set_defaults(handler=_run_local)

    runs = sub.add_parser(
        "runs",
        help="the remediation workflow's runs, local or on the Argo Server, as Argo shows them",
    )
    runs_sub = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    p = runs_sub.add_parser("list", help="list runs, newest first")
    _add_source_option(p)
    p.add_argument("--model", default=None, metavar="NAME", help="only the runs of this model")
    p.add_argument("--json", action="store_true", help="print the Workflow objects as JSON")
    p.set_defaults(handler=_runs_list)
    p = runs_sub.add_parser("show", help="show one run: status, parameters, steps, outputs")
    p.add_argument("name", metavar="ID", help="the run's (workflow's) name")
    _add_source_option(p)
    p.add_argument("--json", action="store_true", help="print the Workflow object as JSON")
    p.add_argument("--logs", action="store_true", help="print every step's log too (local runs)")
    p.set_defaults(handler=_runs_show)

    p = sub.add_parser(
        "gate",
        help="judge a candidate against production: PGD-20 with restarts and clean, paired tests",
    )
    p.add_argument("--candidate", required=True, help="candidate version id")
    p.add_argument("--baseline", default="production", help="version to beat (default: production)")
    p.add_argument(
        "--eps",
        type=float,
        default=None,
        help="attack eps (default: gate.eps, else remediation.eps)",
    )
    p.add_argument(
        "--captured",
        action="store_true",
        help="also judge on the captured set's held-out part (a candidate of the captured recipe)",
    )
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    add_device_option(p)
    p.set_defaults(handler=_gate)

    p = sub.add_parser(
        "guard",
        help="post-rollout guard: watch canary accuracy of a promoted version, roll back if worse",
    )
    p.add_argument("--version", required=True, help="the newly promoted version")
    p.add_argument("--previous", required=True, help="the version it replaced")
    p.add_argument("--workflow", default="manual", help="recorded as the rollback's cause")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(handler=_guard)


def _render(args: argparse.Namespace) -> int:
    from robustloop.commands.base import CommandError
    from workflows.remediation import GOLDEN_PATH, render_yaml

    text = render_yaml(args.cfg)
    if args.stdout:
        sys.stdout.write(text)
        return 0
    target = args.output or GOLDEN_PATH
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            raise CommandError(
                f"{target} is stale; regenerate it with `robustloop workflow render`"
            )
        print(f"{target} is up to date")
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}")
    return 0


def _run_local(args: argparse.Namespace) -> int:
    from robustloop.commands.base import CommandError
    from workflows.executor import EXIT_EXISTS, ExecutorError, RunExists, parse_params, run_local
    from workflows.remediation import ParameterError, parameter_defaults, validate_parameters

    try:
        params = parse_params(args.param, parameter_defaults(args.cfg))
        validate_parameters(params, args.cfg)
    except (ExecutorError, ParameterError) as exc:
        raise CommandError(str(exc)) from None
    config_path = getattr(args, "config", None)
    if config_path is None and DEFAULT_CONFIG_PATH.exists():
        config_path = DEFAULT_CONFIG_PATH
    try:
        name, phase = run_local(args.cfg, config_path=config_path, name=args.name, params=params)
    except RunExists as exc:
        print(f"robustloop: {exc}", file=sys.stderr)
        return EXIT_EXISTS
    except ExecutorError as exc:
        raise CommandError(str(exc)) from None
    print(f"{name} {phase}")
    return 0 if phase == "Succeeded" else 1


def _add_source_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default=None,
        help="where the runs are: local (the local executor's submitter.runs_dir) or argo (the "
        "Argo Server of submitter.argo: host, namespace, token, TLS); default: submitter.kind",
    )


def _source(args: argparse.Namespace) -> str:
    return str(args.source or args.cfg.submitter.kind)


def _argo_where(cfg: RobustloopConfig) -> str:
    return f"namespace {cfg.submitter.argo.namespace} of the Argo Server {cfg.submitter.argo.host}"


def _from_argo(cfg: RobustloopConfig, read: Callable[[ArgoSubmitter], _T]) -> _T:
    """``read(client)`` with the receiver's Argo client; its failures are the CLI's errors."""
    from robustloop.commands.base import CommandError
    from webhook.submitters import SubmitError, build_argo_submitter

    argo = build_argo_submitter(cfg)
    try:
        return read(argo)
    except SubmitError as exc:
        raise CommandError(exc.message) from None
    finally:
        argo.close()


def _runs_list(args: argparse.Namespace) -> int:
    from workflows.runs import format_list, list_runs, newest_first

    of_model = f" of model {args.model}" if args.model is not None else ""
    if _source(args) == "argo":
        runs = newest_first(_from_argo(args.cfg, lambda argo: argo.list_runs(args.model)))
        where = _argo_where(args.cfg)
    else:
        runs = list_runs(args.cfg.submitter.runs_dir, model=args.model)
        where = str(args.cfg.submitter.runs_dir)
    if args.json:
        print(json.dumps(runs, indent=2, sort_keys=True))
    elif runs:
        print(format_list(runs))
    else:
        print(f"no runs{of_model} in {where}")
    return 0


def _runs_show(args: argparse.Namespace) -> int:
    from robustloop.commands.base import CommandError
    from workflows.runs import RunNotFound, format_show, load_run

    argo = _source(args) == "argo"
    if argo and args.logs:
        raise CommandError(
            "--logs prints the local executor's step logs; for a run on the Argo Server use "
            f"`argo -n {args.cfg.submitter.argo.namespace} logs {args.name}`"
        )
    if argo:
        found = _from_argo(args.cfg, lambda client: client.get_run(args.name))
        if found is None:
            raise CommandError(
                f"no run named {args.name!r} in {_argo_where(args.cfg)} "
                "(see `robustloop runs list --source argo`)"
            )
        wf = found
    else:
        try:
            wf = load_run(args.cfg.submitter.runs_dir, args.name)
        except RunNotFound as exc:
            raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(wf, indent=2, sort_keys=True))
        return 0
    print(format_show(wf))
    if args.logs:
        logs = Path(args.cfg.submitter.runs_dir) / args.name / "logs"
        for path in sorted(logs.glob("*.log")) if logs.is_dir() else []:
            print(f"\n==> {path.stem} <==")
            print(path.read_text(encoding="utf-8", errors="replace").rstrip())
    return 0


def _gate(args: argparse.Namespace) -> int:
    from robustloop.commands.base import CommandError
    from workflows.gate import GateError, run_gate

    try:
        decision = run_gate(
            args.cfg, args.candidate, args.baseline, args.eps, captured=args.captured
        )
    except GateError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(decision.as_dict(), indent=2, sort_keys=True))
    else:
        for reason in decision.reasons:
            print(reason)
        print(
            f"gate: {'PASSED' if decision.passed else 'REJECTED'} "
            f"({decision.candidate} vs {decision.baseline})"
        )
    return 0 if decision.passed else 1


def _guard(args: argparse.Namespace) -> int:
    from workflows.guard import CAP_REACHED, ROLLBACK, watch

    decision = watch(args.cfg, version=args.version, previous=args.previous, workflow=args.workflow)
    if args.json:
        print(json.dumps(decision.as_dict(), indent=2, sort_keys=True))
    else:
        print(f"guard: {decision.action}: {decision.reason}")
    return 1 if decision.action in (CAP_REACHED, ROLLBACK) else 0


__all__ = ["register"]
