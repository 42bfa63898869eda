"""The README and the docs tell the truth.

The README starts with the two commands; every `robustloop ...` command it shows parses with the
real CLI parser, every `make X` names a target of the Makefile, every file it points to exists;
its YAML parses as a config; every relative link of the README and of docs/*.md resolves; and
the configuration table in docs/configuration.md is the one the config model generates.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from robustloop.cli import build_parser
from robustloop.config import RobustloopConfig
from robustloop.docs import TABLE_PAGE, config_table, table_in
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOC_PAGES = sorted((REPO_ROOT / "docs").glob("*.md"))
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", "(", ")", ">", ">>", "<"}
ROBUSTLOOP_EXECUTABLES = {"robustloop", ".venv/bin/robustloop"}


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int  # of the opening fence, 1-based


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    where: str  # "README.md:LINE" for the failure message


def _code_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*```(\S*)\s*$", lines[i])
        if fence:
            start = i
            i += 1
            body: list[str] = []
            while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            blocks.append(Block(fence.group(1).lower(), "\n".join(body), start + 1))
        i += 1
    return blocks


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", text, flags=re.S | re.M)


def _split_shell(line: str) -> list[list[str]]:
    """One shell line (continuations joined) as its simple commands, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _without_env(argv: list[str]) -> list[str]:
    """Drop leading VAR=value assignments."""
    while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):
        argv = argv[1:]
    return argv


def _shell_commands(text: str, name: str) -> Iterator[Command]:
    """Simple commands of the shell code blocks and of the inline code spans of a page."""
    for block in _code_blocks(text):
        if block.language not in SHELL_LANGUAGES:
            continue
        joined = ""
        for offset, raw in enumerate(block.text.splitlines(), start=1):
            if raw.rstrip().endswith("\\"):
                joined += raw.rstrip()[:-1] + " "
                continue
            joined += raw
            for argv in _split_shell(joined):
                if argv := _without_env(argv):
                    yield Command(tuple(argv), f"{name}:{block.line + offset}")
            joined = ""
    for span in re.findall(r"`([^`\n]+)`", _prose(text)):
        if re.match(r"^(robustloop|make) ", span):
            for argv in _split_shell(span):
                yield Command(tuple(argv), f"{name}: `{span}`")


def _make_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M)}


def _top_level_folders() -> set[str]:
    return {
        p.name
        for p in REPO_ROOT.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not p.name.endswith(".egg-info")
    } | {".ci"}


def _parses(argv: tuple[str, ...]) -> str | None:
    """None when the CLI accepts ``argv``, else argparse's complaint."""
    try:
        build_parser().parse_args(list(argv))
    except SystemExit as exc:
        if exc.code in (0, None):  # --help, --version
            return None
        return f"argparse exit status {exc.code}"
    return None


def _readme_commands() -> list[Command]:
    return list(_shell_commands(README.read_text(encoding="utf-8"), "README.md"))


# --- the README's first lines ---------------------------------------------------------------


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:]]
    assert [c for c in commands if c] == ["make demo", "make test"]


# --- the commands the README shows are true --------------------------------------------------


def test_every_robustloop_command_in_the_readme_parses() -> None:
    commands = [c for c in _readme_commands() if c.argv[0] in ROBUSTLOOP_EXECUTABLES]
    assert len(commands) >= 15, "the README shows the commands a user runs"
    false = [
        f"{c.where}: {shlex.join(c.argv)} ({why})" for c in commands if (why := _parses(c.argv[1:]))
    ]
    assert not false, "commands in README.md the CLI rejects:\n" + "\n".join(false)


def test_every_make_target_in_the_readme_exists() -> None:
    targets = _make_targets()
    wanted = {
        (arg, c.where)
        for c in _readme_commands()
        if c.argv[0] == "make"
        for arg in c.argv[1:]
        if not arg.startswith("-") and "=" not in arg
    }
    assert {"demo", "test"} <= {t for t, _ in wanted}
    missing = sorted(f"{where}: make {t}" for t, where in wanted if t not in targets)
    assert not missing, "Makefile has no such target:\n" + "\n".join(missing)


def test_every_repository_path_in_the_readme_commands_exists() -> None:
    folders = _top_level_folders()
    missing = []
    for command in _readme_commands():
        for arg in command.argv:
            path = arg.removeprefix("@")
            if "/" in path and path.split("/", 1)[0] in folders and not (REPO_ROOT / path).exists():
                missing.append(f"{command.where}: {path}")
    assert not missing, "README commands name files that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", [README, REPO_ROOT / TABLE_PAGE], ids=lambda p: p.name)
def test_the_yaml_shown_is_a_valid_config(page: Path) -> None:
    blocks = [
        b for b in _code_blocks(page.read_text(encoding="utf-8")) if b.language in {"yaml", "yml"}
    ]
    assert blocks, f"{page.name} shows a robustloop.yaml fragment"
    for block in blocks:
        RobustloopConfig.model_validate(yaml.safe_load(block.text))  # raises when it is false


