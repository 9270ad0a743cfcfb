"""Strict matching, end to end: a subscription gets only the events of its own source and types.

Subjects carry cleaned sources and types (``kyma.<source without dots or slashes>.<type>``), so
different sources and types share a subject; the manager drops what the subject cannot tell
apart before it becomes a job (:mod:`eventing.subscriptions.matching`).
"""

from __future__ import annotations

import re

import pytest
import requests

from testing.servers import wait_until
from testing.sink import SinkServer
from testing.system import System

pytestmark = pytest.mark.integration

TIME = "2020-04-02T21:37:00Z"
DASHED = "8945ec08-256b-11eb-9928-acde48001122"  # legacy event ids are UUIDs
LEGACY_OWN = "8945ec08-256b-11eb-9928-acde48001123"


def _filtered(system: System) -> float:
    text = requests.get(f"{system.manager_url}/metrics", timeout=5).text
    return sum(
        float(v) for v in re.findall(r"eventing_delivery_filtered_total\{[^}]*\} (\S+)", text)
    )


def test_a_subscription_gets_no_event_of_a_source_or_type_whose_subject_collides(
    system: System, sink_server: SinkServer
) -> None:
    system.subscribe(
        "orders",
        {"sink": sink_server.url, "source": "myapp", "types": ["order.created.v1"]},
    )
    colliding = {
        "dotted-source": ("my.app", "order.created.v1"),
        "slashed-source": ("my/app", "order.created.v1"),
        "prefixed-type-of-another-source": ("attacker", "sap.kyma.custom.myapp.order.created.v1"),
        "starred-type": ("myapp", "order.cre*ated.v1"),
    }
    for event_id, (source, event_type) in colliding.items():
        response = system.publish_binary(event_id, source, event_type)
        assert response.status_code == 204, response.text
    legacy = {"event-type": "order.created", "event-type-version": "v1", "event-time": TIME}
    dashed = system.publish_legacy("my-app", {**legacy, "event-id": DASHED, "data": "x"})
    assert dashed.status_code == 200, dashed.text
    own = system.publish_legacy("myapp", {**legacy, "event-id": LEGACY_OWN, "data": "x"})
    assert own.status_code == 200, own.text
    assert system.publish_binary("own", "myapp", "order.created.v1").status_code == 204

    sink = sink_server.sink
    strangers = {*colliding, DASHED}
    wait_until(
        lambda: (
            {"own", LEGACY_OWN} <= set(sink.ids())
            and (_filtered(system) == len(strangers) or bool(strangers & set(sink.ids())))
        ),
        30,
        f"the own events delivered and the others filtered\n{system.logs()}",
    )
    assert sorted(sink.ids()) == sorted(["own", LEGACY_OWN])
    assert _filtered(system) == len(strangers)
