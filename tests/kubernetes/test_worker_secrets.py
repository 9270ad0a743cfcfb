"""A worker reads the Secrets a job names through a real kube-apiserver: the signing secret,
credentials, CA and client certificate of the subscription's namespace, and only Secrets
labelled for deliveries."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

from eventing.delivery.credentials import SinkCredentials
from eventing.errors import TemporaryDeliveryError
from eventing.settings import SourceSettings
from eventing.subscriptions.model import from_manifest
from testing.kube import Kube
from tests.eventing.test_subscription import DEFAULTS, PREFIX, manifest
from tests.workers.conftest import make_job
from workers.secrets import DELIVERY_LABEL, Secrets

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

SIGNING = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def secret(name: str, data: dict[str, str], *, labelled: bool = True) -> dict[str, Any]:
    labels = {DELIVERY_LABEL: "true"} if labelled else {}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels},
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


def credentials_of(kube: Kube, delivery: dict[str, Any]) -> SinkCredentials:
    document = manifest({"sink": "https://sink.example/", "delivery": delivery})
    document["metadata"]["namespace"] = kube.namespace
    return from_manifest(
        document, prefix=PREFIX, defaults=DEFAULTS, default_max_in_flight=1
    ).credentials


def test_signing_credentials_and_tls_come_from_the_subscriptions_secrets(
    kube: Kube, tmp_path: Path
) -> None:
    kube.apply(
        [
            secret("orders-signing", {"secret": SIGNING}),
            secret("orders-basic", {"username": "orders", "password": "pa55"}),
            secret("orders-tls", {"ca.crt": "CA PEM", "tls.crt": "CERT PEM", "tls.key": "KEY PEM"}),
        ]
    )
    credentials = credentials_of(
        kube,
        {
            "signing": {"secretRef": {"name": "orders-signing", "key": "secret"}},
            "auth": {"type": "basic", "secretRef": {"name": "orders-basic"}},
            "tls": {"caRef": {"name": "orders-tls"}, "certRef": {"name": "orders-tls"}},
        },
    )
    secrets = Secrets(SourceSettings(kubeconfig=str(kube.kubeconfig)))

    outbound = secrets.outbound(make_job(credentials=credentials), b"{}")

    standardwebhooks.Webhook(SIGNING).verify(b"{}", outbound.headers, json_parse=False)
    assert outbound.headers["Authorization"] == "Basic " + base64.b64encode(b"orders:pa55").decode()
    assert isinstance(outbound.verify, str) and outbound.cert is not None
    files = [Path(outbound.verify), *map(Path, outbound.cert)]
    assert [path.read_text() for path in files] == ["CA PEM", "CERT PEM", "KEY PEM"]
    for path in files:  # written for this process alone
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_secret_not_labelled_for_deliveries_is_not_used(kube: Kube) -> None:
    kube.apply(secret("database", {"password": "hunter2"}, labelled=False))
    credentials = credentials_of(
        kube, {"auth": {"type": "bearer", "secretRef": {"name": "database", "key": "password"}}}
    )
    secrets = Secrets(SourceSettings(kubeconfig=str(kube.kubeconfig)))
    with pytest.raises(TemporaryDeliveryError, match=f"lacks the label {DELIVERY_LABEL}") as raised:
        secrets.outbound(make_job(credentials=credentials), b"{}")
    assert "hunter2" not in str(raised.value)


def test_a_missing_secret_or_key_is_named(kube: Kube) -> None:
    kube.apply(secret("orders-signing", {"other": SIGNING}))
    secrets = Secrets(SourceSettings(kubeconfig=str(kube.kubeconfig)))
    for name, problem in (("orders-signing", "has no such key"), ("nothing", "answered 404")):
        credentials = credentials_of(
            kube, {"signing": {"secretRef": {"name": name, "key": "secret"}}}
        )
        with pytest.raises(TemporaryDeliveryError, match=problem):
            secrets.outbound(make_job(credentials=credentials), b"{}")
