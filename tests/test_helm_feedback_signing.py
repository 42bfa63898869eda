"""The chart's key for signed sample ids (``server.feedbackSigningKey``): a Secret of its own,
mounted read-only into the server pods alone at the path the rendered config names, so that
several server replicas (with a ReadWriteMany store) judge each other's predictions.

The helpers are tests/test_helm.py's, the helm fixture tests/conftest.py's; without helm
these tests skip, unless
``ROBUSTLOOP_REQUIRE_SCHEMAS=1`` (CI), where they fail.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from serving.signed_ids import MIN_KEY_CHARS
from tests import test_helm as th

rendered = th.rendered

Obj = th.Obj
SERVER = f"Deployment/{th.FULLNAME}-server"
DEFAULT_SECRET = f"{th.FULLNAME}-signing-key"


def _signing_key(objects: list[Obj]) -> tuple[str, str, Path]:
    """Where the server's signing key comes from and lands: (Secret name, key, file), after
    checking that the rendered config names a file the server container mounts read-only
    (no subPath) from one key of a Secret volume that others may not read."""
    key_file = th._config(objects).serving.feedback_signing_key_file
    assert key_file is not None, "the config must name serving.feedback_signing_key_file"
    deployment = th._one(objects, "Deployment", f"{th.FULLNAME}-server")
    server = th._container(deployment, "server")
    (mount,) = [m for m in server["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
    assert mount.get("readOnly") is True and "subPath" not in mount
    secret = th._secret_volumes(deployment["spec"]["template"]["spec"])[mount["name"]]
    (item,) = secret["items"]
    assert item["path"] == key_file.name
    assert secret["defaultMode"] & 0o007 == 0, "others may not read the key file"
    return secret["secretName"], item["key"], key_file


def _mounted_by(objects: list[Obj], secret_name: str) -> set[str]:
    """Every pod (Deployment, Job, the workflow's steps) with a volume of that Secret."""
    pods = list(th._pod_specs(objects))
    pods.append(("WorkflowTemplate", th._one(objects, "WorkflowTemplate")["spec"]))
    return {
        where
        for where, pod in pods
        if secret_name in {s["secretName"] for s in th._secret_volumes(pod).values()}
    }


@pytest.mark.parametrize("scenario", th.SCENARIOS)
def test_the_signing_key_reaches_the_server_pods_alone_from_a_secret_of_its_own(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """GIVEN any scenario WHEN the chart renders THEN the config names the key file, the server
    mounts it read-only from a Secret of its own (neither the feedback token's nor the
    receiver's), and no other pod mounts it. The chart creates that Secret, with 64 random
    characters that appear nowhere else, unless feedbackSigningKey.existingSecret names one."""
    objects = rendered[scenario]
    values = th._scenario_values(scenario)
    name, key, _ = _signing_key(objects)
    feedback_token, _, _ = th._feedback_token(objects, values)
    assert name not in {feedback_token, th._receiver_token(objects)["name"]}
    assert _mounted_by(objects, name) == {SERVER}
    existing = values.get("server", {}).get("feedbackSigningKey", {})
    if existing:
        assert (name, key) == (existing["existingSecret"], existing["key"])
        assert not [o for o in objects if o["kind"] == "Secret"], "nothing recreated"
        return
    assert (name, key) == (DEFAULT_SECRET, "key")
    secret = th._one(objects, "Secret", name)
    assert set(secret["data"]) == {key}
    signing_key = base64.b64decode(secret["data"][key]).decode()
    assert len(signing_key) == 64 and signing_key.isalnum()
    config_text = th._one(objects, "ConfigMap", f"{th.FULLNAME}-config")["data"]
    assert signing_key not in config_text["robustloop.yaml"]


def test_each_render_draws_its_own_key(helm: str) -> None:
    """No fixed key ships with the chart: two fresh installs sign with different keys (an
    upgrade keeps the installed one, read back with `lookup`)."""
    keys = [th._one(th._template(helm), "Secret", DEFAULT_SECRET)["data"]["key"] for _ in range(2)]
    assert keys[0] != keys[1]


def test_the_key_from_a_value_or_from_an_existing_secret(helm: str) -> None:
    """feedbackSigningKey.value fills the created Secret; existingSecret and key replace it, and
    then the chart creates no Secret for it."""
    chosen = "s" * MIN_KEY_CHARS
    objects = th._template(helm, "--set", f"server.feedbackSigningKey.value={chosen}")
    name, key, _ = _signing_key(objects)
    assert base64.b64decode(th._one(objects, "Secret", name)["data"][key]).decode() == chosen

    objects = th._template(
        helm,
        "--set",
        "server.feedbackSigningKey.existingSecret=replica-signing",
        "--set",
        "server.feedbackSigningKey.key=hmac",
    )
    name, key, key_file = _signing_key(objects)
    assert (name, key, key_file.name) == ("replica-signing", "hmac", "key")
    assert not [o for o in objects if o["kind"] == "Secret" and "signing" in o["metadata"]["name"]]
    assert _mounted_by(objects, "replica-signing") == {SERVER}


def test_several_server_replicas_render_with_a_read_write_many_store(helm: str) -> None:
    """GIVEN server.replicas=3 and a ReadWriteMany store THEN the Deployment has 3 replicas that
    all mount the one signing key, the core objects are valid, and no pod is tied to the
    server's node; with ReadWriteOnce the same replicas are refused in one line."""
    objects = th._template(
        helm, "--set", "server.replicas=3", "--set", "persistence.accessModes={ReadWriteMany}"
    )
    deployment = th._one(objects, "Deployment", f"{th.FULLNAME}-server")
    assert deployment["spec"]["replicas"] == 3
    assert _signing_key(objects)[0] == DEFAULT_SECRET
    operator_kinds = ("monitoring.coreos.com/", "argoproj.io/")
    core = [o for o in objects if not o["apiVersion"].startswith(operator_kinds)]
    problems = [p for o in core for p in th._kube_problems(o)]
    assert not problems, "\n".join(problems)
    for where, _, affinity in th._pods_with_their_affinity(objects):
        assert "podAffinity" not in affinity, f"{where} is tied to the server's node"

    done = th._run_helm(helm, "template", th.RELEASE, "--set", "server.replicas=3")
    assert done.returncode != 0
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert "server.replicas=3" in line and "ReadWriteMany" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "server.feedbackSigningKey.value=too-short"], "/server/feedbackSigningKey"),
        (["--set", "server.feedbackSigningKey.key=a/b"], "/server/feedbackSigningKey/key"),
        (
            ["--set", "server.feedbackSigningKey.existingSecret=Not_A_Name"],
            "/server/feedbackSigningKey",
        ),
        (["--set", "server.feedbackSigningKey.secret=x"], "'secret' not allowed"),
    ],
)
def test_bad_signing_key_values_are_rejected_with_the_offending_key(
    helm: str, args: list[str], message: str
) -> None:
    done = th._run_helm(helm, "template", th.RELEASE, *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert "kind:" not in done.stdout, "nothing is rendered from bad values"
