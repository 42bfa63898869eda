"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import torch
import yaml

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
