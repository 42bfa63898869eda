"""What the images are built from: a base image pinned by digest, Python packages pinned by one
constraints file (docker/constraints.txt), and the script that refreshes both.

No Docker engine runs here, so what the builds rely on is read from the Dockerfiles and checked:
both start from the same ``python:<tag>@sha256:<digest>``, every pip install that resolves
dependencies is constrained by the same file, the file pins exact versions that satisfy
pyproject.toml (torch and torchvision included), the build context keeps it, and
scripts/refresh-pins.py writes what the images install and refuses what it cannot do.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {
    "server": REPO_ROOT / "docker" / "Dockerfile",
    "receiver": REPO_ROOT / "docker" / "Dockerfile.webhook",
}
CONSTRAINTS = "docker/constraints.txt"
SCRIPT = REPO_ROOT / "scripts" / "refresh-pins.py"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
FROM_PINNED = re.compile(r"FROM (?P<tag>[^\s@$]+:[^\s@$]+)@sha256:(?P<digest>[0-9a-f]{64})")
TORCH_PINS = {"torch": "2.14.1", "torchvision": "0.29.1"}
TEST_ONLY = {"pytest", "hypothesis", "ruff", "mypy", "scikit-learn", "tritonclient", "onnx"}


def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out: list[str] = []
    pending = ""
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(" ".join((pending + line).split()))
        pending = ""
    assert not pending, f"{dockerfile.name} ends inside a continued line"
    return out


def _pip_installs(dockerfile: Path) -> list[list[str]]:
    """The words of every `pip install` command in the Dockerfile's RUN instructions."""
    installs = []
    for instruction in _instructions(dockerfile):
        if not instruction.startswith("RUN "):
            continue
        command: list[str] = []
        for word in [*shlex.split(instruction[4:]), "&&"]:
            if word in {"&&", "||", ";", "|"}:
                if command[:2] == ["pip", "install"]:
                    installs.append(command[2:])
                command = []
            else:
                command.append(word)
    return installs


def _requirement_args(words: list[str]) -> list[str]:
    """The positional arguments of a pip install (requirements or paths), options skipped."""
    with_value = {"-c", "--constraint", "-r", "--requirement", "--index-url", "-i"}
    args, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in with_value:
            skip = True
        elif not word.startswith("-"):
            args.append(word)
    return args


def _constraints(path: Path = REPO_ROOT / CONSTRAINTS) -> dict[str, Requirement]:
    """Canonical name -> the pin, after checking every line is one exact `name==version`."""
    pins: dict[str, Requirement] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        where = f"{path.name}:{number}"
        assert not requirement.extras and requirement.marker is None and not requirement.url, where
        (spec,) = requirement.specifier
        assert spec.operator == "==" and "*" not in spec.version, f"{where}: not an exact pin"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{where}: {requirement.name} is pinned twice"
        pins[name] = requirement
    assert pins, f"{path} pins nothing"
    return pins


def _pinned_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    return spec.version


def _pyproject_requirements(*, extras: tuple[str, ...] | None = None) -> list[Requirement]:
    """pyproject.toml's dependencies plus the extras named (every extra when None)."""
    project = PYPROJECT["project"]
    groups = project["optional-dependencies"]
    texts = list(project["dependencies"])
    for extra in groups if extras is None else extras:
        texts += groups[extra]
    return [Requirement(text) for text in texts]


# --------------------------------------------------------------------------------------------
# the base image


def test_both_images_start_from_one_base_pinned_by_digest() -> None:
    references = {}
    for image, dockerfile in DOCKERFILES.items():
        froms = [i for i in _instructions(dockerfile) if i.upper().startswith("FROM ")]
        assert froms, f"{image}: no FROM"
        for line in froms:
            match = FROM_PINNED.fullmatch(line.split(" AS ")[0])
            assert match, f"{image}: {line!r} is not FROM <image>:<tag>@sha256:<64 hex>"
            references[image] = match.group(0)
    assert len(set(references.values())) == 1, (
        f"the images start from different bases: {references}"
    )


