"""The Grafana dashboard and the Prometheus rules only use metrics (and labels) the worker exports.

Every PromQL expression is parsed (promql-parser, the Rust parser Prometheus-compatible tools use),
so a syntax error fails here instead of in Grafana or the Prometheus Operator.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

promql_parser = pytest.importorskip("promql_parser", reason="promql-parser is in the dev extras")

from prometheus_client import CollectorRegistry  # noqa: E402
from prometheus_client.metrics import MetricWrapperBase  # noqa: E402

from stream import metrics  # noqa: E402
from stream.tools import online_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "observability" / "grafana-dashboard.json"
ALERTS = ROOT / "deploy" / "observability" / "alerts.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
# Labels Prometheus adds at scrape time (target labels) and the histogram bucket label.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "service", "endpoint", "le"}
# Grafana variables replaced by sample values before parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "${namespace}": "agegate", "$namespace": "agegate"}


@dataclass(frozen=True)
class Exported:
    family: str
    labels: frozenset[str]


def all_metric_objects() -> list[MetricWrapperBase]:
    """The worker's metrics (stream/metrics.py) and the online-metrics exporter's (agegate eval --online)."""
    found = [obj for obj in vars(metrics).values() if isinstance(obj, MetricWrapperBase)]
    exporter = online_metrics.Exporter(CollectorRegistry())
    found += [obj for obj in vars(exporter).values() if isinstance(obj, MetricWrapperBase)]
    return found


def exported_series() -> dict[str, Exported]:
    """Series names as Prometheus stores them (counters get _total, histograms _bucket/_sum/_count)."""
    out: dict[str, Exported] = {}
    for obj in all_metric_objects():
        name, kind, labels = obj._name, obj._type, frozenset(obj._labelnames)
        if kind == "counter":
            names = [f"{name}_total"]
        elif kind == "histogram":
            names = [f"{name}_bucket", f"{name}_sum", f"{name}_count"]
        elif kind == "info":  # one series, `<name>_info`, whose labels are the info's keys
            names = [f"{name}_info"]
            labels = frozenset(obj._value)  # type: ignore[attr-defined]
        else:
            names = [name]
        for series in names:
            out[series] = Exported(name, labels)
    return out


EXPORTED = exported_series()


@dataclass
class Analysis:
    metrics: set[str]
    problems: list[str]


def analyse(expr: str) -> Analysis:
    """Parse expr; collect metric names and aggregation labels that no referenced metric carries."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    tree = promql_parser.parse(expr)
    found: set[str] = set()
    problems: list[str] = []

    def metrics_under(node: Any) -> set[str]:
        names: set[str] = set()
        if type(node).__name__ == "VectorSelector" and node.name:
            names.add(node.name)
        for attr in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
            child = getattr(node, attr, None)
            for c in child if isinstance(child, list) else [child]:
                if c is not None and not isinstance(c, str | int | float):
                    names |= metrics_under(c)
        if type(node).__name__ == "AggregateExpr" and node.modifier is not None:
            allowed = set(TARGET_LABELS)
            for n in names:
                if n in EXPORTED:
                    allowed |= EXPORTED[n].labels
            for label in node.modifier.labels:
                if label not in allowed:
                    problems.append(f"aggregation label {label!r} is not a label of {sorted(names)}")
        return names

    found = metrics_under(tree)
    problems += [f"unknown metric {m!r}" for m in sorted(found) if m not in EXPORTED]
    return Analysis(found, problems)


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"]
            match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
            assert match, f"template variable {var['name']}: unexpected query {query!r}"
            out.append((f"variable {var['name']}", match.group(1)))
    return out


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["spec"]["groups"] for rule in group["rules"]]


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub generates for headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# --- the checker itself -------------------------------------------------------------------------


def test_analysis_catches_unknown_metrics_labels_and_syntax_errors() -> None:
    assert analyse("sum by (topic) (rate(agegate_events_consumed_total[5m]))").problems == []
    assert analyse("rate(agegate_events_consumed[5m])").problems == ["unknown metric 'agegate_events_consumed'"]
    bad_label = analyse("sum by (reason) (rate(agegate_decisions_total[5m]))").problems
    assert bad_label
    assert "reason" in bad_label[0]
    with pytest.raises(ValueError, match="parenthesis"):
        analyse("sum(rate(agegate_decisions_total[5m])")


