"""What does the server's instrumentation cost? Throughput and latency, instrumentation on vs off.

Starts four model servers (separate processes, one torch thread each) on one model:

- ``off``: no signals, no metrics (``create_app(..., instrument=False)``);
- ``on, squeeze 0``: entropy and max-probability histograms, counters, latency, no squeezing;
- ``on, squeeze 0.25``: the default (feature squeezing on a quarter of the requests);
- ``on, squeeze 1``: feature squeezing on every request.

One closed-loop client (keep-alive HTTP/1.1, pre-encoded FP32 bodies) sends requests of batch 1
and 32 to each in turn, in interleaved rounds so that a noisy neighbour hurts all of them alike,
and prints throughput (requests and images per second), p50 and p99 latency, and each
configuration's overhead relative to ``off``. Goal: <= 10 % overhead at the default sampling.

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


def _use_repo_packages() -> None:
    """Run as a script, bench/ comes first on sys.path and `import serving` would find this
    very file instead of the package: drop bench/ from the path."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


CONFIGS: tuple[tuple[str, bool, float], ...] = (
    ("off", False, 0.0),
    ("on, squeeze 0", True, 0.0),
    ("on, squeeze 0.25", True, 0.25),
    ("on, squeeze 1", True, 1.0),
)
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

    batches = {1: args.requests, 32: max(args.requests // 4, 10)}
    payloads = {b: body(b) for b in batches}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_store(root / "store")
        procs: list[subprocess.Popen[bytes]] = []
        ports: dict[str, int] = {}
        try:
            for name, instrument, squeeze in CONFIGS:
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
            results: dict[tuple[str, int], list[float]] = {}
            elapsed: dict[tuple[str, int], float] = {}
            for _ in range(args.rounds):
                for b, payload in payloads.items():
                    for name in ports:
                        started = time.perf_counter()
                        lat = measure(ports[name], payload, batches[b])
                        elapsed[(name, b)] = elapsed.get((name, b), 0.0) + (
                            time.perf_counter() - started
                        )
                        results.setdefault((name, b), []).extend(lat)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
    report(results, elapsed, batches, args.rounds)


def report(
    results: dict[tuple[str, int], list[float]],
    elapsed: dict[tuple[str, int], float],
    batches: dict[int, int],
    rounds: int,
) -> None:
    print(
        f"one closed-loop client, {rounds} interleaved rounds; "
        + ", ".join(
            f"batch {b}: {n * rounds} requests per configuration" for b, n in batches.items()
        )
    )
    header = (
        f"{'configuration':<18} {'batch':>5} {'req/s':>8} {'img/s':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'throughput':>11} {'p50':>7}"
    )
    print(header)
    print("-" * len(header))
    for b in batches:
        base_rate = len(results[("off", b)]) / elapsed[("off", b)]
        base_p50 = float(np.percentile(results[("off", b)], 50))
        for name, _, _ in CONFIGS:
            lat = np.asarray(results[(name, b)])
            rate = len(lat) / elapsed[(name, b)]
            p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
            print(
                f"{name:<18} {b:>5} {rate:>8.1f} {rate * b:>8.0f} {p50 * 1e3:>8.2f} "
                f"{p99 * 1e3:>8.2f} {rate / base_rate - 1:>+10.1%} {p50 / base_p50 - 1:>+7.1%}"
            )
    print("throughput and p50 columns: change relative to 'off' at the same batch size")


if __name__ == "__main__":
    main()
