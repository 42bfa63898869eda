"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import jsonschema
import numpy as np
import torch
import yaml
from PIL import Image

from training import ModelStore, build_model


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """Run ``robustloop ARGV`` in this process: (exit code, stdout, stderr)."""
    from robustloop.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def register_model(store: ModelStore, seed: int = 0) -> str:
    """Register an untrained reference CNN (seeded weights); enough for protocol tests."""
    torch.manual_seed(seed)
    return store.register(
        build_model("cnn"),
        architecture="cnn",
        parent=None,
        recipe={},
        metrics={},
        split={},
        provenance={"test": True},
    )


class _CrdLoader(yaml.SafeLoader):
    """PyYAML reads a bare ``=`` (an enum value in the CRDs) as YAML 1.1's value tag: a string."""


def _construct_value(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode)
    return str(loader.construct_scalar(node))


_CrdLoader.add_constructor("tag:yaml.org,2002:value", _construct_value)


def strict_schema(schema: Any) -> Any:
    """A copy of a schema where every object with declared properties rejects other keys.

    The API server prunes unknown fields of a custom resource silently; a typo in the chart would
    then vanish without an error. Here it is one.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_schema(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_crd_validators(schemas: Path) -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator of each Prometheus Operator CRD's served versions, from
    ``schemas/prometheus-operator/*.yaml`` (strict: see :func:`strict_schema`)."""
    validators = {}
    for path in sorted((schemas / "prometheus-operator").glob("*.yaml")):
        crd = yaml.load(path.read_text(encoding="utf-8"), Loader=_CrdLoader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict_schema(version["schema"]["openAPIV3Schema"])
            cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            validators[(f"{group}/{version['name']}", kind)] = cls(schema)
    assert validators, f"no CRDs found in {schemas / 'prometheus-operator'}"
    return validators


ANNOUNCE = re.compile(r"^serving (\S+) (\S+) on (http://\S+)$")


class Serve:
    """A `robustloop serve` subprocess whose stdout lines arrive on a queue; always stopped."""

    def __init__(self, config_path: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "robustloop", "--config", str(config_path), "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=self._read, args=(stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def announced(self, timeout: float = 120.0) -> re.Match[str]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no announcement within {timeout:.0f}s") from None
        match = ANNOUNCE.match(line.strip())
        assert match, f"unexpected first line: {line!r}"
        return match

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


# -- a 3-channel image dataset and a user's model factory, for "your own model" tests --

CLASSES = [f"kind-{i}" for i in range(10)]
PALETTE = np.random.default_rng(7).integers(30, 226, size=(10, 3))

FACTORY = '''
"""A user's model factory, outside the robustloop repository."""
from torch import nn


def small_net(in_channels, num_classes, image_size):
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, num_classes),
    )


build = small_net


def wrong_output(in_channels, num_classes, image_size):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))
'''


def image_of_class(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A class is a colour (with noise) and a bright bar whose position depends on the class."""
    pixels = PALETTE[label] + rng.normal(0, 25, size=(size, size, 3))
    row = 3 * label
    pixels[row : row + 3, :, :] = 250
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_imagefolder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for part, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(image_of_class(label, rng)).save(folder / f"{i}.png")
    return root
