"""The Helm chart lints, renders valid Kubernetes objects for the settings users change,
installs in the order Helm creates objects, refuses values it does not know, and the plain
manifests in k8s/ are its current rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart

from tests.deploy.install_order import install_steps, missing_at_install

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tollgate"
KUBE_VERSIONS = ("1.31.0", "1.34.0")
DEV_DB = {"database": {"url": "postgresql://tollgate:secret@postgres:5432/tollgate"}}
VALUES_FILES = {
    p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))
}
SERVICES = ("stream", "auth", "meter", "router", "analytics")

#: Custom resources the chart may render (kubernetes-validate knows only built-in kinds),
#: with the fields their CRDs require of ``spec``.
CUSTOM_RESOURCES = {
    ("kafka.strimzi.io/v1", "KafkaTopic"): {"topicName", "partitions", "replicas"},
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {"selector", "endpoints"},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {"groups"},
    ("keda.sh/v1alpha1", "ScaledObject"): {"scaleTargetRef", "triggers"},
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): {"parentRefs", "rules"},
}


def values_file(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(VALUES_FILES[name].read_text())
    return loaded


@cache
def _render(values_json: str) -> str:
    with Chart.load(CHART) as chart:
        files = chart.render(json.loads(values_json), name="gw", namespace="ai", is_install=True)
    return json.dumps(files)


def rendered_files(values: dict[str, Any]) -> dict[str, str]:
    files: dict[str, str] = json.loads(_render(json.dumps(values, sort_keys=True)))
    return files


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, body in rendered_files(values).items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(body) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container_of(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    [container] = (spec["template"]["spec"] if "template" in spec else spec)["containers"]
    return container


def env_of(workload: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container_of(workload)["env"]}


def validate(doc: dict[str, Any], kube_version: str) -> None:
    required = CUSTOM_RESOURCES.get((doc["apiVersion"], doc["kind"]))
    if required is not None:
        assert required <= set(doc["spec"]), (doc["kind"], sorted(doc["spec"]))
        return
    kubernetes_validate.validate(doc, kube_version, strict=True)


VARIANTS: dict[str, dict[str, Any]] = {
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
    **{f"file-{name}": values_file(name) for name in VALUES_FILES},
}


def test_there_are_minimal_development_and_production_values_files() -> None:
    assert set(VALUES_FILES) == {"minimal", "development", "production"}


@pytest.mark.parametrize("name", sorted(VALUES_FILES))
def test_lint_strict_finds_nothing(name: str) -> None:
    for kube_version in KUBE_VERSIONS:
        result = helm.lint(
            str(CHART), values_file(name), strict=True, kube_version=f"v{kube_version}"
        )
        assert result["errors"] == []
        assert all(m["severity"] <= 1 for m in result["messages"]), result["messages"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid_kubernetes(variant: str) -> None:
    docs = render(VARIANTS[variant])
    assert docs
    for kube_version in KUBE_VERSIONS:
        for doc in docs:
            validate(doc, kube_version)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_install_never_needs_an_object_before_it_exists(variant: str) -> None:
    assert missing_at_install(render(VARIANTS[variant])) == []


def test_the_install_order_check_finds_a_hook_that_uses_an_ordinary_service_account() -> None:
    docs = render(DEV_DB)
    [job] = by_kind(docs, "Job").values()
    job["spec"]["template"]["spec"]["serviceAccountName"] = "gw-tollgate-stream"
    steps = [(s.phase, s.obj["kind"]) for s in install_steps(docs)]
    assert steps[:2] == [("pre-install", "ServiceAccount"), ("pre-install", "Job")]
    assert missing_at_install(docs) == [
        "pre-install Job gw-tollgate-topics needs ServiceAccount gw-tollgate-stream, which "
        "does not exist at that point of the installation"
    ]


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"servics": {}}, "servics"),
        ({"kafka": {"topics": {"mode": "bogus"}}}, "/kafka/topics/mode"),
        ({"services": {"router": {"replica": 3}}}, "replica"),
        ({"services": {"stream": {"image": {"digest": "latest"}}}}, "/services/stream/image"),
        ({"ingress": {"enabled": True, "host": "x"}}, "host"),
        ({"networkPolicy": {"egress": {"kafka": {"port": 9092}}}}, "port"),
        ({"metrics": {"port": "9090"}}, "/metrics/port"),
    ],
)
def test_the_schema_refuses_values_it_does_not_know(values: dict[str, Any], complaint: str) -> None:
    result = helm.lint(str(CHART), {**DEV_DB, **values}, strict=True)
    assert any(complaint in e for e in result["errors"]), result["errors"]
    with pytest.raises(helm.HelmError, match="schema"):
        rendered_files({**DEV_DB, **values})


def _undeclared(values: Any, schema: dict[str, Any], defs: dict[str, Any], at: str) -> list[str]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].removeprefix("#/$defs/")]
    if not isinstance(values, dict) or "properties" not in schema:
        return []
    missing = []
    for key, value in values.items():
        if key not in schema["properties"]:
            missing.append(f"{at}.{key}")
        else:
            missing += _undeclared(value, schema["properties"][key], defs, f"{at}.{key}")
    return missing


def test_the_schema_declares_every_value_and_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert _undeclared(defaults, schema, schema["$defs"], "") == []

    def closed(node: Any, at: str) -> list[str]:
        if not isinstance(node, dict):
            return []
        open_objects = []
        if "properties" in node and node.get("additionalProperties") is not False:
            open_objects.append(at)
        for key, child in node.items():
            if isinstance(child, dict):
                open_objects += closed(child, f"{at}/{key}")
        return open_objects

    assert closed(schema, "") == []


def test_each_service_runs_with_probes_its_own_account_and_the_shared_settings() -> None:
    docs = render({**DEV_DB, "otel": {"endpoint": "http://otel:4318"}})
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    assert sorted(workloads) == [f"gw-tollgate-{s}" for s in sorted(SERVICES)]
    accounts = by_kind(docs, "ServiceAccount")
    for name, workload in workloads.items():
        service = name.removeprefix("gw-tollgate-")
        container = container_of(workload)
        assert container["image"] == f"tollgate/tollgate-{service}:0.1.0"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        pod = workload["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name and name in accounts
        assert pod["automountServiceAccountToken"] is False
        env = env_of(workload)
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka-bootstrap:9092"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4318"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert env[f"TOLLGATE_{service.upper()}_HOST"] == "0.0.0.0"
        assert ("DATABASE_URL" in env) == (service in ("auth", "meter", "router"))
        assert "KAFKA_TOPIC_PREFIX" not in env


def test_service_accounts_images_and_scheduling_are_set_per_service() -> None:
    role = {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/bedrock"}
    digest = "sha256:" + "ab" * 32
    toleration = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    docs = render(
        {
            **DEV_DB,
            "services": {
                "router": {
                    "serviceAccount": {"annotations": role},
                    "image": {"digest": digest},
                    "tolerations": [toleration],
                    "podLabels": {"team": "ai"},
                    "podAnnotations": {"a": "b"},
                    "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
                    "extraVolumes": [{"name": "x", "emptyDir": {}}],
                    "extraVolumeMounts": [{"name": "x", "mountPath": "/x"}],
                },
                "stream": {"serviceAccount": {"create": False, "name": "edge"}},
            },
        }
    )
    accounts = by_kind(docs, "ServiceAccount")
    assert accounts["gw-tollgate-router"]["metadata"]["annotations"] == role
    assert "annotations" not in accounts["gw-tollgate-auth"]["metadata"]
    assert "gw-tollgate-stream" not in accounts
    router = by_kind(docs, "Deployment")["gw-tollgate-router"]
    template = router["spec"]["template"]
    assert container_of(router)["image"] == f"tollgate/tollgate-router@{digest}"
    assert template["spec"]["tolerations"] == [toleration]
    assert template["metadata"]["labels"]["team"] == "ai"
    assert template["metadata"]["annotations"]["a"] == "b"
    assert env_of(router)["AWS_REGION"] == "eu-west-1"
    assert {"name": "x", "mountPath": "/x"} in container_of(router)["volumeMounts"]
    assert (
        "tolerations"
        not in by_kind(docs, "Deployment")["gw-tollgate-auth"]["spec"]["template"]["spec"]
    )
    stream = by_kind(docs, "Deployment")["gw-tollgate-stream"]
    assert stream["spec"]["template"]["spec"]["serviceAccountName"] == "edge"


def test_metrics_are_on_a_port_the_edges_service_and_ingress_do_not_expose() -> None:
    docs = render({**DEV_DB, "ingress": {"enabled": True}, "metrics": {"port": 9100}})
    services = by_kind(docs, "Service")
    assert [p["name"] for p in services["gw-tollgate-stream"]["spec"]["ports"]] == ["http"]
    assert {p["name"]: p["port"] for p in services["gw-tollgate-stream-pods"]["spec"]["ports"]} == {
        "http": 8080,
        "metrics": 9100,
    }
    [ingress] = by_kind(docs, "Ingress").values()
    [path] = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"]["service"] == {"name": "gw-tollgate-stream", "port": {"name": "http"}}
    for name in ("stream", "auth", "meter", "router"):
        workload = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}[
            f"gw-tollgate-{name}"
        ]
        env = env_of(workload)
        assert env["TOLLGATE_METRICS_PORT"] == "9100" and env["TOLLGATE_METRICS_HOST"] == "0.0.0.0"
        ports = {p["name"]: p["containerPort"] for p in container_of(workload)["ports"]}
        assert ports["metrics"] == 9100
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "9100"


def test_the_edge_is_reachable_through_an_ingress_or_a_gateway_with_long_timeouts() -> None:
    docs = render(
        {
            **DEV_DB,
            "ingress": {"enabled": True, "className": "nginx"},
            "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}], "hostnames": ["a.b"]},
            "services": {
                "stream": {"service": {"type": "LoadBalancer", "annotations": {"x": "y"}}}
            },
        }
    )
    [ingress] = by_kind(docs, "Ingress").values()
    timeout = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]
    assert int(timeout) >= 3600
    [route] = by_kind(docs, "HTTPRoute").values()
    assert route["spec"]["parentRefs"] == [{"name": "gw"}]
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "gw-tollgate-stream", "port": 8080}
    ]
    assert route["spec"]["rules"][0]["timeouts"] == {"request": "0s"}
    edge = by_kind(docs, "Service")["gw-tollgate-stream"]
    assert edge["spec"]["type"] == "LoadBalancer" and edge["metadata"]["annotations"] == {"x": "y"}
    keepalive = float(
        env_of(by_kind(docs, "Deployment")["gw-tollgate-stream"])[
            "TOLLGATE_STREAM_KEEPALIVE_INTERVAL_S"
        ]
    )
    assert keepalive < 60  # below common load balancer idle timeouts


def test_network_policies_admit_each_service_only_from_its_callers() -> None:
    docs = render(values_file("production"))
    policies = by_kind(docs, "NetworkPolicy")
    assert sorted(policies) == [f"gw-tollgate-{s}" for s in sorted(SERVICES)]

    def callers(service: str) -> set[str]:
        [http, _metrics] = policies[f"gw-tollgate-{service}"]["spec"]["ingress"]
        return {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for peer in http.get("from", [])
            if "podSelector" in peer
        }

    assert callers("auth") == {"stream", "meter", "test"}
    assert callers("router") == {"stream", "meter", "test"}  # the meter reads its catalog
    assert callers("meter") == {"stream", "test"}  # the edge asks for the caller's usage
    edge_from = policies["gw-tollgate-stream"]["spec"]["ingress"][0]["from"]
    assert edge_from[:-1] == values_file("production")["networkPolicy"]["edgeFrom"]
    assert callers("stream") == {"test"}  # besides the ingress: `helm test`
    router_egress = policies["gw-tollgate-router"]["spec"]["egress"]
    egress_ports = {p["port"] for rule in router_egress for p in rule["ports"]}
    assert {53, 9093, 5432, 443, 4317, 4318} <= egress_ports
    stream_ports = {
        p["port"] for r in policies["gw-tollgate-stream"]["spec"]["egress"] for p in r["ports"]
    }
    assert 5432 not in stream_ports and {8081, 8082, 8083} <= stream_ports
    meter_ports = {
        p["port"] for r in policies["gw-tollgate-meter"]["spec"]["egress"] for p in r["ports"]
    }
    assert {8081, 8082} <= meter_ports


def test_router_and_meter_scale_on_consumer_lag_with_keda() -> None:
    docs = render(values_file("production"))
    scaled = by_kind(docs, "ScaledObject")
    assert sorted(scaled) == ["gw-tollgate-meter", "gw-tollgate-router"]
    [trigger] = scaled["gw-tollgate-router"]["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == "gw.tollgate.admitted"
    assert trigger["metadata"]["consumerGroup"] == "gw.tollgate-router"
    router = by_kind(docs, "Deployment")["gw-tollgate-router"]
    assert "replicas" not in router["spec"]
    assert env_of(router)["TOLLGATE_ROUTER_CONSUMER_GROUP"] == "gw.tollgate-router"
    with pytest.raises(helm.HelmError, match="keda or autoscaling"):
        render(
            {
                **DEV_DB,
                "services": {
                    "meter": {"keda": {"enabled": True}, "autoscaling": {"enabled": True}}
                },
            }
        )


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


def test_the_edge_is_a_deployment_whose_pods_are_interchangeable() -> None:
    """Every edge pod reads every reply, so the edge needs no pod identity: a Deployment,
    scaled by hand or by a CPU autoscaler."""
    docs = render({**DEV_DB, "services": {"stream": {"replicas": 3}}})
    assert "gw-tollgate-stream" not in by_kind(docs, "StatefulSet")
    stream = by_kind(docs, "Deployment")["gw-tollgate-stream"]
    env = env_of(stream)
    assert not [k for k in env if "REPLY_PARTITIONS" in k or "REPLICA_" in k]
    assert stream["spec"]["replicas"] == 3
    assert env["TOLLGATE_STREAM_AUTH_URL"] == "http://gw-tollgate-auth:8081"
    assert env["TOLLGATE_STREAM_ROUTER_URL"] == "http://gw-tollgate-router:8082"
    scaled = render({**DEV_DB, "services": {"stream": {"autoscaling": {"enabled": True}}}})
    hpa = by_kind(scaled, "HorizontalPodAutoscaler")["gw-tollgate-stream"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gw-tollgate-stream",
    }
    assert "replicas" not in by_kind(scaled, "Deployment")["gw-tollgate-stream"]["spec"]


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
    assert {"name": "catalog", "mountPath": "/etc/tollgate/catalog", "readOnly": True} in (
        container_of(router)["volumeMounts"]
    )
    for doc in docs:
        validate(doc, KUBE_VERSIONS[-1])


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


def test_topics_are_created_by_a_hook_job_with_its_own_hook_account() -> None:
    docs = render(DEV_DB)
    [job] = by_kind(docs, "Job").values()
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"][0] == "tollgate-topics"
    account = by_kind(docs, "ServiceAccount")[pod["serviceAccountName"]]
    assert account["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(account["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )


def test_strimzi_topics_use_v1_a_namespace_and_an_optional_release_prefix() -> None:
    names = {
        "tollgate.requests",
        "tollgate.admitted",
        "tollgate.replies",
        "tollgate.usage",
        "tollgate.logs",
        "tollgate.audit",
        "tollgate.deadletter",
    }
    plain = by_kind(render({**DEV_DB, "kafka": {"topics": {"mode": "strimzi"}}}), "KafkaTopic")
    assert {d["spec"]["topicName"] for d in plain.values()} == names
    assert {d["apiVersion"] for d in plain.values()} == {"kafka.strimzi.io/v1"}
    assert {d["metadata"]["namespace"] for d in plain.values()} == {"ai"}
    docs = render(
        {
            **DEV_DB,
            "kafka": {
                "topics": {
                    "mode": "strimzi",
                    "strimziNamespace": "kafka",
                    "prefixWithRelease": True,
                }
            },
        }
    )
    topics = by_kind(docs, "KafkaTopic")
    assert {d["spec"]["topicName"] for d in topics.values()} == {f"gw.{n}" for n in names}
    assert {d["metadata"]["namespace"] for d in topics.values()} == {"kafka"}
    assert "gw-tollgate-requests" in topics
    assert not by_kind(docs, "Job")
    for name, workload in {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}.items():
        assert env_of(workload)["KAFKA_TOPIC_PREFIX"] == "gw.", name
    analytics = env_of(by_kind(docs, "Deployment")["gw-tollgate-analytics"])
    assert analytics["TOLLGATE_ANALYTICS_LOGS_TOPIC"] == "gw.tollgate.logs"
    assert analytics["TOLLGATE_ANALYTICS_APP_ID"] == "gw.tollgate-analytics"


def test_helm_test_checks_every_service_and_one_round_trip() -> None:
    docs = render({**DEV_DB, "tests": {"apiKeySecret": "smoke"}})
    [pod] = [d for d in docs if d["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = env_of(pod)
    assert env["READY_URLS"].split() == [
        f"http://gw-tollgate-{s}:{port}/readyz"
        for s, port in zip(SERVICES, (8080, 8081, 8083, 8082, 8084), strict=True)
    ]
    assert env["API_KEY"] == {"secretKeyRef": {"name": "smoke", "key": "API_KEY"}}
    assert "/v1/chat/completions" in container_of(pod)["args"][0]
    compile(container_of(pod)["args"][0], "helm-test", "exec")


def test_notes_tell_how_to_reach_the_edge_get_a_token_and_send_a_message() -> None:
    notes = rendered_files({**DEV_DB, "identity": {"adminTokenSecret": "auth-admin"}})[
        "tollgate/templates/NOTES.txt"
    ]
    assert "port-forward svc/gw-tollgate-stream 8080" in notes
    assert "/v1/admin/api-keys" in notes and "auth-admin" in notes
    assert "/v1/chat/completions" in notes
    ingress = rendered_files({**DEV_DB, "ingress": {"enabled": True}})[
        "tollgate/templates/NOTES.txt"
    ]
    assert "EDGE=http://tollgate.example.com" in ingress


def test_a_database_is_required() -> None:
    with pytest.raises(Exception, match=r"database\.existingSecret"):
        render({})


def test_plain_manifests_are_the_charts_current_rendering() -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "render_k8s.py"), "--check"], check=True)
    docs = [d for d in yaml.safe_load_all((ROOT / "k8s" / "tollgate.yaml").read_text()) if d]
    assert not [d for d in docs if d["kind"] == "Pod"]  # `helm test` pods are not deployed
    for kube_version in KUBE_VERSIONS:
        for doc in docs:
            validate(doc, kube_version)


def test_a_group_policy_is_mounted_for_the_auth_service() -> None:
    policy = (ROOT / "services" / "auth" / "policy.dev.toml").read_text()
    docs = render({**DEV_DB, "identity": {"policy": policy}})
    config_map = by_kind(docs, "ConfigMap")["gw-tollgate-policy"]
    assert config_map["data"]["policy.toml"].strip() == policy.strip()
    auth = by_kind(docs, "Deployment")["gw-tollgate-auth"]
    assert env_of(auth)["TOLLGATE_AUTH_POLICY_FILE"] == "/etc/tollgate/policy/policy.toml"
    [container] = auth["spec"]["template"]["spec"]["containers"]
    assert {"name": "policy", "mountPath": "/etc/tollgate/policy", "readOnly": True} in (
        container["volumeMounts"]
    )
    for kube_version in KUBE_VERSIONS:
        for doc in docs:
            validate(doc, kube_version)
