"""The Subscription CRD (deploy/base) and the model (eventing/subscriptions/model.py) agree.

Both are kept: the CRD is what ``kubectl apply`` checks and defaults, the model is what the
manager validates in either source. These tests fail when one changes without the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventing.delivery import retries
from eventing.settings import Settings
from eventing.subscriptions import model
from eventing.subscriptions import status as subscription_status
from testing.kube import ControlPlane, Kube

CRD_PATH = Path(__file__).resolve().parents[2] / "deploy" / "base" / "crd-subscriptions.yaml"
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


SETTINGS = Settings.from_environ({})


def parse(document: dict[str, Any]) -> model.Subscription:
    return model.from_manifest(
        document,
        prefix=SETTINGS.events.type_prefix,
        defaults=retries.default_policy(SETTINGS.delivery),
        default_max_in_flight=1,
    )


def served_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text())
    (version,) = crd["spec"]["versions"]
    assert (crd["spec"]["group"], version["name"]) == tuple(model.API_VERSION.split("/"))
    assert crd["spec"]["names"]["kind"] == model.KIND
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]
    return schema


def test_the_crd_declares_exactly_the_spec_fields_the_model_reads() -> None:
    spec = served_schema()["spec"]["properties"]

    assert set(spec) == model.SPEC_FIELDS
    assert set(spec["delivery"]["properties"]) == model.DELIVERY_FIELDS


def test_the_crd_declares_the_delivery_secrets_the_model_reads() -> None:
    """Every field is declared, secretFile too (refused by the Kubernetes source): the API
    server prunes what a schema does not declare, so an undeclared one would be dropped and the
    subscription delivered unsigned without a word."""
    delivery = served_schema()["spec"]["properties"]["delivery"]["properties"]
    for name, fields in (
        ("signing", model.SIGNING_FIELDS),
        ("auth", model.AUTH_FIELDS),
        ("tls", model.TLS_FIELDS),
    ):
        assert set(delivery[name]["properties"]) == fields, name
    assert delivery["auth"]["properties"]["type"]["enum"] == ["bearer", "basic"]
    assert set(delivery["tls"]["properties"]["certRef"]["properties"]) == {"name"}


@pytest.mark.integration
def test_the_api_server_keeps_every_delivery_secret_field(
    kube_control_plane: ControlPlane, kube: Kube
) -> None:
    kube.apply(CRD_PATH.read_text())
    manifest = yaml.safe_load(EXAMPLES[0].read_text())
    manifest["metadata"] = {"name": "signed"}
    delivery = {
        "signing": {"secretRef": {"name": "orders-signing", "key": "secret"}},
        "auth": {"type": "bearer", "secretRef": {"name": "orders-token", "key": "token"}},
        "tls": {"caRef": {"name": "orders-ca", "key": "ca.crt"}, "certRef": {"name": "orders"}},
    }
    manifest["spec"]["delivery"] = delivery
    manifest["spec"]["sink"] = "https://orders.example/events"
    (stored,) = kube.apply(manifest)
    assert stored["spec"]["delivery"] == delivery
    assert parse(stored).credentials.signing is not None


def test_the_crd_caps_types_where_the_model_does() -> None:
    assert served_schema()["spec"]["properties"]["types"]["maxItems"] == model.MAX_TYPES


@pytest.mark.integration
def test_the_api_server_refuses_more_types_than_the_model_accepts(
    kube_control_plane: ControlPlane, kube: Kube
) -> None:
    kube.apply(CRD_PATH.read_text())
    manifest = yaml.safe_load(EXAMPLES[0].read_text())
    manifest["metadata"] = {"name": "too-many-types"}
    manifest["spec"]["types"] = [f"order.n{i}.v1" for i in range(model.MAX_TYPES + 1)]
    verdict = kube.dry_run(manifest)[0]
    assert verdict.status == 422 and "must have at most 100 items" in verdict.message, verdict
    manifest["spec"]["types"] = manifest["spec"]["types"][: model.MAX_TYPES]
    assert kube.dry_run(manifest)[0].status in (200, 201)


@pytest.mark.integration
def test_a_deep_status_is_pruned_so_it_cannot_blind_the_manager(
    kube_control_plane: ControlPlane, kube: Kube
) -> None:
    """JSON nested 2,000 deep makes the Python client's decoder raise RecursionError: one such
    object would fail every list and watch of the manager, so the schema stores none."""
    kube.apply(CRD_PATH.read_text())
    manifest = yaml.safe_load(EXAMPLES[0].read_text())
    manifest["metadata"] = {"name": "deep-status"}
    kube.apply(manifest)
    deep = '{"x":' * 2000 + "1" + "}" * 2000
    binding = '{"originalType": "a.b.v1", "consumerName": "c"}'
    stored = kube.merge_patch_status(
        model.API_VERSION,
        model.KIND,
        "deep-status",
        f'{{"status": {{"ready": false, "backend": {{"types": [{binding}], "deep": {deep}}}}}}}',
    )
    backend = json.loads(stored)["status"]["backend"]
    assert backend == {"types": [{"originalType": "a.b.v1", "consumerName": "c"}]}


@pytest.mark.integration
def test_the_api_server_keeps_a_failing_subscriptions_delivery_status_whole(
    kube_control_plane: ControlPlane, kube: Kube
) -> None:
    """A sink that got no answer has ``lastError.status`` null: pruned or refused, the manager
    would write it again on every reconcile."""
    kube.apply(CRD_PATH.read_text())
    manifest = yaml.safe_load(EXAMPLES[0].read_text())
    manifest["metadata"] = {"name": "failing-sink"}
    kube.apply(manifest)
    failing = subscription_status.Delivery(
        delivered=3,
        retrying=1,
        last_error=subscription_status.LastError(1_767_268_800.0, None, "timed out"),
        failing_since=1_767_268_740.0,
        failing="3 or more attempts in a row failed",
    )
    written = subscription_status.status_of(parse(manifest), delivery=failing, pending=2)
    stored = kube.merge_patch_status(
        model.API_VERSION, model.KIND, "failing-sink", json.dumps({"status": written})
    )
    # A merge patch stores no null: the sink that gave no answer has no lastError.status.
    shown = written["delivery"]
    last_error = {"time": shown["lastError"]["time"], "reason": "timed out"}
    assert json.loads(stored)["status"]["delivery"] == {**shown, "lastError": last_error}


def test_the_crd_defaults_are_the_models_defaults() -> None:
    spec = served_schema()["spec"]["properties"]

    assert spec["typeMatching"]["default"] == model.STANDARD
    assert spec["config"]["default"] == {
        "maxInFlightMessages": str(Settings().manager.default_max_in_flight)
    }


def test_the_crd_status_holds_every_field_the_manager_writes() -> None:
    """Fields the schema lacks would be pruned by the API server, and the manager would then
    find the stored status different from its own on every reconcile, writing it forever."""
    status = served_schema()["status"]["properties"]
    written = subscription_status.status_of(parse(yaml.safe_load(EXAMPLES[0].read_text())))

    assert set(written) == set(status)
    assert set(written["types"][0]) == set(status["types"]["items"]["properties"])
    assert set(written["backend"]) == set(status["backend"]["properties"])
    backend_types = status["backend"]["properties"]["types"]["items"]["properties"]
    assert set(written["backend"]["types"][0]) == set(backend_types)
    assert set(written["conditions"][0]) == set(status["conditions"]["items"]["properties"])
    delivery = status["delivery"]["properties"]
    assert set(written["delivery"]) == set(delivery)
    failing = subscription_status.Delivery(
        last_error=subscription_status.LastError(1.0, None, "timed out"), failing_since=1.0
    ).shown(pending=0)
    assert set(failing["lastError"]) == set(delivery["lastError"]["properties"])


@pytest.mark.integration
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_is_accepted_by_the_api_server_and_the_model(
    kube_control_plane: ControlPlane, kube: Kube, example: Path
) -> None:
    kube.apply(CRD_PATH.read_text())
    manifest = {**yaml.safe_load(example.read_text())}
    manifest["metadata"] = {"name": manifest["metadata"]["name"]}

    (stored,) = kube.apply(manifest)

    parsed = parse(stored)
    assert parsed.namespace == kube.namespace
    assert str(parsed.max_in_flight) == stored["spec"]["config"]["maxInFlightMessages"]