def test_the_base_images_python_satisfies_requires_python() -> None:
    line = next(i for i in _instructions(DOCKERFILES["server"]) if i.startswith("FROM "))
    match = FROM_PINNED.match(line)
    assert match, line
    version = re.fullmatch(r"python:(\d+\.\d+)[-\w.]*", match.group("tag"))
    assert version, f"{match.group('tag')} names no Python version"
    assert Version(version.group(1)) in SpecifierSet(PYPROJECT["project"]["requires-python"])


# --------------------------------------------------------------------------------------------
# the constraints


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_resolving_pip_install_uses_the_one_constraints_file(image: str) -> None:
    """An install that resolves dependencies is constrained by docker/constraints.txt, which the
    image copies to that path first; one without dependencies installs only exact pins or the
    project itself, and the project is built by the pinned base's setuptools, not by a build
    backend fetched at build time."""
    dockerfile = DOCKERFILES[image]
    instructions = _instructions(dockerfile)
    copy = f"COPY {CONSTRAINTS} ./{CONSTRAINTS}"
    assert copy in instructions, f"{image}: the constraints file is not copied to ./{CONSTRAINTS}"
    copied_at = instructions.index(copy)
    installs = _pip_installs(dockerfile)
    assert installs, f"{image} installs nothing with pip"
    constrained = 0
    for words in installs:
        args = _requirement_args(words)
        if "." in args:
            assert "--no-build-isolation" in words, f"{image}: {words} fetches a build backend"
        if "--no-deps" in words:
            for arg in args:
                assert arg == "." or "==" in arg, f"{image}: {arg} installed without a pin"
            continue
        assert ["-c", CONSTRAINTS] in (words[i : i + 2] for i in range(len(words))), (
            f"{image}: `pip install {' '.join(words)}` does not use -c {CONSTRAINTS}"
        )
        constrained += 1
    assert constrained, f"{image}: no install uses the constraints"
    first_constrained = next(
        i for i, line in enumerate(instructions) if f"-c {CONSTRAINTS}" in line
    )
    assert copied_at < first_constrained, f"{image}: the constraints are copied after their use"


def test_constraints_pin_every_image_requirement_within_pyproject() -> None:
    pins = _constraints()
    for requirement in _pyproject_requirements(extras=("webhook",)):
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{CONSTRAINTS} does not pin {requirement.name}, which the images install"
        )
    for requirement in _pyproject_requirements():
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is not None:
            version = _pinned_version(pin)
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{CONSTRAINTS} pins {pin} but pyproject.toml asks for {requirement}"
            )


def test_constraints_carry_no_test_tools() -> None:
    assert not set(_constraints()) & TEST_ONLY, "the images install no test tools"


def test_constraints_pin_the_torch_of_pyproject_and_the_server_image() -> None:
    pins = _constraints()
    text = DOCKERFILES["server"].read_text(encoding="utf-8")
    for name, version in TORCH_PINS.items():
        assert str(pins[name].specifier) == f"=={version}"
        assert f"{name}=={version}" in PYPROJECT["project"]["dependencies"]
        assert f"ARG {name.upper()}_VERSION={version}\n" in text


