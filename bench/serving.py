"""What does the server's instrumentation cost? Throughput and latency, instrumentation on vs off.

Starts model servers (separate processes, one torch thread each) on one model:

- ``off``: no signals, no metrics (``create_app(..., instrument=False)``);
- ``on, squeeze F``: entropy and max-probability histograms, counters, latency, and feature
  squeezing on a fraction F of the requests, for F = 0, the default (marked ``*``), 0.25, 1.

One closed-loop client (keep-alive HTTP/1.1, pre-encoded FP32 bodies) sends requests of batch 1
and 32 to each in turn, in interleaved rounds so that a noisy neighbour hurts all of them alike,
and prints throughput (requests and images per second), p50 and p99 latency, the server's CPU
time per request (from /proc: unlike wall time, it does not grow while the server waits for a
core on a busy machine), and each configuration's overhead relative to ``off``.
Goal: <= 10 % overhead at the default sampling.

Run: ``nice -n 10 .venv/bin/python bench/serving.py`` (about a minute). Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import machine_header


def _use_repo_packages() -> None:
    """Run as a script, bench/ comes first on sys.path and `import serving` would find this
    very file instead of the package: drop bench/ from the path."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


def configs() -> list[tuple[str, bool, float]]:
    """(name, instrument, squeeze fraction) of each server; the default fraction from config."""
    from robustloop.config import ServingConfig

    default = ServingConfig().squeeze_fraction
    fractions = sorted({0.0, default, 0.25, 1.0})
    return [("off", False, 0.0)] + [
        (f"on, squeeze {f:g}" + (" *" if f == default else ""), True, f) for f in fractions
    ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), immune to waiting for a core."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


MODEL = "fashion-cnn"


def serve(args: argparse.Namespace) -> None:
    """Child process: serve the store's production model and write the port to a file."""
    import torch

    from robustloop.config import RobustloopConfig
    from serving import RunningServer, create_app

    torch.set_num_threads(1)
    cfg = RobustloopConfig()
    cfg.store.path = Path(args.store)
    cfg.serving.squeeze_fraction = args.squeeze
    app = create_app(cfg, instrument=bool(args.instrument))
    server = RunningServer(app, "127.0.0.1", 0).start()
    Path(args.port_file).write_text(str(server.port))
    while True:
        time.sleep(3600)


def make_store(root: Path) -> None:
    import torch

    from training import ModelStore, build_model

    torch.manual_seed(0)
    ModelStore(root).register(
        build_model("cnn"),
        architecture="cnn",
        parent=None,
        recipe={},
        metrics={},
        split={},
        provenance={"bench": "serving"},
    )


