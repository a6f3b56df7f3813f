"""The Kubernetes manifests (deploy/k8s), checked offline: no cluster runs here.

* Every built-in resource is valid for **Kubernetes 1.34** against Kubernetes' own OpenAPI
  schemas (kubernetes-validate, strict: an unknown field fails), and the validator is shown to
  bite on a misspelled field.
* The custom resources (the RabbitMQ Cluster Operator's ``RabbitmqCluster``, KEDA's
  ``ScaledObject`` and ``TriggerAuthentication``) are checked against schemas written here from
  the operators' documented fields -- their CRDs are not available offline, so this is Warren's
  reading of their API, not theirs.
* What Warren needs of them: probes on the health endpoints, measured requests and limits, no
  root, each service as its own user, majority writes, the autoscalers on real queues.
* ``kubectl kustomize`` renders the whole, where kubectl is installed.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared import topology
from tests.support.deployment import MONGO_URL_OPTIONS

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.34"
CUSTOM_KINDS = {"RabbitmqCluster", "ScaledObject", "TriggerAuthentication"}


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = []
    for resource in kustomization["resources"]:
        found += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    return found


DOCS = documents()
BUILT_IN = [d for d in DOCS if d["kind"] not in CUSTOM_KINDS]


def named(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in DOCS if d["kind"] == kind}


def containers(kind: str = "Deployment") -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, container)
        for name, d in named(kind).items()
        for container in d["spec"]["template"]["spec"]["containers"]
    ]


APP_DEPLOYMENTS = ["order", "inventory", "payment", "notification", "celery-worker", "audit"]


@pytest.mark.parametrize("doc", BUILT_IN, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_built_in_resource_is_valid_for_the_pinned_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_refuses_a_misspelled_field() -> None:
    broken = copy.deepcopy(named("Deployment")["order"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # sic
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


_METADATA = {"type": "object", "required": ["name"]}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_QUANTITY = {"type": ["string", "integer"]}
_RESOURCES = _object(
    {
        "requests": _object({"cpu": _QUANTITY, "memory": _QUANTITY}),
        "limits": _object({"cpu": _QUANTITY, "memory": _QUANTITY}),
    }
)
# The fields Warren uses, as the operators document them (rabbitmq.com/v1beta1, keda.sh/v1alpha1).
CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    "RabbitmqCluster": _object(
        {
            "apiVersion": {"const": "rabbitmq.com/v1beta1"},
            "kind": {"const": "RabbitmqCluster"},
            "metadata": _METADATA,
            "spec": _object(
                {
                    "replicas": {"type": "integer", "minimum": 1},
                    "image": {"type": "string"},
                    "resources": _RESOURCES,
                    "persistence": _object(
                        {"storage": _QUANTITY, "storageClassName": {"type": "string"}}
                    ),
                    "rabbitmq": _object(
                        {
                            "additionalPlugins": {"type": "array", "items": {"type": "string"}},
                            "additionalConfig": {"type": "string"},
                            "advancedConfig": {"type": "string"},
                        }
                    ),
                    "override": _object({"statefulSet": {"type": "object"}}),
                }
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    "ScaledObject": _object(
        {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "ScaledObject"},
            "metadata": _METADATA,
            "spec": _object(
                {
                    "scaleTargetRef": _object(
                        {"name": {"type": "string"}, "kind": {"type": "string"}}, ("name",)
                    ),
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer"},
                    "cooldownPeriod": {"type": "integer"},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": _object(
                            {
                                "type": {"type": "string"},
                                # Trigger metadata is a map of strings: value: 100 unquoted is refused.
                                "metadata": _STRINGS,
                                "authenticationRef": _object(
                                    {"name": {"type": "string"}}, ("name",)
                                ),
                            },
                            ("type", "metadata"),
                        ),
                    },
                },
                ("scaleTargetRef", "triggers"),
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    "TriggerAuthentication": _object(
        {
            "apiVersion": {"const": "keda.sh/v1alpha1"},
            "kind": {"const": "TriggerAuthentication"},
            "metadata": _METADATA,
            "spec": _object(
                {
                    "secretTargetRef": {
                        "type": "array",
                        "items": _object(
                            {
                                "parameter": {"type": "string"},
                                "name": {"type": "string"},
                                "key": {"type": "string"},
                            },
                            ("parameter", "name", "key"),
                        ),
                    }
                }
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
}


@pytest.mark.parametrize(
    "doc",
    [d for d in DOCS if d["kind"] in CUSTOM_KINDS],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_every_custom_resource_uses_only_the_operators_documented_fields(
    doc: dict[str, Any],
) -> None:
    jsonschema.validate(doc, CUSTOM_SCHEMAS[doc["kind"]])


def test_the_broker_is_three_nodes_with_the_plugins_warren_declares_with() -> None:
    [cluster] = named("RabbitmqCluster").values()
    assert cluster["spec"]["replicas"] == 3  # a quorum of three survives one node lost
    plugins = cluster["spec"]["rabbitmq"]["additionalPlugins"]
    assert "rabbitmq_consistent_hash_exchange" in plugins  # notification's partitions


def test_every_app_container_has_both_probes_on_the_health_endpoints() -> None:
    checked = set()
    for name, container in containers():
        if name not in APP_DEPLOYMENTS:
            continue
        checked.add(name)
        ready, live = container["readinessProbe"], container["livenessProbe"]
        if "httpGet" in ready:
            assert ready["httpGet"]["path"] == "/readyz", name
            assert live["httpGet"]["path"] == "/healthz", name
        else:  # the Celery worker answers a ping instead
            assert "--ping" in ready["exec"]["command"], name
    assert checked == set(APP_DEPLOYMENTS)


def test_every_container_has_requests_and_limits_and_runs_hardened() -> None:
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, container in containers(kind):
            resources = container["resources"]
            assert set(resources) == {"requests", "limits"}, name
            assert set(resources["requests"]) == {"cpu", "memory"}, name
            assert set(resources["limits"]) == {"cpu", "memory"}, name
    for name, container in containers():
        pod = named("Deployment")[name]["spec"]["template"]["spec"]
        context = container.get("securityContext", {})
        assert context.get("runAsNonRoot") or pod["securityContext"].get("runAsNonRoot"), name
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
        assert context["capabilities"]["drop"] == ["ALL"], name


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def test_each_service_is_its_own_broker_and_database_user_and_writes_to_a_majority() -> None:
    for name, container in containers():
        if name not in APP_DEPLOYMENTS:
            continue
        env = _env(container)
        user = "notification" if name == "celery-worker" else name
        broker, database = urlsplit(env["RABBIT_URL"]), urlsplit(env["MONGO_URL"])
        assert (broker.username, broker.password) == (user, None), name
        assert (database.username, database.password) == (user, None), name
        options = {k: v[0] for k, v in parse_qs(database.query).items()}
        assert options == MONGO_URL_OPTIONS, name
        assert database.netloc.count(",") == 2, name  # the three members


def test_each_service_gets_its_own_passwords_from_files_that_exist() -> None:
    secrets = {p.name for p in (REPO / "secrets").iterdir()}
    for name, d in named("Deployment").items():
        if name not in APP_DEPLOYMENTS:
            continue
        user = "notification" if name == "celery-worker" else name
        [volume] = [v for v in d["spec"]["template"]["spec"]["volumes"] if "secret" in v]
        items = {i["key"]: i["path"] for i in volume["secret"]["items"]}
        assert items[f"broker_password_{user}"] == "rabbit_password", name
        assert items[f"mongo_password_{user}"] == "mongo_password", name
        assert set(items) <= secrets, name
        others = {k for k in items if k.startswith(("broker_password_", "mongo_password_"))}
        assert others == {f"broker_password_{user}", f"mongo_password_{user}"}, name


def test_the_autoscalers_watch_real_queues_of_the_deployments_they_scale() -> None:
    queues = {q.name for q in topology.ALL_QUEUES_WITH_DLQ}
    deployments = named("Deployment")
    scaled = set()
    for scaler in named("ScaledObject").values():
        target = scaler["spec"]["scaleTargetRef"]["name"]
        assert target in deployments
        scaled.add(target)
        assert scaler["spec"]["minReplicaCount"] >= 2  # a twin absorbs a lost pod
        for trigger in scaler["spec"]["triggers"]:
            assert trigger["type"] == "rabbitmq"
            assert trigger["metadata"]["queueName"] in queues
    assert scaled == {"payment", "inventory", "notification", "celery-worker"}
    [hpa] = named("HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "order"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_renders_every_resource_into_the_warren_namespace() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == len(DOCS) + 1  # and the generated ConfigMap warren-config-<hash>
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "warren", doc["metadata"]["name"]
        if doc["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    config = next(d for d in docs if d["metadata"]["name"].startswith("warren-config-"))
    [order] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "order"]
    env_from = order["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert "registry.example.com/warren:0.1.0" in rendered  # the image, set in one place
