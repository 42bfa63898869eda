"""The chart's ``helm test`` hook (templates/tests/smoke.yaml): a Pod that runs ``robustloop
smoke`` from the receiver image, and the NetworkPolicy that admits it while it runs.

Rendered for every ci/ scenario and validated (kubernetes-validate, strict, the oldest and newest
Kubernetes tested); then what it promises: a test hook, hardened like the chart's other pods
(the receiver's security contexts, requests and a memory limit, a writable /tmp), the receiver's
token mounted as a read-only file from the receiver's own Secret key, arguments the real CLI
parses that name the release's Services and that file, and a NetworkPolicy that admits exactly
this Pod, to exactly the server and the receiver, created before it. The command itself runs
against a live server and receiver in tests/test_smoke_cli.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from robustloop.cli import build_parser
from tests.test_helm import (
    FULLNAME,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    _kube_problems,
    _one,
    _run_helm,
    _template,
    _values_file,
)

Obj = dict[str, Any]
SMOKE = f"{FULLNAME}-smoke"


def _hooks(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["metadata"].get("annotations", {}).get("helm.sh/hook")]


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[Obj]]:
    return {s: _template(helm, "--values", _values_file(s)) for s in SCENARIOS}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_test_hook_is_valid_and_hardened_like_the_receiver(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    objects = rendered[scenario]
    pod = _one(objects, "Pod", SMOKE)
    assert pod["metadata"]["namespace"] == NAMESPACE
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert _kube_problems(pod) == []
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False, "the test needs no API access"
    receiver = _one(objects, "Deployment", f"{FULLNAME}-receiver")["spec"]["template"]["spec"]
    (receiver_container,) = receiver["containers"]
    (container,) = spec["containers"]
    # The receiver image (robustloop without torch), as the receiver pulls it.
    assert container["image"] == receiver_container["image"]
    assert container["imagePullPolicy"] == receiver_container["imagePullPolicy"]
    # The same security settings as the chart's other pods.
    assert spec["securityContext"] == receiver["securityContext"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"] == receiver_container["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"], "no resource requests"
    assert container["resources"]["limits"]["memory"], "no memory limit"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts, "a read-only root needs a writable /tmp"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_test_runs_smoke_against_the_releases_services_with_the_token_file(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    objects = rendered[scenario]
    pod = _one(objects, "Pod", SMOKE)["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["robustloop"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "smoke"
    for component, url in (("server", args.server), ("receiver", args.receiver)):
        service = _one(objects, "Service", f"{FULLNAME}-{component}")
        port = service["spec"]["ports"][0]["port"]
        assert url == f"http://{FULLNAME}-{component}.{NAMESPACE}.svc:{port}", component
    assert str(args.config) == f"{container['workingDir']}/robustloop.yaml"
    # The token: a read-only file (no subPath, not the environment) from the receiver's Secret
    # key, the one the receiver itself checks.
    assert "ROBUSTLOOP_WEBHOOK_TOKEN" not in {e["name"] for e in container.get("env", [])}
    (mount,) = [
        m for m in container["volumeMounts"] if m["mountPath"] == str(args.token_file.parent)
    ]
    assert mount.get("readOnly") is True and "subPath" not in mount
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    receiver = _one(objects, "Deployment", f"{FULLNAME}-receiver")["spec"]["template"]["spec"]
    receiver_token = next(v for v in receiver["volumes"] if v["name"] == "token")
    assert volume["secret"] == receiver_token["secret"]
    (item,) = volume["secret"]["items"]
    assert item["path"] == args.token_file.name
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "others may not read the token file"
    assert args.timeout == 30


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_network_policy_admits_the_test_pod_to_the_server_and_the_receiver_only(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """The release's NetworkPolicies admit Alertmanager and Prometheus alone; the smoke Pod is
    let in by a policy of its own, a test hook created before the Pod (a lower weight)."""
    objects = rendered[scenario]
    policy = _one(objects, "NetworkPolicy", SMOKE)
    assert _kube_problems(policy) == []
    annotations = policy["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    pod = _one(objects, "Pod", SMOKE)
    pod_weight = int(pod["metadata"]["annotations"].get("helm.sh/hook-weight", "0"))
    assert int(annotations["helm.sh/hook-weight"]) < pod_weight
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "pods of the release's namespace only"
    assert peer["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    others = [
        o
        for o in objects
        if o["kind"] in {"Deployment", "Job"}
        and peer["podSelector"]["matchLabels"].items()
        <= o["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert others == [], "the policy's peer must be the smoke Pod alone"
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    selected = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] in {"Deployment", "Job"} and _selects(spec["podSelector"], o)
    }
    assert selected == {f"{FULLNAME}-server", f"{FULLNAME}-receiver"}
    for name in selected:
        containers = _one(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert "http" in {p["name"] for c in containers for p in c.get("ports", [])}


def _selects(selector: Obj, workload: Obj) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_the_policy_follows_the_releases_policies(helm: str) -> None:
    """Where the server's policy is off, the server admits everyone already: the test's policy
    then selects the receiver alone; with both off, there is none. tests.enabled=false renders
    neither hook."""
    objects = _template(helm, "--set", "server.networkPolicy.enabled=false")
    policy = _one(objects, "NetworkPolicy", SMOKE)
    (expression,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert expression["values"] == ["receiver"]
    objects = _template(
        helm,
        "--set", "server.networkPolicy.enabled=false",
        "--set", "receiver.networkPolicy.enabled=false",
    )  # fmt: skip
    assert [o for o in objects if o["kind"] == "NetworkPolicy"] == []
    assert _one(objects, "Pod", SMOKE)
    objects = _template(helm, "--set", "tests.enabled=false")
    assert _hooks([o for o in objects if o["kind"] in {"Pod", "NetworkPolicy"}]) == []
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Pod"] == []


def test_the_tests_timeout_and_an_existing_token_secret(helm: str) -> None:
    objects = _template(
        helm,
        "--set", "tests.timeout=5",
        "--set", "receiver.token.existingSecret=webhook-token",
        "--set", "receiver.token.key=bearer",
    )  # fmt: skip
    pod = _one(objects, "Pod", SMOKE)["spec"]
    args = build_parser().parse_args(pod["containers"][0]["args"])
    assert args.timeout == 5
    volume = next(v for v in pod["volumes"] if "secret" in v)
    assert volume["secret"]["secretName"] == "webhook-token"
    assert volume["secret"]["items"] == [{"key": "bearer", "path": "token"}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "tests.timeout=0"], "/tests/timeout"),
        (["--set", "tests.resources.requests.cpu=lots"], "/tests/resources"),
        (["--set", "tests.enable=false"], "additional properties 'enable' not allowed"),
    ],
)
def test_bad_test_values_are_refused(helm: str, args: list[str], message: str) -> None:
    done = _run_helm(helm, "template", RELEASE, *args)
    assert done.returncode != 0
    assert message in done.stderr
