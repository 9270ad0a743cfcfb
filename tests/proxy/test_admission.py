"""Admission: an overloaded proxy answers 503 with Retry-After at once instead of letting requests
wait for a thread without limit (found by bench/overload.py: at twice the sustainable rate,
answers took 10 s and more, and none was a 503)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from eventing.errors import BatchTooLarge, Overloaded, PublishError
from eventing.nats.messages import OutboundMessage
from eventing.settings import Settings
from proxy import create_app
from proxy.admission import Admission, thread_count, waiting_room
from testing.servers import wait_until
from tests.proxy.conftest import RecordingPublisher

BINARY = {"ce-specversion": "1.0", "ce-source": "myapp", "ce-type": "order.created.v1"}
LEGACY = (
    b'{"event-type": "order.created", "event-type-version": "v1",'
    b' "event-time": "2020-04-02T21:37:00Z", "data": {}}'
)


class HeldPublisher(RecordingPublisher):
    """Publishes only once :attr:`release` is set: every publish in progress holds its turn."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def publish(self, messages: list[OutboundMessage]) -> list[PublishError | None]:
        self.entered.release()
        self.release.wait(10)
        return super().publish(messages)


def test_a_free_slot_is_taken_at_once_and_given_back() -> None:
    admission = Admission(slots=1, waiting=1, patience=0.01, retry_after=1, max_events=10)
    for _ in range(3):
        admission.enter()
        admission.leave()


def _held(admission: Admission) -> tuple[threading.Event, threading.Thread]:
    """A thread holding a turn until the returned event is set."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        admission.enter()
        holding.set()
        release.wait(10)
        admission.leave()

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(5)
    return release, thread


def test_with_the_waiting_room_full_it_is_overloaded_at_once() -> None:
    admission = Admission(slots=1, waiting=0, patience=5, retry_after=7, max_events=10)
    release, holder = _held(admission)
    started = time.monotonic()
    with pytest.raises(Overloaded) as refused:
        admission.enter()
    assert time.monotonic() - started < 1  # not after the patience of 5 s
    assert refused.value.retry_after == 7
    release.set()
    holder.join(5)


def test_a_waiter_gets_the_slot_when_it_comes_free() -> None:
    admission = Admission(slots=1, waiting=1, patience=5, retry_after=1, max_events=10)
    release, holder = _held(admission)

    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(admission.enter)
        release.set()
        waiter.result(5)  # no Overloaded
    holder.join(5)


def test_a_waiter_whose_patience_runs_out_is_overloaded() -> None:
    admission = Admission(slots=1, waiting=1, patience=0.2, retry_after=1, max_events=10)
    release, holder = _held(admission)
    started = time.monotonic()
    with pytest.raises(Overloaded):
        admission.enter()
    assert time.monotonic() - started >= 0.2
    release.set()
    holder.join(5)
    admission.enter()  # the holder gave its slot back, and the waiter took none


def test_events_in_flight_are_held_up_to_the_limit_and_given_back() -> None:
    admission = Admission(slots=1, waiting=0, patience=0.01, retry_after=7, max_events=3)
    with admission.holding(2):
        with pytest.raises(Overloaded) as refused, admission.holding(2):
            pass
        assert refused.value.retry_after == 7
        assert "2 events waiting for JetStream (limit 3)" in str(refused.value)
        with admission.holding(1):
            pass
    with admission.holding(3):  # all given back, a refused request's too
        pass


def test_more_events_than_the_limit_are_too_large_not_overloaded() -> None:
    admission = Admission(slots=1, waiting=0, patience=0.01, retry_after=7, max_events=3)
    with pytest.raises(BatchTooLarge) as refused, admission.holding(4):
        pass
    assert (refused.value.count, refused.value.limit) == (4, 3)
    with admission.holding(3):
        pass


def test_threads_cover_slots_waiting_room_and_as_many_free() -> None:
    assert waiting_room(32) == 32
    assert thread_count(32) == 96
    assert thread_count(1) == 3  # one slot, one waiter, one thread left to answer 503


@pytest.fixture
def held() -> Iterator[HeldPublisher]:
    publisher = HeldPublisher()
    yield publisher
    publisher.release.set()


@pytest.mark.parametrize(
    ("path", "route", "headers", "body"),
    [
        ("/publish", "/publish", BINARY, b"{}"),
        ("/app/v1/events", "/{application}/v1/events", {}, LEGACY),
    ],
    ids=["publish", "legacy"],
)
def test_requests_beyond_the_slots_and_waiting_room_get_503_with_retry_after(
    held: HeldPublisher, path: str, route: str, headers: dict[str, str], body: bytes
) -> None:
    settings = Settings.from_environ({"PROXY_THREADS": "2", "PROXY_RETRY_AFTER": "3"})
    app = create_app(settings, publisher=held)
    admission = app.extensions["eventing.admission"]
    client = app.test_client()

    def post(n: int) -> int:
        response = client.post(path, headers={**headers, "ce-id": str(n)}, data=body)
        return response.status_code

    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(post, n) for n in range(2)]  # both slots
        for _ in busy:
            assert held.entered.acquire(timeout=5)
        waiting = [pool.submit(post, n) for n in (2, 3)]  # the waiting room: two places
        wait_until(lambda: admission.waiting == 2, 5, "two requests in the waiting room")
        refused = client.post(path, headers={**headers, "ce-id": "4"}, data=body)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "3"
        if path == "/publish":
            assert refused.mimetype == "application/problem+json"
            assert refused.json["title"] == "Event not stored"
        else:
            assert refused.json["status"] == 503  # Kyma's shape on the legacy endpoint
        assert client.get("/healthz").status_code == 200  # not subject to admission
        metrics = client.get("/metrics").text
        assert f'code="503",method="POST",path="{route}"}} 1.0' in metrics
        held.release.set()
        assert {f.result(5) for f in [*busy, *waiting]} == {204 if path == "/publish" else 200}
    assert len(held.messages) == 4
