"""How processes reach NATS and the broker: the warning about backends open to the network,
and the connect options the settings turn into (no server needed)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from eventing.delivery import brokers, jobs
from eventing.nats import auth
from eventing.nats.client import JetStreamClient
from eventing.settings import DeliverySettings, NatsSettings, Settings


@pytest.mark.parametrize(
    "urls",
    [
        ("nats://127.0.0.1:4222",),
        ("nats://localhost:4222", "nats://[::1]:4222"),
        ("nats://app:pw@eventing-nats:4222",),
        ("nats://token@eventing-nats:4222",),
    ],
)
def test_nats_on_loopback_or_with_credentials_needs_no_warning(urls: tuple[str, ...]) -> None:
    assert auth.unauthenticated_warning(NatsSettings(urls=urls)) is None


def test_nats_beyond_loopback_without_credentials_is_warned_about(tmp_path: Path) -> None:
    settings = NatsSettings(urls=("nats://127.0.0.1:4222", "nats://eventing-nats:4222"))
    warning = auth.unauthenticated_warning(settings)
    assert warning is not None
    assert "nats://eventing-nats:4222" in warning and "NATS_CREDS_FILE" in warning
    assert "127.0.0.1" not in warning
    seeded = NatsSettings(urls=settings.urls, nkey_seed_file=str(tmp_path / "seed"))
    assert auth.unauthenticated_warning(seeded) is None


def test_a_password_file_becomes_a_password_read_at_each_connect(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("first\n")
    options = auth.connect_options(NatsSettings(user="app", password_file=str(password)))
    assert options["user"] == "app" and options["password"]() == "first"
    password.write_text("second\n")
    assert options["password"]() == "second"
    assert "tls" not in options


def test_the_broker_beyond_loopback_without_a_password_is_warned_about_once(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    url = "redis://user:s3cret@redis.eventing:6379/0"
    assert brokers.unauthenticated_warning(DeliverySettings(broker_url=url)) is None
    open_url = "redis://redis.eventing:6379/0"
    with caplog.at_level(logging.WARNING):
        jobs.make_broker(DeliverySettings(broker_url=open_url))
    assert [r.getMessage() for r in caplog.records] == [
        "the broker at redis://redis.eventing:6379/0 is reached without a password: set"
        " BROKER_PASSWORD_FILE (and use rediss:// or amqps:// with BROKER_TLS_CA_FILE)"
    ]
    password = tmp_path / "password"
    password.write_text("s3cret")
    filed = Settings.from_environ(
        {"BROKER_URL": "amqp://app@rabbit.eventing/%2F", "BROKER_PASSWORD_FILE": str(password)}
    )
    assert brokers.unauthenticated_warning(filed.delivery) is None


def test_rabbitmq_takes_its_password_from_the_file(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("first\n")
    settings = DeliverySettings(
        broker_url="amqps://app@rabbit.eventing:5671/%2F",
        broker_password_file=str(password),
    )
    broker = jobs.make_broker(settings)
    credentials = broker.parameters.credentials  # type: ignore[attr-defined]
    assert (credentials.username, credentials.password) == ("app", "first")
    password.write_text("second\n")
    assert credentials.password == "second"


def test_a_client_of_nats_beyond_loopback_without_credentials_warns_once_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings.from_environ({"NATS_URL": "nats://nats.invalid:4222"})

    async def start_twice() -> None:
        client = JetStreamClient(settings.nats, settings.stream, name="proxy")
        client.start()
        client.start()
        await client.close()

    with caplog.at_level(logging.WARNING, logger="eventing.nats.client"):
        asyncio.run(start_twice())
    warnings = [
        r.getMessage() for r in caplog.records if "without authentication" in r.getMessage()
    ]
    assert warnings == [
        "proxy: NATS at nats://nats.invalid:4222 is reached without authentication: set"
        " NATS_CREDS_FILE (or NATS_NKEY_SEED_FILE, NATS_TOKEN_FILE, NATS_USER with"
        " NATS_PASSWORD_FILE) and NATS_TLS_CA_FILE"
    ]
