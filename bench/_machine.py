"""The machine class a benchmark's figures come from, for the header of every script in bench/.

A figure means little without the machine it was measured on: bfloat16 autocast runs about 1.3
times the samples per second of float32 on a CPU with native bfloat16 (AVX512-BF16 or AMX) and
is slower than float32 where it is emulated; torch's kernels depend on the CPU capability it
dispatches to; "2 threads" means something else on 2 cores than on 64. So every script prints
:func:`machine_header` before its first figure, and one that writes JSON puts
:func:`describe_machine` in it.

bench/ is not a package: a script run as ``python bench/X.py`` (from the repository root or
anywhere else) has its own folder first on sys.path and imports this module as ``_machine``.
torch and training are imported when a function is called, not on import, so that a process
which never calls one (bench/webhook.py's server children) does not load torch.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
"""Where Linux names the CPU model (the ``model name`` of each processor)."""

LABELS = {
    "cpu": "cpu",
    "cpu_capability": "cpu capability",
    "native_bf16": "native bf16",
    "precision": "precision",
    "device": "device",
    "gpu": "gpu",
    "threads": "threads",
    "cores": "cores",
    "torch": "torch",
}
"""Header label of each key of :func:`describe_machine`, in the order the header lists them."""


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name, for example ``AMD EPYC 9654 96-Core Processor``.

    Read from the first ``model name`` line of ``cpuinfo``; where that file is absent or names
    no model (macOS, Windows, some ARM kernels), ``platform.processor()``, then
    ``platform.machine()``, then ``unknown``.
    """
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def describe_machine(
    precision: str = "fp32", device: str = "cpu", threads: int | None = None
) -> dict[str, Any]:
    """The machine class and run settings a benchmark's figures come from, as JSON-ready data.

    Args:
        precision: the arithmetic the measured code runs in: ``fp32``, ``bf16``, or a phrase
            where parts of the benchmark differ (say which part runs in which).
        device: ``cpu``, or ``cuda`` / ``cuda:N`` for a benchmark that runs on a GPU; the
            GPU's name is added under ``gpu``.
        threads: torch CPU threads of the process that produces the figures, where that is not
            this one (a server the benchmark starts); None: ``torch.get_num_threads()`` here.

    Returns:
        ``cpu`` (model name), ``cpu_capability`` (the kernels torch dispatches to, e.g.
        ``AVX512``), ``native_bf16`` (whether ``training.use_bf16("auto")`` picks bfloat16:
        oneDNN reports native support; False on builds without oneDNN), ``precision``,
        ``device``, ``gpu`` (on CUDA only), ``threads``, ``cores`` (``os.cpu_count()``) and
        ``torch`` (its version), in the order :func:`machine_header` prints them.
    """
    import torch

    from training import use_bf16

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": use_bf16("auto"),
        "precision": precision,
        "device": device,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    info["threads"] = torch.get_num_threads() if threads is None else threads
    info["cores"] = os.cpu_count()
    info["torch"] = torch.__version__
    return info


def machine_header(precision: str = "fp32", device: str = "cpu", threads: int | None = None) -> str:
    """:func:`describe_machine` as ``# key: value`` lines, to print before a benchmark's figures.

    Arguments as :func:`describe_machine`. Booleans read ``yes`` / ``no``. No trailing newline.
    """
    info = describe_machine(precision, device, threads)
    lines = []
    for key, label in LABELS.items():
        if key in info:
            value = info[key]
            text = ("yes" if value else "no") if isinstance(value, bool) else str(value)
            lines.append(f"# {label}: {text}")
    return "\n".join(lines)