def test_exported_series_follow_prometheus_naming() -> None:
    assert "agegate_decisions_total" in EXPORTED
    assert "agegate_inference_seconds_bucket" in EXPORTED
    assert "agegate_ready" in EXPORTED
    assert EXPORTED["agegate_decisions_total"].labels == {"action", "surface"}
    assert EXPORTED["agegate_online_error_rate"].labels == {"jurisdiction", "surface", "kind"}


# --- dashboard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("title", "expr"), dashboard_exprs())
def test_dashboard_queries_use_exported_metrics(title: str, expr: str) -> None:
    result = analyse(expr)
    assert result.metrics, f"{title}: query references no metric"
    assert result.problems == [], f"{title}: {result.problems}"


def test_dashboard_shows_every_exported_metric() -> None:
    used = {m for _, e in dashboard_exprs() for m in analyse(e).metrics}
    families_used = {EXPORTED[m].family for m in used}
    all_families = {e.family for e in EXPORTED.values()}
    assert all_families - families_used == set(), "metrics without a dashboard panel"


def test_dashboard_covers_what_operators_need() -> None:
    titles = " | ".join(p["title"].lower() for p in dashboard()["panels"])
    for topic in (
        "events consumed",
        "lag",
        "micro-batch",
        "inference latency",
        "event to decision",
        "decisions by action",
        "dead letters by reason",
        "online error",
        "drift",
    ):
        assert topic in titles, f"no panel about {topic!r}"


def test_dashboard_structure() -> None:
    data = dashboard()
    assert data["uid"] == "agegate-worker"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in data["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables
    for panel in data["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            # Every query is scoped to the chosen namespace, so environments never mix.
            assert 'namespace="$namespace"' in target["expr"], f"{panel['title']}: {target['expr']}"


# --- alerts -------------------------------------------------------------------------------------


def test_alerts_file_is_a_prometheus_rule() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["name"]
    assert set(doc["spec"]) == {"groups"}
    for group in doc["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        assert group["name"]
        assert group["rules"]


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r.get("alert", "?"))
def test_alert_rule(rule: dict[str, Any]) -> None:
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
    assert re.fullmatch(r"Agegate[A-Z][A-Za-z]+", rule["alert"])
    assert re.fullmatch(r"\d+[smhd]", rule["for"])
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert {"summary", "description", "runbook_url"} <= set(rule["annotations"])
    result = analyse(rule["expr"])
    assert result.metrics
    assert result.problems == []


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r.get("alert", "?"))
def test_alert_runbook_links_to_an_operations_section(rule: dict[str, Any]) -> None:
    url = rule["annotations"]["runbook_url"]
    page, _, anchor = url.partition("#")
    assert page.startswith("https://"), url
    assert page.endswith("docs/operations.md"), url
    assert anchor == rule["alert"].lower()
    assert anchor in github_anchors(OPERATIONS.read_text()), f"docs/operations.md has no section {anchor}"


def test_alerts_cover_the_required_conditions() -> None:
    rules = {r["alert"]: r["expr"] for r in alert_rules()}
    assert len(rules) == len(alert_rules()), "alert names must be unique"
    assert "deriv(agegate_consumer_lag" in rules["AgegateConsumerLagGrowing"]
    assert "agegate_dead_letters_total" in rules["AgegateDeadLetterShareHigh"]
    assert "agegate_decisions_total" in rules["AgegateNoDecisions"]
    assert "agegate_predicted_age_mean" in rules["AgegatePredictionDrift"]
    assert "agegate_estimate_drift_alert" in rules["AgegateEstimateDrift"]
    assert "agegate_ready" in rules["AgegateReadinessFailing"]


def test_anchor_helper_matches_github() -> None:
    assert github_anchors("## Roll out a model\n### AgegateNoDecisions") == {"roll-out-a-model", "agegatenodecisions"}


def test_operations_doc_links_resolve() -> None:
    text = OPERATIONS.read_text()
    anchors = github_anchors(text)
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, "operations.md cross-references its sections"
    assert [a for a in links if a not in anchors] == []
    for path in re.findall(r"\]\(([\w./-]+\.md)\)", text):
        assert (OPERATIONS.parent / path).exists(), path
