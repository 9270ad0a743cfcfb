"""The API server fixture works: objects go in and come back, and the kubeconfig serves both
``requests`` and the official client the manager uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client, config

from testing.kube import ApiError, Kube


def test_a_config_map_round_trips(kube: Kube) -> None:
    kube.apply(
        """
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: greeting}
        data: {hello: world}
        """
    )

    stored = kube.get("v1", "ConfigMap", "greeting", kube.namespace)

    assert stored["data"] == {"hello": "world"}
    assert stored["metadata"]["namespace"] == kube.namespace


def test_each_test_gets_a_namespace_of_its_own(kube: Kube) -> None:
    namespace = kube.get("v1", "Namespace", kube.namespace)

    assert namespace["status"]["phase"] == "Active"
    assert kube.namespace.startswith("t-test-each-test-gets")


def test_a_dry_run_validates_but_stores_nothing(kube: Kube) -> None:
    good = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dry"}, "data": {}}
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_A_Name"}}

    verdicts = kube.dry_run([good, bad])

    assert [v.accepted for v in verdicts] == [True, False]
    assert "Not_A_Name" in verdicts[1].message
    with pytest.raises(ApiError) as refused:
        kube.get("v1", "ConfigMap", "dry", kube.namespace)
    assert refused.value.status == 404


def test_the_kubeconfig_serves_the_official_client(kubeconfig: Path, kube: Kube) -> None:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        names = [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items]
    finally:
        api.close()

    assert kube.namespace in names
