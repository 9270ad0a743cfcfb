"""In-memory seams for delivery tests: an HTTP sink (a requests transport adapter) and an
attempt log."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3 import HTTPResponse

from eventing.delivery.jobs import DeliveryJob
from eventing.delivery.retries import DeliveryPolicy
from eventing.delivery.steps import NOTHING_MADE, Progress
from eventing.events import cloudevent

POLICY = DeliveryPolicy(
    retry=3,
    backoff_policy="exponential",
    backoff_delay=1.0,
    backoff_max=60.0,
    timeout=5.0,
    retry_after_max=30.0,
    in_job_wait_max=10.0,
)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedSink(BaseAdapter):
    """Answers each request with its next reply: a status, (status, headers), or an exception."""

    replies: list[Any] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
        self.received.append(Received(dict(request.headers), body))
        reply = self.replies.pop(0) if self.replies else 204
        if isinstance(reply, Exception):
            raise reply
        status, headers = reply if isinstance(reply, tuple) else (reply, {})
        raw = HTTPResponse(body=b"answer", status=status, headers=headers, preload_content=False)
        response = requests.Response()
        response.status_code = status
        response.headers = CaseInsensitiveDict(headers)
        response.raw = raw
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


@pytest.fixture
def sink() -> ScriptedSink:
    return ScriptedSink()


@pytest.fixture
def session(sink: ScriptedSink) -> requests.Session:
    http = requests.Session()
    http.mount("http://", sink)
    return http


def raw_event(**changes: Any) -> str:
    """An event as stored, unvalidated: what a publisher past the proxy may have written
    (a change to None drops the attribute)."""
    document = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "myapp",
        "type": "order.created.v1",
        "datacontenttype": "application/json",
        "originaltype": "order.created.v1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "data": {"orderId": 42},
        **changes,
    }
    return json.dumps({name: value for name, value in document.items() if value is not None})


def stored_event(**changes: Any) -> str:
    """An event as the proxy stores it."""
    event = cloudevent.from_json_object(json.loads(raw_event(**changes)))
    return cloudevent.to_stored(event).decode()


#: The job signing key of the workers' tests, and the stream their jobs' ack subjects are of.
KEY = b"k" * 32
STREAM = "sap"


def make_job(
    delivery_count: int = 1, policy: DeliveryPolicy = POLICY, **changes: Any
) -> DeliveryJob:
    fields: dict[str, Any] = {
        "event": stored_event(),
        "sink": "http://sink.test/events",
        "subscription": "default/orders",
        "event_type": "order.created.v1",
        "consumer": "c0ffee",
        "ack_subject": "$JS.ACK.sap.c0ffee.1.7.7.0.0",
        "stream_sequence": 7,
        "delivery_count": delivery_count,
        "ack_wait": 30.0,
        "policy": policy,
        **changes,
    }
    return DeliveryJob(**fields)


@dataclass
class MemoryLog:
    """Attempt counts in memory; ``reachable=False`` plays a key-value store that cannot answer."""

    counts: dict[int, Progress] = field(default_factory=dict)  #: by stream sequence
    reachable: bool = True
    reads: int = 0
    writes: list[int] = field(default_factory=list)  #: ``made`` of every record, in order

    def progress(self, job: DeliveryJob) -> Progress | None:
        self.reads += 1
        return self.counts.get(job.stream_sequence, NOTHING_MADE) if self.reachable else None

    def record(self, job: DeliveryJob, progress: Progress) -> None:
        self.writes.append(progress.made)
        if self.reachable:
            self.counts[job.stream_sequence] = progress

    def elapse(self, seconds: float) -> None:
        """Age every count by ``seconds``, as a NAK delay spent in JetStream would."""
        self.counts = {
            sequence: Progress(progress.made, progress.at - seconds)
            for sequence, progress in self.counts.items()
        }


@pytest.fixture
def log() -> MemoryLog:
    return MemoryLog()


class Clock:
    """A fake sleep that records how long the job waited."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)

    @property
    def total(self) -> float:
        return sum(self.slept)


@pytest.fixture
def clock() -> Clock:
    return Clock()
