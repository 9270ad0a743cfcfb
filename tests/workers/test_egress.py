"""The egress policy where the worker connects (workers.egress), against real loopback sinks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventing.delivery.egress import EgressPolicy, Rules
from eventing.delivery.steps import DeadLetter
from eventing.errors import SinkRefused
from testing.servers import free_port
from testing.sink import SinkServer
from tests.workers.conftest import Clock, make_job
from tests.workers.test_delivery import run
from workers import deadline, delivery, egress
from workers.delivery import Attempt

KUBERNETES = EgressPolicy(loopback=False)


@pytest.fixture
def policy() -> Iterator[None]:
    """The process's policy restored after the test (each test installs its own)."""
    yield
    egress.install(EgressPolicy())


def post(sink: str) -> int:
    encoded = delivery.encode(make_job(sink=sink))
    attempts: list[Attempt] = []
    return delivery.post(
        deadline.session(), make_job(sink=sink), encoded.headers, encoded.body, attempts.append
    )


def test_a_refused_address_gets_no_request_and_a_closed_port_looks_the_same(
    policy: None, sink_server: SinkServer
) -> None:
    egress.install(KUBERNETES)
    closed = f"http://127.0.0.1:{free_port()}/"
    reasons = []
    for sink in (sink_server.url, closed):
        with pytest.raises(SinkRefused) as refused:
            post(sink)
        reasons.append(str(refused.value))
    assert sink_server.sink.received(None) == []
    assert reasons[0] == reasons[1]
    assert "egress policy" in reasons[0] and "loopback" in reasons[0]


def test_the_address_a_name_resolves_to_is_checked(policy: None, sink_server: SinkServer) -> None:
    egress.install(KUBERNETES)
    with pytest.raises(SinkRefused) as refused:
        post(f"http://localhost:{sink_server.port}/")
    assert "localhost (127.0.0.1)" in str(refused.value)
    assert sink_server.sink.received(None) == []


def test_an_allowed_loopback_sink_is_delivered_to(policy: None, sink_server: SinkServer) -> None:
    egress.install(EgressPolicy(allow=Rules.parse(("127.0.0.1",)), loopback=False))
    assert post(sink_server.url) == 204
    assert len(sink_server.sink.received()) == 1


def test_the_folder_modes_default_delivers_to_loopback_and_refuses_metadata(
    sink_server: SinkServer,
) -> None:
    assert post(sink_server.url) == 204
    with pytest.raises(SinkRefused):
        post("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(SinkRefused):
        post("http://metadata.google.internal/computeMetadata/v1/")


@pytest.mark.parametrize(
    "host", ["2852039166", "0xa9fea9fe", "169.254.43518", "[::ffff:a9fe:a9fe]"]
)
def test_other_spellings_of_the_metadata_address_are_refused_as_what_they_resolve_to(
    host: str,
) -> None:
    with pytest.raises(SinkRefused) as refused:
        post(f"http://{host}/latest/meta-data/")
    assert "169.254.169.254" in str(refused.value)


def test_a_refusal_is_a_dead_letter_after_one_attempt(policy: None) -> None:
    egress.install(EgressPolicy(deny=Rules.parse(("127.0.0.0/8",))))
    clock = Clock()
    outcome = run(make_job(sink=f"http://127.0.0.1:{free_port()}/"), deadline.session(), clock)
    assert isinstance(outcome, DeadLetter)
    assert outcome.attempts == 1 and outcome.status is None
    assert "SINK_DENY" in outcome.reason
    assert clock.slept == []  # no retry: the policy gives the same answer every time