# --------------------------------------------------------------------------------------------
# the build context


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression (Go filepath.Match plus `**`)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context: the last pattern that
    matches it or a folder above it decides, `!` patterns taking back."""
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        regex = _pattern(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not keep
    return ignored


def test_the_dockerignore_reading_can_say_ignored() -> None:
    assert _ignored("docs/kubernetes.md") and _ignored("tests/test_supply_chain.py")
    assert _ignored("serving/__pycache__/app.cpython-311.pyc")
    assert not _ignored("serving/app.py")


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_build_context_keeps_every_file_the_image_copies(image: str) -> None:
    sources = [
        source
        for instruction in _instructions(DOCKERFILES[image])
        if instruction.startswith("COPY ") and "--from" not in instruction
        for source in instruction.split()[1:-1]
    ]
    assert CONSTRAINTS in sources
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"{image} copies {source}, which does not exist"
        assert not _ignored(source), f".dockerignore drops {source}, which {image} copies"


# --------------------------------------------------------------------------------------------
# scripts/refresh-pins.py


def _refresh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
        check=False,
    )


def test_refresh_writes_what_the_images_install_from_this_environment(tmp_path: Path) -> None:
    """The script's constraints, from the environment the tests run in: exact pins of the images'
    packages (no test tool), torch at pyproject's pin; each of them pinned in the committed file
    too, so an image installs nothing unpinned."""
    output = tmp_path / "constraints.txt"
    done = _refresh("constraints", "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert output.read_text(encoding="utf-8").startswith("# Generated by scripts/refresh-pins.py")
    written = _constraints(output)
    for requirement in _pyproject_requirements(extras=("webhook",)):
        assert canonicalize_name(requirement.name) in written
    assert not set(written) & TEST_ONLY, f"test tools in the images: {set(written) & TEST_ONLY}"
    assert not set(written) & {"robustloop", "pip"}
    for name, version in TORCH_PINS.items():
        assert _pinned_version(written[name]) == version
    missing = sorted(set(written) - set(_constraints()))
    assert not missing, (
        f"{CONSTRAINTS} lacks {missing}: run `.venv/bin/python scripts/refresh-pins.py constraints`"
    )


def _copy_dockerfiles(root: Path) -> None:
    (root / "docker").mkdir(parents=True)
    for dockerfile in DOCKERFILES.values():
        shutil.copy(dockerfile, root / "docker" / dockerfile.name)


def test_refresh_base_pins_both_dockerfiles_to_one_digest(tmp_path: Path) -> None:
    """Only the FROM lines change: the tag stays, the new digest joins it, in both files."""
    _copy_dockerfiles(tmp_path)
    digest = "sha256:" + "0123456789abcdef" * 4
    done = _refresh("--root", str(tmp_path), "base", digest)
    assert done.returncode == 0, done.stderr
    references = set()
    for dockerfile in DOCKERFILES.values():
        before = dockerfile.read_text(encoding="utf-8").splitlines()
        after = (tmp_path / "docker" / dockerfile.name).read_text(encoding="utf-8").splitlines()
        changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
        assert len(changed) <= 1, f"{dockerfile.name}: more than the FROM line changed"
        (line,) = [line for line in after if line.startswith("FROM ")]
        match = FROM_PINNED.fullmatch(line)
        assert match and f"sha256:{match.group('digest')}" == digest, line
        old_line = next(line for line in before if line.startswith("FROM "))
        assert old_line.split("@")[0] == line.split("@")[0], "the tag must stay"
        references.add(line)
    assert len(references) == 1


def test_refresh_base_refuses_what_is_not_a_digest_and_says_how_to_get_one(
    tmp_path: Path,
) -> None:
    _copy_dockerfiles(tmp_path)
    before = {p.name: p.read_text() for p in (tmp_path / "docker").iterdir()}
    bad = _refresh("--root", str(tmp_path), "base", "sha256:1234")
    assert bad.returncode == 2
    assert "not a digest" in bad.stderr and "64" in bad.stderr
    without_docker = _refresh("--root", str(tmp_path), "base", env={"PATH": ""})
    assert without_docker.returncode == 2
    assert "docker buildx imagetools inspect python:" in without_docker.stderr
    assert {p.name: p.read_text() for p in (tmp_path / "docker").iterdir()} == before


def test_refresh_constraints_refuses_another_python_than_the_images(tmp_path: Path) -> None:
    _copy_dockerfiles(tmp_path)
    other = f"3.{sys.version_info.minor + 1}"
    for path in (tmp_path / "docker").iterdir():
        text = re.sub(r"FROM python:\d+\.\d+", f"FROM python:{other}", path.read_text())
        path.write_text(text)
    done = _refresh("--root", str(tmp_path), "constraints", "--output", str(tmp_path / "c.txt"))
    assert done.returncode == 2
    assert f"the images run Python {other}" in done.stderr
    assert not (tmp_path / "c.txt").exists()