def in_process(store: Path, payloads: dict[int, bytes], rounds: int, count: int) -> None:
    """CPU time per request of the app alone (Flask test client, no sockets), on vs off.

    Thread CPU time does not grow while the process waits for a core, so this comparison holds
    on a busy machine where wall-clock figures wobble.
    """
    import torch

    from robustloop.config import RobustloopConfig
    from serving import create_app, get_state

    torch.set_num_threads(1)
    clients = {}
    for name, instrument, squeeze in configs():
        cfg = RobustloopConfig()
        cfg.store.path = store
        cfg.serving.squeeze_fraction = squeeze
        app = create_app(cfg, instrument=instrument, watch=False)
        get_state(app).rng.seed(0)
        clients[name] = app.test_client()
    path = f"/v2/models/{MODEL}/infer"
    print("app only (Flask test client, no HTTP), thread CPU time per request:")
    print(f"{'configuration':<20} {'batch':>5} {'CPU ms/req':>10} {'d CPU':>7}")
    for b, payload in payloads.items():
        n = count if b == 1 else max(count // 10, 5)
        spent = dict.fromkeys(clients, 0.0)
        for _ in range(rounds):
            for name, client in clients.items():
                started = time.thread_time()
                for _ in range(n):
                    response = client.post(path, data=payload, content_type="application/json")
                    if response.status_code != 200:
                        raise RuntimeError(f"app answered {response.status_code}")
                spent[name] += time.thread_time() - started
        base = spent["off"]
        for name in clients:
            per_request = spent[name] / (n * rounds)
            print(f"{name:<20} {b:>5} {per_request * 1e3:>10.3f} {spent[name] / base - 1:>+7.1%}")
    print()


def body(batch: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.random((batch, 784), dtype=np.float32).round(4).reshape(-1).tolist()
    tensor = {"name": "images", "shape": [batch, 784], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def measure(port: int, payload: bytes, count: int) -> list[float]:
    """Latencies (seconds) of ``count`` sequential requests on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    path = f"/v2/models/{MODEL}/infer"
    latencies = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("POST", path, body=payload, headers=headers)
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"server answered {response.status}")
    finally:
        conn.close()
    return latencies


def wait_for_port(path: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError("server did not start within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=100, help="batch-1 requests per round")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--instrument", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--squeeze", type=float, default=0.25, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _use_repo_packages()
    if args.serve:
        serve(args)
        return
    # the figures come from processes that each run one torch thread (serve, in_process)
    print(machine_header(threads=1), flush=True)

    batches = {1: args.requests, 32: max(args.requests // 4, 10)}
    payloads = {b: body(b) for b in batches}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_store(root / "store")
        in_process(root / "store", payloads, args.rounds, args.requests * 2)
        procs: list[subprocess.Popen[bytes]] = []
        ports: dict[str, int] = {}
        try:
            for name, instrument, squeeze in configs():
                port_file = root / f"port-{len(procs)}"
                cmd = [
                    sys.executable,
                    __file__,
                    "--serve",
                    f"--store={root / 'store'}",
                    f"--instrument={int(instrument)}",
                    f"--squeeze={squeeze}",
                    f"--port-file={port_file}",
                ]
                procs.append(subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.getcwd()}))
                ports[name] = wait_for_port(port_file, procs[-1])
            for name in ports:  # warm up
                for b, payload in payloads.items():
                    measure(ports[name], payload, 5 if b == 1 else 2)
            pids = {name: proc.pid for name, proc in zip(ports, procs, strict=True)}
            results: dict[tuple[str, int], list[float]] = {}
            elapsed: dict[tuple[str, int], float] = {}
            cpu: dict[tuple[str, int], float] = {}
            for _ in range(args.rounds):
                for b, payload in payloads.items():
                    for name in ports:
                        key = (name, b)
                        cpu_before, started = cpu_seconds(pids[name]), time.perf_counter()
                        lat = measure(ports[name], payload, batches[b])
                        elapsed[key] = elapsed.get(key, 0.0) + time.perf_counter() - started
                        cpu[key] = cpu.get(key, 0.0) + cpu_seconds(pids[name]) - cpu_before
                        results.setdefault(key, []).extend(lat)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
    report(results, elapsed, cpu, batches, args.rounds)


def report(
    results: dict[tuple[str, int], list[float]],
    elapsed: dict[tuple[str, int], float],
    cpu: dict[tuple[str, int], float],
    batches: dict[int, int],
    rounds: int,
) -> None:
    print(
        f"one closed-loop client, {rounds} interleaved rounds; "
        + ", ".join(
            f"batch {b}: {n * rounds} requests per configuration" for b, n in batches.items()
        )
    )
    names = list(dict.fromkeys(name for name, _ in results))
    header = (
        f"{'configuration':<20} {'batch':>5} {'req/s':>7} {'img/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'CPU ms/req':>10} {'d req/s':>8} {'d p50':>7} {'d CPU':>7}"
    )
    print(header)
    print("-" * len(header))
    for b in batches:
        off = ("off", b)
        base_rate = len(results[off]) / elapsed[off]
        base_p50 = float(np.percentile(results[off], 50))
        base_cpu = cpu[off] / len(results[off])
        for name in names:
            key = (name, b)
            lat = np.asarray(results[key])
            rate = len(lat) / elapsed[key]
            p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
            per_request = cpu[key] / len(lat)
            print(
                f"{name:<20} {b:>5} {rate:>7.1f} {rate * b:>7.0f} {p50 * 1e3:>7.2f} "
                f"{p99 * 1e3:>7.2f} {per_request * 1e3:>10.2f} {rate / base_rate - 1:>+8.1%} "
                f"{p50 / base_p50 - 1:>+7.1%} {per_request / base_cpu - 1:>+7.1%}"
            )
    print("d columns: change relative to 'off' at the same batch size; * = default sampling")


if __name__ == "__main__":
    main()
