"""``robustloop serve`` (the model server) and ``robustloop traffic`` (the traffic generator)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from robustloop.commands.base import add_device_option

log = logging.getLogger("robustloop.serve")

TRAFFIC_MODES = ("clean", "fgsm", "pgd", "bpda", "square", "noise")
"""``--mode`` choices: serving.traffic.MODES (not imported here: it loads torch)."""


def register(sub: Any) -> None:
    """Add ``serve`` and ``traffic`` to the robustloop parser."""
    p = sub.add_parser(
        "serve",
        help="serve the store's production model (OIP v2 REST, /metrics, hot reload)",
        description="Serve the store's production model over the Open Inference Protocol v2 "
        "REST API with Prometheus metrics at /metrics; new production versions are loaded "
        "and swapped in without downtime. Prints 'serving <model> <version> on <url>' once "
        "ready (waitress, serving.http_threads requests at once; docs/serving.md).",
    )
    p.add_argument("--host", default=None, help="bind address (default: serving.host)")
    p.add_argument(
        "--port", type=int, default=None, help="port; 0 picks a free one (default: serving.port)"
    )
    add_device_option(p)
    p.set_defaults(handler=_serve)

    t = sub.add_parser(
        "traffic",
        help="send clean, attacked (FGSM, PGD, BPDA, Square) or noisy traffic to the server",
        description="Stream images of the traffic split to the model server at a steady "
        "rate, attacked or not, feeding back ground truth for a fraction of requests; writes "
        "one JSON line per second (t, mode, version, sent, accuracy, attacked, queries, "
        "errors, ...). fgsm, pgd and bpda are white-box attackers that load the served "
        "version from the store (bpda also keeps the squeeze score and entropy low); square "
        "is a black-box attacker that only queries the infer endpoint (docs/serving.md).",
    )
    t.add_argument("--url", default=None, help="server base URL (default: from serving.*)")
    t.add_argument("--rate", type=float, default=10.0, help="requests per second (default 10)")
    t.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    t.add_argument(
        "--mode",
        choices=TRAFFIC_MODES,
        default="clean",
        help="traffic kind: clean, an attack (fgsm, pgd, bpda, square) or noise",
    )
    t.add_argument(
        "--eps",
        type=float,
        default=None,
        help="L-inf radius of an attack (default: stack.attack_eps, else remediation.eps); "
        "noise standard deviation for noise (default 0.3)",
    )
    t.add_argument(
        "--attack-fraction",
        type=float,
        default=1.0,
        help="attack modes: fraction of requests attacked, in (0, 1]; the others are sent "
        "clean (default 1)",
    )
    t.add_argument(
        "--query-budget",
        type=int,
        default=None,
        help="square: queries to the infer endpoint allowed per attacked image (default 100)",
    )
    t.add_argument(
        "--bpda-weight",
        type=float,
        default=None,
        help="bpda: weight of its squeeze-score and entropy penalties, >= 0 (default 1); lower "
        "hides less from the detector and takes more accuracy (docs/results.md)",
    )
    t.add_argument(
        "--feedback-fraction",
        type=float,
        default=0.2,
        help="fraction of requests whose true labels are fed back (default 0.2)",
    )
    t.add_argument("--batch", type=int, default=1, help="images per request (default 1)")
    t.add_argument("--steps", type=int, default=10, help="PGD and BPDA steps (default 10)")
    t.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads for crafting (default 1)"
    )
    t.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of image order, noise, the attacked requests and the Square attack's search",
    )
    t.add_argument("--log", type=Path, default=None, help="append JSON lines here (default stdout)")
    t.set_defaults(handler=_traffic)


def _serve(args: argparse.Namespace) -> int:
    from robustloop.commands.base import CommandError
    from serving import RunningServer, create_app, get_state
    from training.device import use_threads

    cfg = args.cfg
    use_threads(cfg.serving.threads)
    host = args.host if args.host is not None else cfg.serving.host
    port = args.port if args.port is not None else cfg.serving.port
    from training import DeviceError

    try:
        app = create_app(cfg)
    except DeviceError as exc:
        raise CommandError(str(exc)) from None
    state = get_state(app)
    try:
        server = RunningServer(app, host, port, threads=cfg.serving.http_threads)
    except OSError as exc:  # robustloop.httpserver.BindError says what and where
        state.close()
        raise CommandError(str(exc)) from None
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    try:
        if state.watcher.current is None:
            log.info(
                "listening on %s, waiting for a production model in %s "
                "(train one: `robustloop train`)",
                server.url,
                cfg.store.path,
            )
        while state.watcher.current is None and not stopping.wait(0.2):
            pass
        served = state.watcher.current
        if served is not None:
            line = f"serving {cfg.model.name} {served.version} on {server.url}"
            print(line, flush=True)
            log.info(line)
        while not stopping.wait(1.0):
            pass
    finally:
        server.stop()
        state.close()
    return 0


def _traffic(args: argparse.Namespace) -> int:
    from robustloop.commands.base import CommandError
    from serving.traffic import TrafficError, TrafficOptions, open_log, run_traffic

    cfg = args.cfg
    url = args.url or f"http://{cfg.serving.host}:{cfg.serving.port}"
    try:
        options = TrafficOptions(
            url=url,
            rate=args.rate,
            duration=args.duration,
            mode=args.mode,
            eps=args.eps,
            feedback_fraction=args.feedback_fraction,
            batch=args.batch,
            pgd_steps=args.steps,
            seed=args.seed,
            attack_fraction=args.attack_fraction,
            query_budget=args.query_budget,
            bpda_weight=args.bpda_weight,
        )
    except TrafficError as exc:
        raise CommandError(str(exc)) from None
    from robustloop.tokens import TokenFileError
    from training import DatasetError, use_threads

    if args.threads < 1:
        raise CommandError(f"--threads must be at least 1 (got {args.threads})")

    use_threads(args.threads)
    out = open_log(args.log)
    started = time.monotonic()
    try:
        summary = run_traffic(cfg, options, out)
    except (TrafficError, DatasetError, TokenFileError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        if out is not sys.stdout:
            out.close()
    accuracy = "n/a" if summary.accuracy is None else f"{summary.accuracy:.3f}"
    attacked = summary.attacked_accuracy
    log.info(
        "traffic done in %.1fs: %d requests (%d attacked, accuracy on those %s), %d images, "
        "accuracy %s, %d attacker queries, %d errors, versions %s",
        time.monotonic() - started,
        summary.sent,
        summary.attacked,
        "n/a" if attacked is None else f"{attacked:.3f}",
        summary.images,
        accuracy,
        summary.queries,
        summary.errors,
        ",".join(summary.versions) or "none",
    )
    return 0


__all__ = ["register"]
