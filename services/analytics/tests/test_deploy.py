"""The Helm chart hands the analytics pod its admin token from a Secret, as it does for the
other admin tokens, and sets none by default (the data endpoints are then disabled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from helm_python.chart import Chart

CHART = Path(__file__).resolve().parents[3] / "helm" / "tollgate"
DEV_DB = {"database": {"url": "postgresql://tollgate:secret@postgres:5432/tollgate"}}


def analytics_env(values: dict[str, Any]) -> dict[str, Any]:
    with Chart.load(CHART) as chart:
        files = chart.render(values, name="gw", namespace="ai", is_install=True)
    for path, body in files.items():
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(body):
            if (
                doc
                and doc["kind"] == "Deployment"
                and doc["metadata"]["name"].endswith("-analytics")
            ):
                [container] = doc["spec"]["template"]["spec"]["containers"]
                return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    raise AssertionError("no analytics Deployment")


def test_the_analytics_admin_token_comes_from_a_secret() -> None:
    env = analytics_env({**DEV_DB, "analytics": {"adminTokenSecret": "analytics-admin"}})
    assert env["TOLLGATE_ANALYTICS_ADMIN_TOKEN"] == {
        "secretKeyRef": {"name": "analytics-admin", "key": "ADMIN_TOKEN"}
    }
    assert env["TOLLGATE_ANALYTICS_HOST"] == "0.0.0.0"  # why the token matters


def test_by_default_no_token_is_set() -> None:
    assert "TOLLGATE_ANALYTICS_ADMIN_TOKEN" not in analytics_env(DEV_DB)
