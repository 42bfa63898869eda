"""YAML output that reads well: multi-line strings as literal blocks, keys in insertion order."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents lists under their key and writes multi-line strings as ``|``."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str_representer)


def dump(data: Any) -> str:
    """Serialise ``data`` deterministically (no key sorting, no line wrapping, UTF-8 kept)."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True, indent=2
    )
