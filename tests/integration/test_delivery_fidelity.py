"""The sink gets what the publisher sent: every process real, from the proxy to a loopback sink.

What a sink receives in each header is compared byte for byte with what was published, and read
back with the cloudevents SDK's own binary-mode receiver, which undoes the HTTP binding's
percent-encoding.
"""

from __future__ import annotations

import pytest
import requests
from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

from testing.servers import wait_until
from testing.sink import Delivery, SinkServer
from testing.system import System

pytestmark = pytest.mark.integration

SUBJECT = 'a b"c%d\u00e9,;:/'
SUBJECT_ON_THE_WIRE = "a%20b%22c%25d%C3%A9,;:/"  # HTTP binding 3.1.3.2: space, ", %, non-ASCII


def _deliveries(system: System, sink_server: SinkServer, ids: set[str]) -> dict[str, Delivery]:
    sink = sink_server.sink
    wait_until(lambda: ids <= set(sink.ids()), 30, f"{sorted(ids)} at the sink\n{system.logs()}")
    return {delivery.event_id: delivery for delivery in sink.received()}


def test_attributes_arrive_as_published(system: System, sink_server: SinkServer) -> None:
    system.subscribe(
        "fidelity", {"sink": f"{sink_server.url}/", "source": "shop", "types": ["order.created.v1"]}
    )
    base = {"source": "shop", "type": "order.created.v1"}
    published = {
        "plain": {**base, "id": "plain", "data": {"a": [1, 2]}},
        "typed": {**base, "id": "typed", "yes": True, "no": False, "count": 42},
        "subject": {**base, "id": "subject", "subject": SUBJECT},
        "nanos": {**base, "id": "nanos", "time": "2020-04-02T21:37:07.123456789Z"},
        "millis": {**base, "id": "millis", "time": "2020-04-02T21:37:07.491Z"},
        "leap": {**base, "id": "leap", "time": "2016-12-31T23:59:60Z"},
    }
    for event in published.values():
        response = system.publish_structured(event)
        assert response.status_code == 204, response.text
    binary = requests.post(
        f"{system.proxy_url}/publish",
        headers={
            "ce-specversion": "1.0",
            "ce-id": "binary",
            "ce-source": "shop",
            "ce-type": "order.created.v1",
            "ce-subject": "caf%C3%A9",
            "ce-time": "2020-04-02T21:37:07.000000001+02:00",
        },
        data=b"\x00\xffraw",
        timeout=10,
    )
    assert binary.status_code == 204, binary.text

    got = _deliveries(system, sink_server, {*published, "binary"})
    plain = got["plain"].headers
    assert "ce-time" not in plain  # nothing is added …
    assert "content-type" not in plain  # … not even a datacontenttype
    assert got["plain"].body == b'{"a":[1,2]}'
    typed = got["typed"].headers
    assert (typed["ce-yes"], typed["ce-no"], typed["ce-count"]) == ("true", "false", "42")
    assert got["subject"].headers["ce-subject"] == SUBJECT_ON_THE_WIRE
    for name in ("nanos", "millis", "leap"):
        assert got[name].headers["ce-time"] == published[name]["time"]
    assert got["binary"].headers["ce-subject"] == "caf%C3%A9"
    assert got["binary"].headers["ce-time"] == "2020-04-02T21:37:07.000000001+02:00"
    assert got["binary"].body == b"\x00\xffraw"

    # What an SDK receiver makes of it: percent-encoding undone, the subject as published.
    received = from_binary(HTTPMessage(got["subject"].headers, got["subject"].body), JSONFormat())
    assert received.get_subject() == SUBJECT
    assert received.get_extension("originaltype") == "order.created.v1"
