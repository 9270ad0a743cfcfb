"""Signed deliveries and sink credentials end to end: a real system, real sinks on loopback (one
https sink that requires a client certificate), verified with the ``standardwebhooks`` package
a receiver would use."""

from __future__ import annotations

import base64
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import standardwebhooks
import yaml
from werkzeug.wrappers import Request

from testing import pki
from testing.servers import NatsServer, RedisServer, wait_until
from testing.sink import RecordingSink, SinkServer
from testing.system import System

pytestmark = pytest.mark.integration

RETRY_FAST = {"retry": 3, "backoffDelay": "PT0.1S"}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def verified(secret: str, headers: dict[str, str], body: bytes) -> None:
    """Raises standardwebhooks.WebhookVerificationError unless ``secret`` signed the request."""
    standardwebhooks.Webhook(secret).verify(body, headers, json_parse=False)


def test_every_attempt_is_signed_with_each_secret_and_one_id_across_retries(
    system: System, sink_server: SinkServer
) -> None:
    new, old = new_secret(), new_secret()
    secrets = system.subscriptions / "secrets"
    secrets.mkdir()
    (secrets / "orders.whsec").write_text(f"{new}\n{old}\n")  # rotating: both sign
    answers = iter([503, 204])
    sink_server.sink.answer = lambda request: next(answers, 204)
    system.subscribe(
        "signed",
        {
            "sink": sink_server.url,
            "source": "myapp",
            "types": ["order.created.v1"],
            "delivery": {**RETRY_FAST, "signing": {"secretFile": "secrets/orders.whsec"}},
        },
    )

    assert system.publish_binary("order-1", "myapp", "order.created.v1").status_code == 204
    wait_until(lambda: len(sink_server.sink.received()) == 1, 20, f"delivery\n{system.logs()}")

    first, second = sink_server.sink.received(None)
    assert first.status == 503 and second.status == 204
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    for delivery in (first, second):
        assert len(delivery.headers["webhook-signature"].split(" ")) == 2
        verified(new, delivery.headers, delivery.body)
        verified(old, delivery.headers, delivery.body)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verified(new_secret(), second.headers, second.body)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verified(new, second.headers, second.body + b" ")  # an altered body fails


def test_an_unsigned_subscription_gets_no_signature(
    system: System, sink_server: SinkServer
) -> None:
    system.subscribe(
        "unsigned", {"sink": sink_server.url, "source": "myapp", "types": ["order.created.v1"]}
    )
    assert system.publish_binary("order-2", "myapp", "order.created.v1").status_code == 204
    wait_until(lambda: len(sink_server.sink.received()) == 1, 20, f"delivery\n{system.logs()}")
    assert not {"webhook-id", "webhook-signature", "authorization"} & set(
        sink_server.sink.received()[0].headers
    )


def test_a_malformed_secret_makes_the_subscription_invalid_and_says_why(system: System) -> None:
    (system.subscriptions / "bad.whsec").write_text("not-a-secret\n")
    spec = {
        "sink": "http://127.0.0.1:9/events",
        "source": "myapp",
        "types": ["order.created.v1"],
        "delivery": {"signing": {"secretFile": "bad.whsec"}},
    }
    document = {
        "apiVersion": "eventing.kyma-project.io/v1alpha2",
        "kind": "Subscription",
        "metadata": {"name": "badly-signed", "namespace": "default"},
        "spec": spec,
    }
    (system.subscriptions / "default-badly-signed.yaml").write_text(yaml.safe_dump(document))

    def problem() -> str:
        status = system.status("default", "badly-signed")
        return "" if status is None else str(status["status"])

    wait_until(lambda: "does not start with whsec_" in problem(), 20, f"status\n{system.logs()}")
    assert "not-a-secret" not in problem()  # the content is never echoed


