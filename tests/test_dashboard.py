"""The Grafana dashboard the chart ships (helm/robustloop/files/grafana-dashboard.json).

Generated like the rules (``robustloop rules dashboard``, ``make generate``) and held to them: the
committed file is what the renderer writes for the chart's alerts section; it is the JSON model
Grafana loads (the fields it needs, a ``datasource`` variable of type prometheus that every query
goes through, panels on the 24-column grid without overlap); every query, once Grafana's
variables are substituted, parses as PromQL for the real promtool; and every series a query reads
is one the model server or the receiver really registers (read from their metric classes with a
fresh registry), a recording rule of the release's rules, or ``ALERTS``. Checks that could pass
vacuously are shown to fail on a planted error. The ConfigMap that carries it renders and
validates (kubernetes-validate, strict) with the label the Grafana sidecar of
kube-prometheus-stack selects by default.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from alert_rules.dashboard import SCHEMA_VERSION, render_dashboard
from robustloop.cli import main
from robustloop.config import AlertsConfig, RobustloopConfig
from tests.conftest import REPO_ROOT
from tests.test_helm import (
    CHART,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    _kube_problems,
    _run_helm,
)

DASHBOARD = CHART / "files" / "grafana-dashboard.json"
# Every rule of a release, as rendered for the cluster's scrape interval: the chart's own
# PrometheusRule takes the fixed ones, robustloop's calibrated one the rest (recording rules too).
CHART_RULES = REPO_ROOT / "alert_rules" / "cluster" / "robustloop.rules.yaml"
CHART_ALERTS = CHART / "files" / "robustloop.alerts.yaml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
CLUSTER_SCRAPE = "30s"  # the Makefile's CLUSTER_SCRAPE, which the chart's rules were rendered for

# What Grafana puts in place of its own variables before a query is sent: any legal value will
# do for parsing (a duration for the interval ones, a label value for ours).
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
}
PANEL_TYPES = {"row", "timeseries", "stat", "state-timeline", "table", "bargauge", "gauge"}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan",
}  # fmt: skip

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> Obj:
    """The committed dashboard, parsed."""
    data: Obj = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


# -- what it reads: queries, variables, metric names -----------------------------------------------


def _panels(dashboard: Obj) -> list[Obj]:
    """Every panel, those inside collapsed rows included."""
    out: list[Obj] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: Obj) -> dict[str, str]:
    """Where -> PromQL, for every query of the dashboard: panel targets, annotation queries and
    the series selectors of the query variables (``label_values(<selector>, <label>)``)."""
    found = {}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} query {target['refId']}"] = target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found[f"annotation {annotation['name']!r}"] = annotation["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            assert match, f"variable {variable['name']}: not label_values(<series>, <label>)"
            assert variable["query"]["query"] == variable["definition"]
            found[f"variable {variable['name']!r}"] = match.group(1)
    return found


def substituted(expr: str, dashboard: Obj) -> str:
    """``expr`` as Grafana sends it: built-in and dashboard variables replaced by values."""
    ours = {v["name"] for v in dashboard["templating"]["list"]}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        assert name in ours, f"${name} is neither Grafana's nor a variable of the dashboard"
        return "value-of-" + name

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads.

    Strings, label matchers, range and subquery brackets and the label lists of ``by``,
    ``without``, ``on``, ``ignoring``, ``group_left`` and ``group_right`` are removed first;
    of the identifiers left, those followed by ``(`` are functions or aggregations (promtool
    has checked that they exist), keywords are dropped, and the rest are series names.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            continue
        if word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """The series names a registry exposes, from each metric family's type (a labelled
    metric without children yet has no samples to read them from)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
        "info": ("_info",),
    }
    return {
        family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]
    }


