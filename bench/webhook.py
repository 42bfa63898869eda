"""Benchmark of the webhook receiver: alerts accepted per second with durable writes, and p99.

Each variant runs as its own process (Werkzeug's threaded server, as ``robustloop webhook``
serves), driven by client threads in this process over keep-alive connections, one firing alert
per delivery (Alertmanager's usual group of one). Peers measured in the same run:

* ``flask-floor``: a bare Flask endpoint that parses the JSON and answers 200: the cost of the
  HTTP stack alone;
* ``receiver-no-fsync``: the receiver with SQLite ``synchronous=OFF``: what durability costs;
* ``receiver-durable``: the receiver as shipped (bearer token, validation, WAL with
  ``synchronous=FULL``, dispatcher deciding in dry-run mode alongside);
* ``receiver-duplicates``: the same deliveries again (Alertmanager's re-sends): no new incident.

Run: ``nice -n 10 .venv/bin/python bench/webhook.py [--requests N] [--clients C]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# `python bench/webhook.py` puts bench/ first on sys.path, where this file would shadow the
# `webhook` package: look in the repository root instead.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

import requests  # noqa: E402

# bench/ itself is off sys.path now: reach its helper through the repository root.
from bench._machine import machine_header  # noqa: E402

TOKEN = "bench-token"
FIXTURE = _HERE.parent / "tests" / "fixtures" / "alertmanager_firing.json"


def _serve(variant: str, db_path: str, port_queue: Any) -> None:
    """Child process: serve one variant on a free port until killed."""
    from flask import Flask, jsonify, request

    from robustloop.httpserver import HttpServer

    if variant == "flask-floor":
        app = Flask("floor")

        @app.post("/api/v1/alerts")
        def alerts() -> Any:
            json.loads(request.get_data())
            return jsonify(status="accepted")

    else:
        from robustloop.config import RobustloopConfig
        from webhook import create_app, receiver_of

        os.environ["ROBUSTLOOP_WEBHOOK_TOKEN"] = TOKEN
        config = RobustloopConfig()
        config.webhook.db_path = Path(db_path)
        config.webhook.dry_run = True
        config.webhook.poll_seconds = 0.5
        app = create_app(config)
        if variant == "receiver-no-fsync":
            # Benchmark only: what durability costs. The receiver always runs with FULL.
            receiver_of(app).outbox._conn.execute("PRAGMA synchronous=OFF")
    server = HttpServer(app, name=variant)  # what both services run on
    port_queue.put(server.port)
    server.start()
    threading.Event().wait()  # until the parent kills this process


def _payloads(n: int, offset: int) -> list[bytes]:
    template = json.loads(FIXTURE.read_text(encoding="utf-8"))
    base = datetime(2026, 1, 1, tzinfo=UTC)
    out = []
    for i in range(n):
        payload = json.loads(json.dumps(template))
        alert = payload["alerts"][0]
        alert["fingerprint"] = f"{offset + i:016x}"
        alert["startsAt"] = (base + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        out.append(json.dumps(payload).encode())
    return out


def _drive(url: str, bodies: list[bytes], clients: int) -> tuple[float, list[float], int]:
    """Send every body once from `clients` threads; (wall seconds, latencies, non-200s)."""
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()
    chunks = [bodies[i::clients] for i in range(clients)]
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    def client(chunk: list[bytes]) -> None:
        nonlocal failures
        session = requests.Session()
        mine = []
        bad = 0
        for body in chunk:
            started = time.perf_counter()
            answer = session.post(f"{url}/api/v1/alerts", data=body, headers=headers, timeout=30)
            mine.append(time.perf_counter() - started)
            bad += answer.status_code != 200
        with lock:
            latencies.extend(mine)
            failures += bad

    threads = [threading.Thread(target=client, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures


def _p(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="deliveries per variant")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    args = parser.parse_args()
    print(machine_header(), flush=True)
    ctx = mp.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("flask-floor", "receiver-no-fsync", "receiver-durable"):
            queue = ctx.Queue()
            db_path = str(Path(tmp) / f"{variant}.sqlite3")
            proc = ctx.Process(target=_serve, args=(variant, db_path, queue), daemon=True)
            proc.start()
            try:
                url = f"http://127.0.0.1:{queue.get(timeout=60)}"
                bodies = _payloads(args.requests, 0)
                _drive(url, _payloads(50, 10**9), args.clients)  # warm-up
                rows.append((variant, *_drive(url, bodies, args.clients)))
                if variant == "receiver-durable":
                    rows.append(("receiver-duplicates", *_drive(url, bodies, args.clients)))
            finally:
                proc.terminate()
                proc.join(10)
    floor = rows[0][1]
    print(
        f"webhook receiver: {args.requests} deliveries (1 alert each) per variant, "
        f"{args.clients} clients, {os.cpu_count()} CPUs"
    )
    print(
        f"{'variant':<22}{'alerts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-200':>9}"
        f"{'time vs floor':>15}"
    )
    for variant, seconds, latencies, failures in rows:
        print(
            f"{variant:<22}{len(latencies) / seconds:>10.0f}{_p(latencies, 0.5):>9.1f}"
            f"{_p(latencies, 0.99):>9.1f}{failures:>9}{seconds / floor:>14.2f}x"
        )
    durable = next(r for r in rows if r[0] == "receiver-durable")
    nofsync = next(r for r in rows if r[0] == "receiver-no-fsync")
    print(
        f"durable writes cost {durable[1] / nofsync[1]:.2f}x the time of unsynced ones; "
        f"mean latency durable {statistics.mean(durable[2]) * 1000:.1f} ms"
    )
    return 0 if all(r[3] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