@pytest.mark.parametrize(
    "argv",
    [
        ("robustloop", "harden", "--from", "production", "--method", "madry"),  # no such method
        ("robustloop", "models", "delete", "VERSION"),  # no such action
        ("robustloop", "serve", "--workers", "4"),  # no such option
        ("robustloop", "launch"),  # no such command
    ],
)
def test_a_false_command_is_caught(argv: tuple[str, ...]) -> None:
    assert _parses(argv[1:]) is not None


def test_the_command_extraction_handles_the_shell() -> None:
    page = (
        "```sh\n"
        "robustloop models list   # list them\n"
        "ROBUSTLOOP_X=1 robustloop demo --quick && make lint\n"
        "robustloop harden --from production \\\n"
        "    --epochs 2 | tee log\n"
        "```\n"
        "Prose with `robustloop runs list` and `robustloop.yaml`.\n"
    )
    assert [c.argv for c in _shell_commands(page, "page")] == [
        ("robustloop", "models", "list"),
        ("robustloop", "demo", "--quick"),
        ("make", "lint"),
        ("robustloop", "harden", "--from", "production", "--epochs", "2"),
        ("tee", "log"),
        ("robustloop", "runs", "list"),
    ]


# --- links ----------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _prose(page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


@pytest.mark.parametrize(
    "page", [README, *DOC_PAGES], ids=lambda p: p.relative_to(REPO_ROOT).as_posix()
)
def test_every_relative_link_resolves(page: Path) -> None:
    text = _prose(page.read_text(encoding="utf-8"))
    broken = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.name} links to what does not exist: {broken}"


@pytest.mark.parametrize(
    "page", [README, *DOC_PAGES], ids=lambda p: p.relative_to(REPO_ROOT).as_posix()
)
def test_every_docs_page_named_exists(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    named = set(re.findall(r"(?<![\w/.-])docs/([\w.-]+\.md)", text))
    missing = sorted(n for n in named if not (REPO_ROOT / "docs" / n).exists())
    assert not missing, f"{page.name} names pages that do not exist: {missing}"


# --- the generated configuration table ------------------------------------------------------


def test_configuration_table_is_current() -> None:
    text = (REPO_ROOT / TABLE_PAGE).read_text(encoding="utf-8")
    assert table_in(text) == config_table(), f"{TABLE_PAGE} is stale: run `make docs`"


def test_readme_links_to_the_configuration_table() -> None:
    text = README.read_text(encoding="utf-8")
    assert f"]({TABLE_PAGE.as_posix()})" in text
    assert "config-table:begin" not in text, "the table lives in docs/configuration.md"


# -- "Protect your own model": the five steps, run as a user runs them --------------------------


def _section(text: str, heading: str) -> str:
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_the_own_model_steps_run_from_a_folder_of_images_and_a_pt_file(tmp_path: Path) -> None:
    """GIVEN a user's ImageFolder, factory module and state_dict in a folder, WHEN the README's
    five commands run there (with its YAML merged into the config after step 1), THEN each
    succeeds and the last one brings the loop up on the user's model."""
    import signal
    import subprocess
    import sys

    import torch

    from tests.support import FACTORY, write_imagefolder

    section = _section(README.read_text(encoding="utf-8"), "Protect your own model")
    blocks = _code_blocks(section)
    (steps,) = [b for b in blocks if b.language == "sh"]
    (settings,) = [b for b in blocks if b.language in {"yaml", "yml"}]
    lines = [line.split("#")[0].strip() for line in steps.text.splitlines()]
    commands = [shlex.split(line) for line in lines if line]
    assert len(commands) == 5 and all(c[0] == "robustloop" for c in commands)

    write_imagefolder(tmp_path / "my-images", {"train": 30, "test": 20})
    (tmp_path / "mymodel.py").write_text(FACTORY)
    sys.path.insert(0, str(tmp_path))
    try:
        import mymodel  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(
        mymodel.build(in_channels=3, num_classes=10, image_size=(32, 32)).state_dict(),
        tmp_path / "my_model.pt",
    )

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    *finite, up = commands
    for index, argv in enumerate(finite):
        done = run(argv)
        assert done.returncode == 0, f"step {index + 1} {argv}: {done.stderr[-2000:]}"
        if index == 0:  # step 1 wrote the config; the user sets data and model as shown
            config = tmp_path / "my.yaml"
            doc = yaml.safe_load(config.read_text())
            for key, value in yaml.safe_load(settings.text).items():
                doc[key].update(value)
            config.write_text(yaml.safe_dump(doc))

    proc = subprocess.Popen(
        [sys.executable, "-m", *up],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("robustloop stack up"):
                break
        assert any(line.startswith("robustloop stack up") for line in seen), "".join(seen)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            # read what it says while it stops: a full pipe must not hold the stop up
            rest, _ = proc.communicate(timeout=60)
            seen.append(rest)
        except subprocess.TimeoutExpired:
            proc.kill()
            seen.append(proc.communicate()[0])
    assert proc.returncode == 0, "".join(seen)