@pytest.fixture(scope="module")
def known_series() -> set[str]:
    """Every series a dashboard query may read: what the model server and the receiver
    register, the chart's recording rules, and Prometheus' ALERTS."""
    from serving.metrics import ServingMetrics
    from webhook.metrics import WebhookMetrics

    server, receiver = CollectorRegistry(), CollectorRegistry()
    ServingMetrics(server)
    WebhookMetrics(receiver)
    rules = yaml.safe_load(CHART_RULES.read_text(encoding="utf-8"))
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    assert records, "the chart's rules have no recording rules"
    return exposed_names(server) | exposed_names(receiver) | records | {"ALERTS"}


def unknown_series(dashboard: Obj, known: set[str]) -> dict[str, set[str]]:
    """Where -> the series a query reads that nothing provides."""
    return {
        where: names - known
        for where, expr in queries(dashboard).items()
        if (names := metric_names(expr)) - known
    }


# -- generated, golden ----------------------------------------------------------------------------


def _dashboard_cli(out: Path, *extra: str) -> int:
    return main(
        [
            "rules",
            "dashboard",
            "--defaults",
            "--scrape-interval",
            CLUSTER_SCRAPE,
            "--out",
            str(out),
            *extra,
        ]
    )


def test_the_committed_dashboard_is_what_the_renderer_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _dashboard_cli(DASHBOARD, "--check") == 0, "stale: run `make generate`"
    # The check can fail: a changed copy is reported stale, and a render rewrites it.
    copy_ = tmp_path / "grafana-dashboard.json"
    copy_.write_text(DASHBOARD.read_text(encoding="utf-8").replace("Canary", "Kanary"))
    assert _dashboard_cli(copy_, "--check") == 1
    assert "stale:" in capsys.readouterr().out
    assert _dashboard_cli(copy_) == 0
    assert copy_.read_bytes() == DASHBOARD.read_bytes()


def test_the_dashboard_is_rendered_for_the_charts_rules(dashboard: Obj) -> None:
    """Rendered from the chart's alerts section (files/robustloop.alerts.yaml, the one its
    PrometheusRule came from), so its signal panels name the chart's recording rules."""
    section = yaml.safe_load(CHART_ALERTS.read_text(encoding="utf-8"))
    cfg = RobustloopConfig(alerts=AlertsConfig.model_validate(section))
    assert render_dashboard(cfg) == dashboard
    accuracy = next(p for p in _panels(dashboard) if p["title"] == "Canary accuracy")
    window = cfg.alerts.canary_accuracy.window
    assert f"model_version:robustloop_feedback:accuracy{window}" in accuracy["targets"][0]["expr"]


def test_the_make_target_regenerates_the_dashboard() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    command = (
        "$(BIN)/robustloop rules dashboard --defaults --scrape-interval $(CLUSTER_SCRAPE) "
        "--out $(DASHBOARD)"
    )
    assert f"DASHBOARD := {DASHBOARD.relative_to(REPO_ROOT)}" in makefile
    assert f"CLUSTER_SCRAPE := {CLUSTER_SCRAPE}" in makefile
    generate = makefile.split("\ngenerate:", 1)[1].split("\n\n", 1)[0]
    assert command in generate, "`make generate` must regenerate the dashboard"
    assert "\ndashboard: setup" in makefile and command in makefile.split("\ndashboard:", 1)[1]


# -- what Grafana needs ---------------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_model(dashboard: Obj) -> None:
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert dashboard.get("id") is None, "a provisioned dashboard carries no database id"
    assert set(dashboard["time"]) == {"from", "to"}
    assert isinstance(dashboard["annotations"]["list"], list)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "model"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert variables["namespace"]["includeAll"] and variables["namespace"]["allValue"] == ".*"


