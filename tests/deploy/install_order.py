"""What `helm install` does with a chart's rendered objects, in order, and which objects each
one needs to exist when Kubernetes admits it.

Helm runs the ``pre-install`` hooks one at a time (by ``helm.sh/hook-weight``, then by kind
in Helm's install order, then by name) and waits for each; only then does it create the
ordinary resources (all at once, in install order); then the ``post-install`` hooks. A hook
with the ``hook-succeeded`` delete policy is removed once its phase has succeeded. An object
that the chart does not render is the user's (a Secret they made, the ``default``
ServiceAccount) and is taken to exist. A pod whose ServiceAccount, Secret or ConfigMap does
not exist yet is refused (or never starts), so a hook that needs an object Helm creates only
later hangs the installation until it times out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: Helm's kind order for installing (helm.sh/helm/v4/pkg/release/v1/util/kind_sorter.go);
#: kinds not listed come last.
INSTALL_ORDER = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
]

Ref = tuple[str, str]  # (kind, name)


@dataclass(frozen=True)
class Step:
    phase: str  # "pre-install", "install", "post-install"
    obj: dict[str, Any]

    @property
    def ref(self) -> Ref:
        return (self.obj["kind"], self.obj["metadata"]["name"])


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("annotations") or {}


def hooks_of(obj: dict[str, Any]) -> set[str]:
    value = _annotations(obj).get("helm.sh/hook", "")
    return {h.strip() for h in value.split(",") if h.strip()}


def _kind_rank(kind: str) -> int:
    return INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)


def _hook_key(obj: dict[str, Any]) -> tuple[int, int, str]:
    weight = int(_annotations(obj).get("helm.sh/hook-weight", "0"))
    return (weight, _kind_rank(obj["kind"]), obj["metadata"]["name"])


def install_steps(docs: list[dict[str, Any]]) -> list[Step]:
    """The objects of a first ``helm install`` in the order Helm creates them (test hooks
    are not part of an install)."""
    pre = sorted((d for d in docs if "pre-install" in hooks_of(d)), key=_hook_key)
    ordinary = sorted((d for d in docs if not hooks_of(d)), key=lambda d: _kind_rank(d["kind"]))
    post = sorted((d for d in docs if "post-install" in hooks_of(d)), key=_hook_key)
    return (
        [Step("pre-install", d) for d in pre]
        + [Step("install", d) for d in ordinary]
        + [Step("post-install", d) for d in post]
    )


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind, spec = obj["kind"], obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return spec.get("template", {}).get("spec")
    return None


def needs(obj: dict[str, Any]) -> Iterator[Ref]:
    """The objects a pod of ``obj`` cannot start without."""
    pod = _pod_spec(obj)
    if pod is None:
        return
    yield ("ServiceAccount", pod.get("serviceAccountName") or "default")
    for secret in pod.get("imagePullSecrets") or []:
        yield ("Secret", secret["name"])
    for volume in pod.get("volumes") or []:
        if "secret" in volume and not volume["secret"].get("optional"):
            yield ("Secret", volume["secret"]["secretName"])
        if "configMap" in volume and not volume["configMap"].get("optional"):
            yield ("ConfigMap", volume["configMap"]["name"])
        if "persistentVolumeClaim" in volume:
            yield ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
                if key in source and not source[key].get("optional"):
                    yield (kind, source[key]["name"])
    for container in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if key in source and not source[key].get("optional"):
                    yield (kind, source[key]["name"])
        for env_from in container.get("envFrom") or []:
            for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                if key in env_from and not env_from[key].get("optional"):
                    yield (kind, env_from[key]["name"])


def missing_at_install(docs: list[dict[str, Any]]) -> list[str]:
    """Every object an install step needs that the chart renders but that does not exist
    (yet, or any more) when Helm creates that step."""
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    existing: set[Ref] = set()
    problems: list[str] = []
    steps = install_steps(docs)
    for phase in ("pre-install", "install", "post-install"):
        in_phase = [s for s in steps if s.phase == phase]
        if phase == "install":  # created together: each may need any other
            existing |= {s.ref for s in in_phase}
        for step in in_phase:
            for ref in needs(step.obj):
                if ref in rendered and ref not in existing:
                    problems.append(
                        f"{phase} {step.ref[0]} {step.ref[1]} needs {ref[0]} {ref[1]}, "
                        "which does not exist at that point of the installation"
                    )
            existing.add(step.ref)
        for step in in_phase:
            policy = _annotations(step.obj).get("helm.sh/hook-delete-policy", "")
            if phase != "install" and "hook-succeeded" in policy:
                existing.discard(step.ref)
    return problems
