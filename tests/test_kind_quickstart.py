"""The kind quick start (docs/kubernetes.md, "Quick start on kind") and its values file agree
with the chart and with each other.

No cluster runs here, so the commands are not executed; what they rely on is checked instead.
The chart renders the kind scenario (helm/robustloop/ci/kind-values.yaml, which tests/test_helm.py
lints, renders and validates with every other ci/ file) with every image from the node
(pullPolicy Never) under the very names and tags the quick start builds and loads; the release
names and namespaces the quick start installs kube-prometheus-stack and argo-workflows under are
the ones the chart's defaults point at; the store is ReadWriteOnce on the default storage class
(kind's local-path); nothing asks for a GPU; and every `robustloop` command shown parses with
the real CLI parser.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustloop.cli import build_parser
from robustloop.config import RobustloopConfig
from tests.conftest import REPO_ROOT
from tests.test_helm import CHART, FULLNAME, SCENARIOS, _find_helm
from tests.test_helm import _template as render

KUBERNETES_DOC = REPO_ROOT / "docs" / "kubernetes.md"
KIND_VALUES = CHART / "ci" / "kind-values.yaml"

Obj = dict[str, Any]


def _quick_start() -> str:
    text = KUBERNETES_DOC.read_text(encoding="utf-8")
    section = text.split("## Quick start on kind\n", 1)[1].split("\n## ", 1)[0]
    return section


def _commands() -> list[list[str]]:
    """The quick start's shell commands, continuations joined, comments dropped, split at
    pipes and `&`."""
    blocks = re.findall(r"```bash\n(.*?)```", _quick_start(), flags=re.S)
    assert len(blocks) >= 3, "the quick start shows its commands in bash blocks"
    commands: list[list[str]] = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;<>")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            current: list[str] = []
            for token in lexer:
                if set(token) <= set("|&;<>"):
                    commands.append(current)
                    current = []
                else:
                    current.append(token)
            commands.append(current)
    return [c for c in commands if c]


def _command(*prefix: str) -> list[str]:
    found = [c for c in _commands() if c[: len(prefix)] == list(prefix)]
    assert len(found) == 1, f"expected one `{' '.join(prefix)} ...` in the quick start"
    return found[0]


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.fixture(scope="module")
def kind_objects() -> list[Obj]:
    """The kind scenario, rendered (helm, or a skip; a failure where CI requires helm)."""
    helm = _find_helm()
    if helm is None:
        if os.environ.get("ROBUSTLOOP_REQUIRE_SCHEMAS") == "1":
            pytest.fail("ROBUSTLOOP_REQUIRE_SCHEMAS=1 but helm is absent: run `make helm`")
        pytest.skip("helm is absent: `make helm` installs it into .venv/bin")
    return render(helm, "--values", str(KIND_VALUES))


def test_every_ci_values_file_is_a_rendered_scenario() -> None:
    """tests/test_helm.py lints, renders and validates each ci/<name>-values.yaml: no file of
    ci/ may escape it by its name."""
    files = {p.name for p in (CHART / "ci").iterdir() if p.is_file()}
    assert files == {f"{s}-values.yaml" for s in SCENARIOS}
    assert "kind" in SCENARIOS


def _images(objects: list[Obj]) -> list[tuple[str, str, str]]:
    """(where, image, pull policy) of every container the release runs."""
    found = []
    for obj in objects:
        if obj["kind"] in {"Deployment", "Job"}:
            pods = [(obj["metadata"]["name"], obj["spec"]["template"]["spec"])]
        elif obj["kind"] == "Pod":
            pods = [(obj["metadata"]["name"], obj["spec"])]
        elif obj["kind"] == "WorkflowTemplate":
            pods = [
                (t["name"], {"containers": [t.get("script") or t["container"]]})
                for t in obj["spec"]["templates"]
                if "script" in t or "container" in t
            ]
        else:
            continue
        for where, pod in pods:
            for container in pod["containers"]:
                found.append((where, container["image"], container["imagePullPolicy"]))
    return found


def test_the_release_runs_only_the_images_the_quick_start_builds_and_loads(
    kind_objects: list[Obj],
) -> None:
    built = {_flag(c, "-t") for c in _commands() if c[:2] == ["docker", "build"]}
    load = _command("kind", "load", "docker-image")
    loaded = {token for token in load[3:] if not token.startswith("-")} - {_flag(load, "--name")}
    assert built == loaded and len(built) == 2
    images = _images(kind_objects)
    assert {image for _, image, _ in images} == built
    assert {f"{FULLNAME}-smoke", "harden", f"{FULLNAME}-bootstrap"} <= {w for w, _, _ in images}
    for where, _, policy in images:
        assert policy == "Never", f"{where} would pull an image kind loaded"
    cluster = _command("kind", "create", "cluster")
    assert _flag(cluster, "--name") == _flag(load, "--name")


def test_the_stacks_are_installed_where_the_charts_defaults_point(
    kind_objects: list[Obj],
) -> None:
    """kube-prometheus-stack as release kube-prometheus-stack in monitoring, argo-workflows as
    argo-workflows in argo: the release label the PrometheusRule carries, the Prometheus the
    guard queries, the Argo Server the receiver submits to, the peers the NetworkPolicies admit."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    stack = _command("helm", "install", "kube-prometheus-stack")
    assert stack[3] == "prometheus-community/kube-prometheus-stack"
    assert _flag(stack, "--namespace") == "monitoring"
    argo = _command("helm", "install", "argo-workflows")
    assert argo[3] == "argo/argo-workflows"
    assert _flag(argo, "--namespace") == "argo"
    sets = [argo[i + 1] for i, token in enumerate(argo) if token == "--set"]
    assert "controller.workflowRestrictions.templateReferencing=Strict" in sets
    assert "server.authModes={client}" in sets
    repos = {c[3]: c[4] for c in _commands() if c[:3] == ["helm", "repo", "add"]}
    assert repos == {
        "prometheus-community": "https://prometheus-community.github.io/helm-charts",
        "argo": "https://argoproj.github.io/argo-helm",
    }
    assert defaults["prometheusRelease"] == stack[2]
    assert defaults["prometheusUrl"] == "http://prometheus-operated.monitoring.svc:9090"
    assert defaults["argo"]["serverUrl"] == "http://argo-workflows-server.argo.svc:2746"
    peers = defaults["receiver"]["networkPolicy"]
    for peer in ("alertmanager", "prometheus"):
        selector = peers[peer]["namespaceSelector"]["matchLabels"]
        assert selector == {"kubernetes.io/metadata.name": "monitoring"}
    config_map = next(o for o in kind_objects if o["metadata"]["name"] == f"{FULLNAME}-config")
    config = RobustloopConfig.model_validate(yaml.safe_load(config_map["data"]["robustloop.yaml"]))
    assert config.submitter.argo.host == defaults["argo"]["serverUrl"]
    assert config.device == "cpu"


