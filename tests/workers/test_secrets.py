"""What a worker adds to a request from the secrets a job names: read from files here (the
Kubernetes Secrets are read in tests/kubernetes), cached briefly, and never in the job."""

from __future__ import annotations

import base64
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
import standardwebhooks

from eventing.delivery.credentials import SecretRef, SinkCredentials
from eventing.delivery.jobs import DeliveryJob
from eventing.delivery.steps import DeadLetter
from eventing.errors import TemporaryDeliveryError
from eventing.settings import SourceSettings
from tests.workers.conftest import POLICY, MemoryLog, ScriptedSink, make_job
from workers import attempts
from workers.secrets import TTL, Secrets

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
ROTATED = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def signed_job(secret_file: Path, **changes: Any) -> DeliveryJob:
    credentials = SinkCredentials(signing=SecretRef(file=str(secret_file)))
    return make_job(credentials=credentials, **changes)


def test_a_rotated_secret_is_used_once_the_cached_one_expires(tmp_path: Path) -> None:
    secret = tmp_path / "orders.whsec"
    secret.write_text(SECRET)
    clock = Monotonic()
    secrets = Secrets(SourceSettings(), clock=clock)
    job = signed_job(secret)

    def verifies(with_secret: str) -> bool:
        headers = secrets.outbound(job, b"{}").headers
        try:
            standardwebhooks.Webhook(with_secret).verify(b"{}", headers, json_parse=False)
        except standardwebhooks.WebhookVerificationError:
            return False
        return True

    assert verifies(SECRET)
    secret.write_text(f"{ROTATED}\n{SECRET}\n")
    clock.now += TTL / 2
    assert verifies(SECRET) and not verifies(ROTATED)  # still the cached value
    clock.now += TTL
    assert verifies(ROTATED) and verifies(SECRET)  # both sign while the secret rotates


def test_the_job_names_the_secret_and_never_carries_it(tmp_path: Path) -> None:
    secret = tmp_path / "orders.whsec"
    secret.write_text(SECRET)
    token = tmp_path / "token"
    token.write_text("s3cr3t")
    job = make_job(
        credentials=SinkCredentials(
            signing=SecretRef(file=str(secret)),
            auth_type="bearer",
            auth=(SecretRef(file=str(token)),),
        ),
    )
    text = json.dumps(job.to_dict())
    assert SECRET not in text and "s3cr3t" not in text and str(token) in text
    assert DeliveryJob.from_dict(json.loads(text)) == job
    assert "credentials" not in make_job().to_dict()  # jobs without secrets stay as they were


@pytest.mark.parametrize(
    ("content", "kind", "expected"),
    [
        ("s3cr3t\n", "bearer", "Bearer s3cr3t"),
        ("orders:pa:ss\n", "basic", "Basic " + base64.b64encode(b"orders:pa:ss").decode()),
    ],
)
def test_credentials_from_a_file(tmp_path: Path, content: str, kind: str, expected: str) -> None:
    (tmp_path / "auth").write_text(content)
    credentials = SinkCredentials(auth_type=kind, auth=(SecretRef(file=str(tmp_path / "auth")),))
    outbound = Secrets(SourceSettings()).outbound(make_job(credentials=credentials), b"")
    assert outbound.headers == {"Authorization": expected}


@pytest.mark.parametrize(
    ("content", "kind", "problem"),
    [
        ("two\nlines", "bearer", "expected one line of visible text"),
        ("no-colon", "basic", "expected user:password"),
    ],
)
def test_malformed_credentials_fail_the_attempt_without_showing_them(
    tmp_path: Path, content: str, kind: str, problem: str
) -> None:
    (tmp_path / "auth").write_text(content)
    credentials = SinkCredentials(auth_type=kind, auth=(SecretRef(file=str(tmp_path / "auth")),))
    with pytest.raises(TemporaryDeliveryError, match=problem) as raised:
        Secrets(SourceSettings()).outbound(make_job(credentials=credentials), b"")
    assert content not in str(raised.value)


def test_a_secret_gone_at_delivery_dead_letters_the_event_with_the_reason(
    tmp_path: Path, sink: ScriptedSink, session: requests.Session
) -> None:
    """The job's attempts fail as temporary, the worker goes on, and the dead letter names the
    file: nothing unsigned reaches the sink."""
    job = signed_job(tmp_path / "gone.whsec", policy=replace(POLICY, retry=1))
    outcome = attempts.run(
        job,
        session,
        extra_deliveries=0,
        keepalive=lambda: None,
        log=MemoryLog(),
        sleep=lambda seconds: None,
        rng=random.Random(1),
        outbound=Secrets(SourceSettings()).outbound,
    )
    assert isinstance(outcome, DeadLetter)
    assert f"signing secret (file {tmp_path / 'gone.whsec'}): cannot be read" in outcome.reason
    assert sink.received == []


def test_a_secret_ref_without_a_cluster_fails_the_attempt_saying_so(tmp_path: Path) -> None:
    credentials = SinkCredentials(signing=SecretRef(namespace="shop", name="orders", key="s"))
    secrets = Secrets(SourceSettings(kubeconfig=str(tmp_path / "no-such-kubeconfig")))
    with pytest.raises(TemporaryDeliveryError, match="no Kubernetes API to read it from"):
        secrets.outbound(make_job(credentials=credentials), b"")


@pytest.mark.parametrize(
    "credentials",
    [
        "a string",
        {"signing": "a string"},
        {"signing": {"name": "no-namespace-no-key"}},
        {"auth_type": "bearer"},
        {"auth_type": "oauth", "auth": [{"file": "/t"}]},
    ],
)
def test_a_job_with_malformed_credentials_is_malformed(credentials: Any) -> None:
    """The actor drops such a job as malformed (it catches these three), never crashes."""
    job = {**make_job().to_dict(), "credentials": credentials}
    with pytest.raises((KeyError, TypeError, ValueError)):
        DeliveryJob.from_dict(job)