def test_every_panel_has_what_grafana_needs_and_queries_the_datasource_variable(
    dashboard: Obj,
) -> None:
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    shown = [p for p in panels if p["type"] != "row"]
    assert len(shown) >= 10
    for panel in panels:
        where = f"panel {panel.get('title')!r}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["title"], where
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}, where
        assert all(isinstance(v, int) and v >= 0 for v in grid.values()), where
        assert grid["w"] >= 1 and grid["h"] >= 1 and grid["x"] + grid["w"] <= 24, where
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], where
            assert target["expr"].strip(), where
        assert "defaults" in panel["fieldConfig"] and "overrides" in panel["fieldConfig"]
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_panels_do_not_overlap(dashboard: Obj) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_the_dashboard_shows_the_loop(dashboard: Obj) -> None:
    """The signals (from the rules' recording rules), the alerts, the served version and its
    changes, the receiver's incidents and submissions."""
    text = json.dumps(queries(dashboard))
    for needed in (
        "model_version:robustloop_feedback:accuracy",
        "model_version:robustloop_prediction_entropy:mean",
        "model_version:robustloop_squeeze_score:mean",
        "ALERTS{",
        "robustloop_model_info",
        "robustloop_model_reload_failures_total",
        "robustloop_webhook_incidents",
        "robustloop_webhook_submissions_total",
        "robustloop_webhook_decisions_total",
        "robustloop_webhook_runs_finished_total",
    ):
        assert needed in text, f"no query reads {needed}"
    alerts = next(e for w, e in queries(dashboard).items() if "ALERTS" in e)
    for name in (
        "AdversarialAttackDetected",
        "AdversarialInputSuspected",
        "RobustloopReceiverMissing",
    ):
        assert name in alerts


# -- PromQL: parses, reads only series that exist ------------------------------------------------