@pytest.fixture
def tls_sink(tmp_path: Path) -> Iterator[tuple[SinkServer, Path]]:
    """An https sink on loopback that requires a client certificate signed by its CA."""
    folder = tmp_path / "sink-pki"
    pki.write_sink(folder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(folder / "ca.crt"))
    context.load_cert_chain(folder / "sink.crt", folder / "sink.key")
    context.verify_mode = ssl.CERT_REQUIRED
    server = SinkServer(RecordingSink(), ssl_context=context).start()
    yield server, folder
    server.stop()


def test_an_https_sink_gets_the_client_certificate_and_the_bearer_token(
    system: System, tls_sink: tuple[SinkServer, Path]
) -> None:
    sink, folder = tls_sink
    with pytest.raises(requests.exceptions.SSLError):  # the sink does require a certificate
        requests.post(sink.url, verify=str(folder / "ca.crt"), timeout=5)
    (system.subscriptions / "token").write_text("s3cr3t-token\n")
    system.subscribe(
        "mtls",
        {
            "sink": sink.url,
            "source": "myapp",
            "types": ["order.created.v1"],
            "delivery": {
                **RETRY_FAST,
                "auth": {"type": "bearer", "secretFile": "token"},
                "tls": {
                    "caFile": str(folder / "ca.crt"),
                    "certFile": str(folder / "client.crt"),
                    "keyFile": str(folder / "client.key"),
                },
            },
        },
    )

    assert system.publish_binary("order-3", "myapp", "order.created.v1").status_code == 204
    wait_until(lambda: len(sink.sink.received()) == 1, 20, f"delivery\n{system.logs()}")
    assert sink.sink.received()[0].headers["authorization"] == "Bearer s3cr3t-token"


def test_basic_credentials_from_a_file(system: System, sink_server: SinkServer) -> None:
    (system.subscriptions / "basic").write_text("orders:pa55word\n")
    users: list[tuple[str, str]] = []

    def answer(request: Request) -> int:
        auth = request.authorization
        users.append((auth.username or "", auth.password or "") if auth else ("", ""))
        return 204

    sink_server.sink.answer = answer
    system.subscribe(
        "basic",
        {
            "sink": sink_server.url,
            "source": "myapp",
            "types": ["order.created.v1"],
            "delivery": {"auth": {"type": "basic", "secretFile": "basic"}},
        },
    )
    assert system.publish_binary("order-4", "myapp", "order.created.v1").status_code == 204
    wait_until(lambda: len(sink_server.sink.received()) == 1, 20, f"delivery\n{system.logs()}")
    assert users == [("orders", "pa55word")]


def test_the_webhook_id_stays_across_jetstream_redeliveries(
    nats_server: NatsServer, redis_server: RedisServer, tmp_path: Path, sink_server: SinkServer
) -> None:
    """With no wait inside a job, each retry is a NAK and a redelivery of the message, taken
    by a job of its own: the id is the stored event's, not the job's."""
    system = System(nats_server, redis_server, tmp_path, DELIVERY_IN_JOB_WAIT_MAX="0").start()
    try:
        secret = new_secret()
        (system.subscriptions / "s.whsec").write_text(secret)
        answers = iter([500, 500, 204])
        sink_server.sink.answer = lambda request: next(answers, 204)
        system.subscribe(
            "redelivered",
            {
                "sink": sink_server.url,
                "source": "myapp",
                "types": ["order.created.v1"],
                "delivery": {**RETRY_FAST, "signing": {"secretFile": "s.whsec"}},
            },
        )
        assert system.publish_binary("order-5", "myapp", "order.created.v1").status_code == 204
        wait_until(lambda: len(sink_server.sink.received()) == 1, 30, f"delivery\n{system.logs()}")
        attempts = sink_server.sink.received(None)
        assert [a.status for a in attempts] == [500, 500, 204]
        assert len({a.headers["webhook-id"] for a in attempts}) == 1
        for attempt in attempts:
            verified(secret, attempt.headers, attempt.body)
        assert "redelivering" in system.workers[0].log()  # the retries were redeliveries
    finally:
        system.stop()
