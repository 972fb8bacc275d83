"""The Grafana dashboard and the alert rules ask only for metrics the services export, by
labels those metrics have; the chart ships both."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import yaml

from tests.deploy.test_helm_chart import CHART, DEV_DB, by_kind, render

DASHBOARD = CHART / "dashboards" / "tollgate.json"
SERVICE_MODULES = {
    "stream": "tollgate_stream.main",
    "auth": "tollgate_auth.main",
    "meter": "tollgate_meter.main",
    "router": "tollgate_router.main",
    "analytics": "tollgate_analytics.main",
}
#: labels Prometheus adds to every scraped series
TARGET_LABELS = {"namespace", "job", "instance", "pod", "service", "container", "endpoint"}

# Imports a service's composition root (everything its process registers) and prints the
# series names and label names its registry exports.
_SCRAPE = """
import importlib, json, sys
from prometheus_client import REGISTRY
importlib.import_module(sys.argv[1])
suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""], "summary": ["", "_sum", "_count"], "info": ["_info"]}
found = {}
for collector in list(REGISTRY._collector_to_names):
    labels = list(getattr(collector, "_labelnames", ()))
    describe = getattr(collector, "describe", None)
    for family in (describe() if describe else []) or collector.collect():
        extra = ["le"] if family.type == "histogram" else []
        for suffix in suffixes.get(family.type, [""]):
            found[family.name + suffix] = labels + extra
print(json.dumps(found))
"""


@cache
def exported() -> dict[str, dict[str, set[str]]]:
    """Per service: every series name its process exports, with its label names."""
    procs = {
        service: subprocess.Popen(
            [sys.executable, "-c", _SCRAPE, module], stdout=subprocess.PIPE, text=True
        )
        for service, module in SERVICE_MODULES.items()
    }
    result = {}
    for service, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, service
        result[service] = {name: set(labels) for name, labels in json.loads(out).items()}
    return result


def all_exported() -> dict[str, set[str]]:
    merged: dict[str, set[str]] = {}
    for series in exported().values():
        for name, labels in series.items():
            merged.setdefault(name, set()).update(labels)
    return merged


_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")


def metrics_in(expr: str) -> set[str]:
    return set(_SELECTOR.findall(expr)) | {m for m, _ in _LABEL_VALUES.findall(expr)}


def labels_in(expr: str) -> set[str]:
    labels = {label for _, label in _LABEL_VALUES.findall(expr)}
    for group in _GROUPING.findall(expr):
        labels |= {part.strip() for part in group.split(",") if part.strip()}
    for matchers in _MATCHERS.findall(expr):
        labels |= {m.group(1) for m in re.finditer(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)}
    return labels


def dashboard_queries() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]["query"]


def alert_queries() -> Iterator[tuple[str, str]]:
    docs = render({**DEV_DB, "metrics": {"prometheusRule": {"enabled": True}}})
    [rule] = by_kind(docs, "PrometheusRule").values()
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            yield alert["alert"], alert["expr"]


def check(queries: list[tuple[str, str]]) -> list[str]:
    known = all_exported()
    problems = []
    for title, expr in queries:
        names = metrics_in(expr)
        if not names:
            problems.append(f"{title}: names no metric: {expr}")
        unknown = names - set(known)
        if unknown:
            problems.append(f"{title}: no service exports {sorted(unknown)}")
            continue
        available = TARGET_LABELS.union(*(known[n] for n in names))
        if labels_in(expr) - available:
            problems.append(f"{title}: unknown labels {sorted(labels_in(expr) - available)}")
    return problems


def test_every_dashboard_query_names_metrics_and_labels_the_services_export() -> None:
    queries = list(dashboard_queries())
    assert len(queries) > 20
    assert check(queries) == []


def test_the_dashboard_covers_what_operators_watch() -> None:
    used = set().union(*(metrics_in(expr) for _, expr in dashboard_queries()))
    for metric in (
        "tollgate_router_tokens_total",
        "tollgate_router_requests_total",
        "tollgate_router_time_to_first_token_seconds_bucket",
        "tollgate_router_request_seconds_bucket",
        "tollgate_meter_decisions_total",
        "tollgate_meter_decision_seconds_bucket",
        "tollgate_kafka_consumer_lag",
        "tollgate_router_cache_hits_total",
        "tollgate_stream_connections",
        "gen_ai_client_token_usage_sum",
        "gen_ai_server_time_to_first_token_seconds_bucket",
        "gen_ai_client_operation_duration_seconds_bucket",
    ):
        assert metric in used, metric


def test_every_alert_names_metrics_and_labels_the_services_export() -> None:
    alerts = list(alert_queries())
    assert {name for name, _ in alerts} == {
        "TollgateProviderErrorRate",
        "TollgateConsumerLagGrowing",
        "TollgateMeterFailClosed",
        "TollgateDeadLetters",
        "TollgateTimeToFirstTokenHigh",
    }
    assert check(alerts) == []


def test_each_metric_comes_from_the_service_it_is_about() -> None:
    series = exported()
    assert "tollgate_stream_connections" in series["stream"]
    assert "gen_ai_client_token_usage_bucket" in series["router"]
    assert "tollgate_meter_decision_seconds_bucket" in series["meter"]
    for service in ("stream", "meter", "router"):
        assert "tollgate_kafka_consumer_lag" in series[service], service


def test_the_check_finds_a_metric_nobody_exports() -> None:
    assert check([("typo", 'sum(rate(tollgate_router_request_total{namespace="x"}[5m]))')])
    assert check([("bad label", "sum by (modle) (rate(tollgate_router_requests_total{}[5m]))")])


@pytest.mark.parametrize("namespace", ["", "monitoring"])
def test_the_chart_ships_the_dashboard_for_grafanas_sidecar(namespace: str) -> None:
    values: dict[str, Any] = {**DEV_DB, "metrics": {"dashboard": {"enabled": True}}}
    if namespace:
        values["metrics"]["dashboard"]["namespace"] = namespace
    [config_map] = [
        d for d in by_kind(render(values), "ConfigMap").values() if "tollgate.json" in d["data"]
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == (namespace or "ai")
    assert json.loads(config_map["data"]["tollgate.json"]) == json.loads(DASHBOARD.read_text())
    assert yaml.safe_dump(config_map)  # a plain object, valid YAML
