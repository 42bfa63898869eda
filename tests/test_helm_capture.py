"""The chart's capture of labelled traffic (``config.capture``, the escalation's captured recipe):
the captured set lives beside the store on its claim, the server mounts that claim writable only
when it captures, and settings that cannot work are refused at render time, in one line.

The ``capture`` ci/ scenario also goes through every check of tests/test_helm.py (lint, schemas,
hardened pods, placement). The helpers are tests/test_helm.py's, the helm fixture
tests/conftest.py's; without helm these tests skip, unless ``ROBUSTLOOP_REQUIRE_SCHEMAS=1`` (CI),
where they fail.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests import test_helm as th

rendered = th.rendered

Obj = th.Obj
MOUNT = "/var/lib/robustloop"
ESCALATING = {"escalate_after": "10m"}


def _server(objects: list[Obj]) -> Obj:
    return th._one(objects, "Deployment", f"{th.FULLNAME}-server")


def _store_mount(pod: Obj, container: Obj, claim: str) -> tuple[Obj, Obj]:
    """The container's mount of ``claim`` and the pod's volume of it."""
    names = {
        v["name"]: v
        for v in pod["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    (mount,) = [m for m in container["volumeMounts"] if m["name"] in names]
    return mount, names[mount["name"]]


def _within(path: Path, folder: str) -> bool:
    return PurePosixPath(folder) in PurePosixPath(path).parents


def test_without_capture_the_server_mounts_the_store_read_only(
    rendered: dict[str, list[Obj]],
) -> None:
    objects = rendered["default"]
    deployment = _server(objects)
    pod = deployment["spec"]["template"]["spec"]
    mount, volume = _store_mount(pod, th._container(deployment, "server"), th._store_claim(objects))
    assert mount["readOnly"] is True and volume["persistentVolumeClaim"]["readOnly"] is True
    assert "strategy" not in deployment["spec"], "a read-only server rolls over as usual"
    assert th._config(objects).capture.enabled is False


def test_a_capturing_server_writes_the_captured_set_where_the_workflow_reads_it(
    rendered: dict[str, list[Obj]],
) -> None:
    """GIVEN config.capture.enabled THEN capture.path is on the store's claim, below the mount
    of the server (writable) and of every workflow step that mounts the claim; the user's own
    capture settings stay."""
    objects = rendered["capture"]
    cfg = th._config(objects)
    assert cfg.capture.enabled is True
    assert cfg.capture.max_examples == 5000 and cfg.capture.retention_seconds == 259200
    assert cfg.capture.path == Path(f"{MOUNT}/captured")
    assert not _within(cfg.capture.path, str(cfg.store.path)), "beside the store, not in it"

    claim = th._store_claim(objects)
    deployment = _server(objects)
    pod = deployment["spec"]["template"]["spec"]
    mount, volume = _store_mount(pod, th._container(deployment, "server"), claim)
    assert mount["readOnly"] is False and volume["persistentVolumeClaim"]["readOnly"] is False
    assert _within(cfg.capture.path, mount["mountPath"])

    spec = th._one(objects, "WorkflowTemplate")["spec"]
    store_volumes = {
        v["name"]
        for v in spec["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    reading = []
    for template in spec["templates"]:
        step = template.get("script") or template.get("container")
        for m in (step or {}).get("volumeMounts", []):
            if m["name"] in store_volumes:
                assert _within(cfg.capture.path, m["mountPath"]), template["name"]
                reading.append(template["name"])
    assert {"harden", "evaluate", "gate"} <= set(reading)


def test_a_capturing_server_is_replaced_after_the_old_one_stops(
    rendered: dict[str, list[Obj]],
) -> None:
    """The captured set's lock belongs to one server: a rolling update would start the new pod
    while the old holds it (and the new pod exits), so capture makes the Deployment Recreate."""
    assert _server(rendered["capture"])["spec"]["strategy"] == {"type": "Recreate"}


def test_the_chart_owns_the_capture_path(helm: str) -> None:
    objects = th._template(
        helm,
        "--set",
        "config.capture.enabled=true",
        "--set",
        "config.capture.path=/elsewhere",
    )
    assert th._config(objects).capture.path == Path(f"{MOUNT}/captured")


def test_capture_with_several_server_replicas_is_refused_in_one_line(helm: str) -> None:
    done = th._run_helm(
        helm,
        "template",
        th.RELEASE,
        "--set",
        "config.capture.enabled=true",
        "--set",
        "server.replicas=2",
        "--set",
        "persistence.accessModes={ReadWriteMany}",
    )
    assert done.returncode != 0
    (line,) = [ln for ln in done.stderr.splitlines() if "capture" in ln]
    assert "server.replicas=2" in line and "server.replicas=1" in line


def _chart_with_escalation(tmp_path: Path) -> Path:
    """A copy of the chart whose generated alerts section escalates (as `make generate` writes
    it from a robustloop.yaml with alerts.canary_accuracy.escalate_after)."""
    chart = tmp_path / "robustloop"
    shutil.copytree(th.CHART, chart)
    alerts_file = chart / "files" / "robustloop.alerts.yaml"
    alerts = yaml.safe_load(alerts_file.read_text(encoding="utf-8"))
    alerts["canary_accuracy"] |= ESCALATING
    alerts_file.write_text(yaml.safe_dump(alerts, sort_keys=False), encoding="utf-8")
    return chart


def test_escalation_without_capture_is_refused_in_one_line(helm: str, tmp_path: Path) -> None:
    done = th._run_helm(helm, "template", th.RELEASE, chart=_chart_with_escalation(tmp_path))
    assert done.returncode != 0
    (line,) = [ln for ln in done.stderr.splitlines() if "escalate_after" in ln]
    assert "config.capture.enabled=true" in line


def test_escalation_with_capture_renders_a_config_that_escalates(helm: str, tmp_path: Path) -> None:
    objects = th._template(
        helm, "--set", "config.capture.enabled=true", chart=_chart_with_escalation(tmp_path)
    )
    cfg = th._config(objects)
    assert cfg.alerts.canary_accuracy.escalate_after == ESCALATING["escalate_after"]
    assert cfg.capture.enabled is True


@pytest.mark.parametrize("scenario", ["default", "capture"])
def test_the_servers_other_mounts_stay_read_only(
    rendered: dict[str, list[Obj]], scenario: str
) -> None:
    """The server's other mounts (config, tokens, key) stay read-only whatever capture says."""
    deployment = _server(rendered[scenario])
    pod = deployment["spec"]["template"]["spec"]
    writable = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v} | {"tmp"}
    for mount in th._container(deployment, "server")["volumeMounts"]:
        if mount["name"] not in writable:
            assert mount.get("readOnly") is True, mount["name"]


def _notes(helm: str, *args: str) -> str:
    done = th._run_helm(
        helm, "install", th.RELEASE, "--dry-run=client", "--namespace", th.NAMESPACE, *args
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


def test_the_install_notes_say_where_captured_inputs_are_kept(helm: str) -> None:
    assert "captures labelled traffic" not in _notes(helm)
    notes = _notes(helm, "--set", "config.capture.enabled=true")
    assert f"{MOUNT}/captured" in notes and "kept up to 604800 s" in notes
    assert f"helm test {th.RELEASE}" in notes