def test_the_release_is_installed_with_the_kind_values(kind_objects: list[Obj]) -> None:
    install = _command("helm", "install", "rl")
    assert install[3] == "helm/robustloop"
    assert _flag(install, "-f") == str(KIND_VALUES.relative_to(REPO_ROOT))
    assert (REPO_ROOT / install[3]).is_dir()
    assert _flag(install, "--namespace") == "robustloop"
    test = _command("helm", "test", "rl")
    assert _flag(test, "--namespace") == "robustloop"
    # kind's default storage class: the claim names none, and asks for one node.
    claims = [o for o in kind_objects if o["kind"] == "PersistentVolumeClaim"]
    assert claims
    for claim in claims:
        assert "storageClassName" not in claim["spec"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "gpu" not in yaml.safe_dump(kind_objects).lower()


def test_every_robustloop_command_of_the_quick_start_parses() -> None:
    commands = [c for c in _commands() if Path(c[0]).name == "robustloop"]
    assert commands, "the quick start runs the traffic generator"
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(command[1:])
        if args.command == "traffic":
            assert args.mode == "pgd" and args.url == "http://127.0.0.1:8080"
    forward = _command("kubectl", "-n", "robustloop", "port-forward", f"svc/{FULLNAME}-server")
    assert forward[-1] == "8080:8080"


def test_the_traffic_config_the_quick_start_writes_is_valid() -> None:
    printf = next(c for c in _commands() if c[0] == "printf")
    text = printf[1].encode().decode("unicode_escape")
    config = RobustloopConfig.model_validate(yaml.safe_load(text))
    assert str(config.store.path) == ".robustloop/kind/store"
    assert str(config.serving.feedback_token_file) == ".robustloop/kind/feedback-token"