def _promtool_check(exprs: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` of a rules file with each expression as a recording rule."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query:{i}", "expr": expr} for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = folder / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    return subprocess.run(
        [PROMTOOL, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_query_parses_as_promql(dashboard: Obj, tmp_path: Path) -> None:
    exprs = [substituted(e, dashboard) for e in queries(dashboard).values()]
    assert not [e for e in exprs if "$" in e], "a variable was left unsubstituted"
    done = _promtool_check(exprs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


def test_promtool_refuses_a_query_that_does_not_parse(dashboard: Obj, tmp_path: Path) -> None:
    exprs = [substituted(e, dashboard) for e in queries(dashboard).values()]
    exprs[0] = exprs[0].removesuffix(")")  # an unbalanced parenthesis
    done = _promtool_check(exprs, tmp_path)
    assert done.returncode != 0
    assert "parse error" in done.stdout + done.stderr


def test_every_series_a_query_reads_exists(dashboard: Obj, known_series: set[str]) -> None:
    assert unknown_series(dashboard, known_series) == {}
    used = set().union(*(metric_names(e) for e in queries(dashboard).values()))
    assert {"ALERTS", "robustloop_model_info", "robustloop_webhook_incidents"} <= used


def test_an_unknown_series_is_reported(dashboard: Obj, known_series: set[str]) -> None:
    """The existence check can fail: a misspelt series, in a panel and in a variable."""
    broken = copy.deepcopy(dashboard)
    panel = next(p for p in _panels(broken) if p["title"] == "Incidents by state")
    panel["targets"][0]["expr"] = panel["targets"][0]["expr"].replace(
        "robustloop_webhook_incidents", "robustloop_webhook_incident"
    )
    variable = next(v for v in broken["templating"]["list"] if v["name"] == "model")
    for key in ("definition",):
        variable[key] = variable[key].replace("robustloop_model_info", "robustloop_model_infos")
    variable["query"]["query"] = variable["definition"]
    assert unknown_series(broken, known_series) == {
        "panel 'Incidents by state' query A": {"robustloop_webhook_incident"},
        "variable 'model'": {"robustloop_model_infos"},
    }


def test_the_series_names_of_the_rules_own_expressions_are_found() -> None:
    """The name extraction, on the chart's recording rules: each reads series the server
    exports or records of its own group; functions, keywords, label names are left out."""
    from serving.metrics import ServingMetrics

    registry = CollectorRegistry()
    ServingMetrics(registry)
    rules = yaml.safe_load(CHART_RULES.read_text(encoding="utf-8"))
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for rule in (r for g in rules["groups"] for r in g["rules"] if "record" in r):
        names = metric_names(rule["expr"])
        assert names, rule["record"]
        assert names <= exposed_names(registry) | records, (rule["record"], names)
    assert metric_names(
        'sum by (le) (rate(a_bucket{x="y(z)"}[5m] offset 1m)) / on (k) group_left (j) b'
    ) == {"a_bucket", "b"}
    assert metric_names("time() - max(c) > 1e3 and d unless 2") == {"c", "d"}


# -- the ConfigMap ---------------------------------------------------------------------------------


def _render(helm: str, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return _run_helm(helm, "template", RELEASE, "--namespace", NAMESPACE, *args, chart=chart)


def _config_maps(helm: str, *args: str) -> Iterator[Obj]:
    done = _render(helm, *args)
    assert done.returncode == 0, done.stderr
    for doc in yaml.safe_load_all(done.stdout):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboard"):
            yield doc


def test_the_config_map_carries_the_dashboard_with_the_sidecars_default_label(
    helm: str, dashboard: Obj
) -> None:
    (config_map,) = _config_maps(helm)
    assert config_map["metadata"]["name"] == f"{FULLNAME}-grafana-dashboard"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in config_map["metadata"]
    assert json.loads(config_map["data"]["robustloop.json"]) == dashboard
    assert _kube_problems(config_map) == []


def test_label_value_folder_and_namespace_come_from_values(helm: str) -> None:
    (config_map,) = _config_maps(
        helm,
        "--set", "grafanaDashboard.label=dashboards.example.com/load",
        "--set", "grafanaDashboard.labelValue=yes",
        "--set", "grafanaDashboard.folder=/tmp/dashboards/robustloop",
        "--set", "grafanaDashboard.namespace=monitoring",
        "--set", "grafanaDashboard.annotations.owner=ml-team",
    )  # fmt: skip
    metadata = config_map["metadata"]
    assert metadata["labels"]["dashboards.example.com/load"] == "yes"
    assert "grafana_dashboard" not in metadata["labels"]
    assert metadata["namespace"] == "monitoring"
    assert metadata["annotations"] == {
        "k8s-sidecar-target-directory": "/tmp/dashboards/robustloop",
        "owner": "ml-team",
    }
    assert _kube_problems(config_map) == []
    (renamed,) = _config_maps(
        helm,
        "--set", "grafanaDashboard.folder=robustloop",
        "--set", "grafanaDashboard.folderAnnotation=grafana_folder",
    )  # fmt: skip
    assert renamed["metadata"]["annotations"] == {"grafana_folder": "robustloop"}


def test_the_dashboard_can_be_switched_off(helm: str) -> None:
    assert list(_config_maps(helm, "--set", "grafanaDashboard.enabled=false")) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "grafanaDashboard.labelValue=1"], "/grafanaDashboard/labelValue"),
        (["--set", "grafanaDashboard.label=not a label"], "/grafanaDashboard/label"),
        (["--set", "grafanaDashboard.namespace=Not_A_Namespace"], "/grafanaDashboard/namespace"),
        (["--set", "grafanaDashboard.folderr=x"], "additional properties 'folderr' not allowed"),
    ],
)
def test_bad_dashboard_values_are_refused(helm: str, args: list[str], message: str) -> None:
    done = _render(helm, *args)
    assert done.returncode != 0
    assert message in done.stderr


def test_a_chart_without_the_dashboard_says_what_to_run(helm: str, tmp_path: Path) -> None:
    chart = tmp_path / "robustloop"
    shutil.copytree(CHART, chart)
    (chart / "files" / "grafana-dashboard.json").unlink()
    done = _render(helm, chart=chart)
    assert done.returncode != 0
    assert "make generate" in done.stderr
    assert _render(helm, "--set", "grafanaDashboard.enabled=false", chart=chart).returncode == 0


def test_the_renderer_needs_no_torch() -> None:
    """`robustloop rules dashboard` is pure config and YAML, like the rules."""
    code = (
        "import sys\nfrom alert_rules.dashboard import dashboard_json\n"
        "from robustloop.config import RobustloopConfig\ndashboard_json(RobustloopConfig())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'serving')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
