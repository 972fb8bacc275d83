"""The Helm chart lints, renders valid Kubernetes objects for the settings users change, and
the plain manifests in k8s/ are its current rendering."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tollgate"
KUBE_VERSION = "1.30.0"
DEV_DB = {"database": {"url": "postgresql://tollgate:secret@postgres:5432/tollgate"}}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with Chart.load(CHART) as chart:
        files = chart.render(values, name="gw", namespace="ai", is_install=True)
    docs: list[dict[str, Any]] = []
    for path, body in files.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(body) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(workload: dict[str, Any]) -> dict[str, Any]:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


VARIANTS = {
    "defaults": DEV_DB,
    "existing-secret-otel-sasl": {
        "database": {"existingSecret": "db"},
        "otel": {"endpoint": "http://jaeger-collector:4318"},
        "kafka": {
            "securityProtocol": "SASL_SSL",
            "sasl": {"mechanism": "SCRAM-SHA-512", "username": "gw", "existingSecret": "k"},
        },
    },
    "kafka-mutual-tls": {
        **DEV_DB,
        "kafka": {
            "securityProtocol": "SSL",
            "tls": {"existingSecret": "kafka-ca", "certKey": "tls.crt", "keyKey": "tls.key"},
        },
    },
    "kafka-msk-iam": {
        **DEV_DB,
        "kafka": {
            "securityProtocol": "SASL_SSL",
            "sasl": {"mechanism": "AWS_MSK_IAM", "awsRegion": "eu-west-1"},
        },
    },
    "autoscaling-strimzi": {
        **DEV_DB,
        "kafka": {"topics": {"mode": "strimzi"}},
        "services": {
            "router": {"autoscaling": {"enabled": True}},
            "meter": {"autoscaling": {"enabled": True}},
        },
    },
    "single-replicas": {
        **DEV_DB,
        "services": {s: {"replicas": 1} for s in ("stream", "auth", "meter", "router")},
    },
}


def test_lint_finds_no_errors() -> None:
    result = helm.lint(str(CHART), DEV_DB, strict=True)
    assert result["errors"] == []
    assert all(m["severity"] <= 1 for m in result["messages"]), result["messages"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid_kubernetes(variant: str) -> None:
    docs = render(VARIANTS[variant])
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("kafka.strimzi.io"):
            assert doc["spec"]["topicName"].startswith("tollgate.")
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_each_service_runs_with_probes_and_the_shared_settings() -> None:
    docs = render({**DEV_DB, "otel": {"endpoint": "http://otel:4318"}})
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    assert sorted(workloads) == [
        f"gw-tollgate-{s}" for s in ("analytics", "auth", "meter", "router", "stream")
    ]
    for name, workload in workloads.items():
        [container] = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"tollgate/{name.removeprefix('gw-')}:0.1.0"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = env_of(workload)
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka-bootstrap:9092"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4318"
        service = name.removeprefix("gw-tollgate-")
        assert env[f"TOLLGATE_{service.upper()}_HOST"] == "0.0.0.0"
        assert ("DATABASE_URL" in env) == (service in ("auth", "meter", "router"))


def test_kafka_tls_files_come_from_a_secret_in_every_pod() -> None:
    docs = render(VARIANTS["kafka-mutual-tls"])
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    workloads.update(by_kind(docs, "Job"))
    assert len(workloads) == 6
    for workload in workloads.values():
        env = env_of(workload)
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SSL"
        assert env["KAFKA_SSL_CAFILE"] == "/etc/tollgate/kafka-tls/ca.crt"
        assert env["KAFKA_SSL_CERTFILE"] == "/etc/tollgate/kafka-tls/tls.crt"
        assert env["KAFKA_SSL_KEYFILE"] == "/etc/tollgate/kafka-tls/tls.key"
        pod = workload["spec"]["template"]["spec"]
        assert {"name": "kafka-tls", "secret": {"secretName": "kafka-ca"}} in pod["volumes"]
        [container] = pod["containers"]
        assert any(m["name"] == "kafka-tls" for m in container["volumeMounts"])


def test_aws_msk_iam_needs_a_region_and_no_password() -> None:
    docs = render(VARIANTS["kafka-msk-iam"])
    env = env_of(by_kind(docs, "Deployment")["gw-tollgate-router"])
    assert env["KAFKA_SASL_MECHANISM"] == "AWS_MSK_IAM"
    assert env["KAFKA_AWS_REGION"] == "eu-west-1"
    assert "KAFKA_SASL_PASSWORD" not in env


def test_the_edge_splits_reply_partitions_by_pod_index() -> None:
    stream = by_kind(render({**DEV_DB, "services": {"stream": {"replicas": 3}}}), "StatefulSet")[
        "gw-tollgate-stream"
    ]
    env = env_of(stream)
    assert env["TOLLGATE_STREAM_REPLY_PARTITIONS"] == "replica"
    assert env["TOLLGATE_STREAM_REPLICA_COUNT"] == "3"
    assert env["TOLLGATE_STREAM_REPLICA_INDEX"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    assert stream["spec"]["replicas"] == 3
    assert env["TOLLGATE_STREAM_AUTH_URL"] == "http://gw-tollgate-auth:8081"
    assert env["TOLLGATE_STREAM_ROUTER_URL"] == "http://gw-tollgate-router:8082"


def test_the_meter_asks_the_auth_service_and_takes_its_admin_token_from_a_secret() -> None:
    docs = render({**DEV_DB, "meter": {"adminTokenSecret": "meter-admin"}})
    env = env_of(by_kind(docs, "Deployment")["gw-tollgate-meter"])
    assert env["TOLLGATE_METER_AUTH_URL"] == "http://gw-tollgate-auth:8081"
    assert env["TOLLGATE_METER_ADMIN_TOKEN"] == {
        "secretKeyRef": {"name": "meter-admin", "key": "ADMIN_TOKEN"}
    }


def test_the_identity_provider_settings_reach_the_auth_service() -> None:
    issuer = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc"
    docs = render(
        {
            **DEV_DB,
            "identity": {
                "issuer": issuer,
                "audiences": "client-1",
                "adminTokenSecret": "auth-admin",
            },
        }
    )
    env = env_of(by_kind(docs, "Deployment")["gw-tollgate-auth"])
    assert env["TOLLGATE_AUTH_ISSUER"] == issuer
    assert env["TOLLGATE_AUTH_AUDIENCES"] == "client-1"
    assert env["TOLLGATE_AUTH_ADMIN_TOKEN"] == {
        "secretKeyRef": {"name": "auth-admin", "key": "ADMIN_TOKEN"}
    }
    assert "TOLLGATE_AUTH_DEV_IDP" not in env  # never on in a cluster by default


def test_the_model_catalog_is_mounted_for_the_router() -> None:
    catalog = yaml.safe_load((ROOT / "config" / "models.example.yaml").read_text())
    docs = render({**DEV_DB, "router": {"catalog": catalog, "providerSecretsSecret": "keys"}})
    [config_map] = by_kind(docs, "ConfigMap").values()
    assert yaml.safe_load(config_map["data"]["models.yaml"]) == catalog
    router = by_kind(docs, "Deployment")["gw-tollgate-router"]
    env = env_of(router)
    assert env["TOLLGATE_ROUTER_CATALOG_FILE"] == "/etc/tollgate/catalog/models.yaml"
    assert env["TOLLGATE_ROUTER_PROVIDER_SECRETS"]["secretKeyRef"]["name"] == "keys"
    [container] = router["spec"]["template"]["spec"]["containers"]
    assert {"name": "catalog", "mountPath": "/etc/tollgate/catalog", "readOnly": True} in (
        container["volumeMounts"]
    )
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_analytics_writes_to_s3_when_given_a_bucket() -> None:
    env = env_of(
        by_kind(render({**DEV_DB, "analytics": {"s3Bucket": "gw-data"}}), "Deployment")[
            "gw-tollgate-analytics"
        ]
    )
    assert env["TOLLGATE_ANALYTICS_S3_BUCKET"] == "gw-data"
    assert env["TOLLGATE_ANALYTICS_STATE_DIR"] == "/var/lib/tollgate/analytics-state"
    default = env_of(by_kind(render(DEV_DB), "Deployment")["gw-tollgate-analytics"])
    assert "TOLLGATE_ANALYTICS_S3_BUCKET" not in default


def test_topics_are_created_by_a_hook_job_or_as_strimzi_resources() -> None:
    [job] = by_kind(render(DEV_DB), "Job").values()
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][0] == "tollgate-topics"
    strimzi = [
        d
        for d in render({**DEV_DB, "kafka": {"topics": {"mode": "strimzi"}}})
        if d["kind"] == "KafkaTopic"
    ]
    assert {d["spec"]["topicName"] for d in strimzi} == {
        "tollgate.requests",
        "tollgate.admitted",
        "tollgate.replies",
        "tollgate.usage",
        "tollgate.logs",
        "tollgate.audit",
        "tollgate.deadletter",
    }


def test_a_database_is_required() -> None:
    with pytest.raises(Exception, match=r"database\.existingSecret"):
        render({})


def test_plain_manifests_are_the_charts_current_rendering() -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "render_k8s.py"), "--check"], check=True)
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "tollgate.yaml").read_text()) if d]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
