"""Property tests: every parser either accepts its input or refuses it with our own error.

Whatever a publisher or a manifest author sends, the only failures allowed are the documented
ones (InvalidEvent, InvalidLegacyEvent, InvalidSubscription): never a KeyError, TypeError,
RecursionError or any other crash that would turn into a 500 or stop the manager.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventing.errors import InvalidEvent, InvalidLegacyEvent, InvalidSubscription
from eventing.events import binding, cloudevent, legacy
from eventing.sources.directory import parse_documents
from eventing.subscriptions.model import from_manifest
from tests.eventing.test_subscription import DEFAULTS, PREFIX

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
attribute_names = st.sampled_from(
    [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "datacontenttype",
        "dataschema",
        "subject",
        "data",
        "data_base64",
        "ext",
        "Bad-Name",
    ]
)
events = st.dictionaries(attribute_names | st.text(max_size=8), json_values, max_size=10)
content_types = st.sampled_from(
    [
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "application/json",
        "text/plain",
        "application/cloudevents+xml",
        "",
    ]
)


def _identity(event: cloudevent.Event) -> cloudevent.Event:
    return event


@settings(max_examples=300, deadline=None)
@given(
    content_type=content_types,
    body=st.one_of(
        st.binary(max_size=300),
        events.map(lambda e: json.dumps(e).encode()),
        st.lists(events, max_size=3).map(lambda b: json.dumps(b).encode()),
    ),
)
def test_structured_and_batch_bodies(content_type: str, body: bytes) -> None:
    with contextlib.suppress(InvalidEvent):
        binding.parse_http({"content-type": content_type}, body, _identity)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "ce-specversion",
                "ce-id",
                "ce-source",
                "ce-type",
                "ce-time",
                "ce-x",
                "ce-data",
                "content-type",
            ]
        ),
        st.text(max_size=20),
        max_size=8,
    ),
    body=st.binary(max_size=100),
)
def test_binary_headers(headers: dict[str, str], body: bytes) -> None:
    try:
        _, [event] = binding.parse_http({"ce-specversion": "1.0", **headers}, body, _identity)
    except InvalidEvent:
        return
    stored = cloudevent.to_stored(event)
    headers_out, body_out = cloudevent.to_binary_request(stored, "order.created.v1")
    assert headers_out["ce-type"] == "order.created.v1"
    assert body_out == (body or b"")


@settings(max_examples=300, deadline=None)
@given(
    document=st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(
                ["event-type", "event-type-version", "event-time", "event-id", "data", "x"]
            ),
            json_values,
            max_size=6,
        ).map(lambda d: json.dumps(d).encode()),
    ),
    application=st.text(min_size=1, max_size=12),
)
def test_legacy_bodies(document: bytes, application: str) -> None:
    with contextlib.suppress(InvalidLegacyEvent):
        legacy.parse(application, document, PREFIX)


spec_values: Any = st.dictionaries(
    st.sampled_from(["sink", "source", "types", "typeMatching", "config", "delivery", "id"]),
    json_values,
    max_size=7,
)


@settings(max_examples=300, deadline=None)
@given(
    spec=spec_values,
    metadata=st.dictionaries(st.sampled_from(["name", "namespace"]), json_values, max_size=2),
)
def test_manifests(spec: dict[str, Any], metadata: dict[str, Any]) -> None:
    document = {
        "apiVersion": "eventing.kyma-project.io/v1alpha2",
        "kind": "Subscription",
        "metadata": metadata,
        "spec": spec,
    }
    with contextlib.suppress(InvalidSubscription):
        from_manifest(document, prefix=PREFIX, defaults=DEFAULTS, default_max_in_flight=10)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_yaml_files(text: str) -> None:
    for document in parse_documents(text, "fuzz.yaml"):
        if isinstance(document, dict):
            with contextlib.suppress(InvalidSubscription):
                from_manifest(document, prefix=PREFIX, defaults=DEFAULTS, default_max_in_flight=10)
