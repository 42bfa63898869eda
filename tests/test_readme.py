"""The README tells the truth about the config and starts with the two commands."""

from __future__ import annotations

from robustloop.docs import BEGIN, END, config_table
from tests.conftest import REPO_ROOT


def test_readme_config_table_is_current() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    assert text[start:end].strip() == config_table(), "README is stale: run `make docs`"


def test_readme_starts_with_the_two_commands() -> None:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:]]
    assert [c for c in commands if c] == ["make demo", "make test"]
