"""A delivery thread's session finds each sink's connection pool once (workers.deadline)."""

from __future__ import annotations

import pytest
import requests

from testing.sink import RecordingSink, SinkServer
from tests.workers.conftest import MemoryLog, make_job
from workers import attempts, deadline
from workers.attempts import Delivered

pytestmark = pytest.mark.integration


def deliver(session: requests.Session, sink: str) -> attempts.Outcome:
    job = make_job(sink=sink)
    return attempts.run(job, session, extra_deliveries=0, keepalive=lambda: None, log=MemoryLog())


def test_each_sink_gets_its_events_through_its_own_pool(sink_server: SinkServer) -> None:
    others = [SinkServer(RecordingSink()).start() for _ in range(11)]  # more than it keeps
    try:
        session = deadline.session()
        for _ in range(2):
            for sink in [sink_server, *others]:
                assert deliver(session, sink.url) == Delivered(204, 1)
        assert [len(sink.sink.received()) for sink in [sink_server, *others]] == [2] * 12
    finally:
        for sink in others:
            sink.stop()
