"""Kubernetes service-account tokens as publisher identity, against a real kube-apiserver.

The proxy fetches the API server's OIDC JWKS (``/openid/v1/jwks``, over https with the cluster's
CA, sending a service-account token of its own, as a pod would), and verifies projected tokens
the TokenRequest API minted for the audience ``eventing-proxy``: Knative's sender identity,
without a mesh.
"""

from __future__ import annotations

import base64
from pathlib import Path

import kubernetes
import pytest
import yaml
from flask.testing import FlaskClient

from eventing.nats.messages import message_id
from eventing.settings import Settings
from proxy import create_app
from testing.kube import Kube
from tests.proxy.conftest import RecordingPublisher

AUDIENCE = "eventing-proxy"
BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "order-4242",
    "ce-source": "orders",
    "ce-type": "order.created.v1",
    "Content-Type": "application/json",
}


def _token(kubeconfig: Path, namespace: str, account: str, audiences: list[str] | None) -> str:
    """A token of ``account`` from the TokenRequest API (no audiences: the API server's own)."""
    client = kubernetes.config.new_client_from_config(str(kubeconfig))
    try:
        spec = {"expirationSeconds": 600, **({"audiences": audiences} if audiences else {})}
        answer = kubernetes.client.CoreV1Api(client).create_namespaced_service_account_token(
            account, namespace, {"apiVersion": "authentication.k8s.io/v1", "spec": spec}
        )
        return str(answer.status.token)
    finally:
        client.close()


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def proxy(kube: Kube, tmp_path: Path, publisher: RecordingPublisher) -> FlaskClient:
    """The proxy trusting the API server's service-account tokens of audience eventing-proxy."""
    for account in ("orders", "intruder", "eventing-proxy"):
        kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}})
    config = yaml.safe_load(kube.kubeconfig.read_text())
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]))
    own_token = tmp_path / "token"  # what a pod finds in its projected volume
    own_token.write_text(_token(kube.kubeconfig, kube.namespace, "eventing-proxy", None))
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "orders",
                    "claims": {"sub": f"system:serviceaccount:{kube.namespace}:orders"},
                    "sources": ["orders"],
                    "types": ["order.*"],
                }
            ]
        )
    )
    settings = Settings.from_environ(
        {
            "PROXY_JWKS": f"{kube.url}/openid/v1/jwks",
            "PROXY_JWKS_CA_FILE": str(ca),
            "PROXY_JWKS_TOKEN_FILE": str(own_token),
            "PROXY_JWT_ISSUER": f"{kube.url}/",
            "PROXY_JWT_AUDIENCE": AUDIENCE,
            "PROXY_JWT_RULES_FILE": str(rules),
        }
    )
    return create_app(settings, publisher=publisher).test_client()


def test_a_service_account_token_publishes_under_its_rule_s_name(
    proxy: FlaskClient, kube: Kube, publisher: RecordingPublisher
) -> None:
    token = _token(kube.kubeconfig, kube.namespace, "orders", [AUDIENCE])
    headers = {**BINARY, "Authorization": f"Bearer {token}"}
    response = proxy.post("/publish", headers=headers, data=b"{}")
    assert response.status_code == 204, response.get_json()
    [stored] = publisher.messages
    assert stored.headers["Nats-Msg-Id"] == message_id("orders", "order-4242", "orders")
    forbidden = proxy.post("/publish", headers={**headers, "ce-source": "billing"}, data=b"{}")
    assert forbidden.status_code == 403
    assert forbidden.get_json()["publisher"] == "orders"


@pytest.mark.parametrize(
    ("account", "audiences"),
    [("intruder", [AUDIENCE]), ("orders", None), ("orders", ["another-service"])],
    ids=["no-rule-for-the-account", "the-api-server-s-audience", "another-audience"],
)
def test_a_token_of_another_account_or_audience_is_401(
    proxy: FlaskClient,
    kube: Kube,
    publisher: RecordingPublisher,
    account: str,
    audiences: list[str] | None,
) -> None:
    token = _token(kube.kubeconfig, kube.namespace, account, audiences)
    response = proxy.post(
        "/publish", headers={**BINARY, "Authorization": f"Bearer {token}"}, data=b"{}"
    )
    assert response.status_code == 401, response.get_json()
    assert publisher.messages == []
