"""CloudEvents parsing: the three HTTP modes, validation messages, and the stored form."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from eventing.errors import InvalidBatch, InvalidEvent, UnsupportedMode
from eventing.events import binding, cloudevent

STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}
BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "A234-1234-1234",
    "ce-source": "/mycontext",
    "ce-type": "order.created.v1",
    "Content-Type": "application/json",
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EVENT = {"specversion": "1.0", "id": "1", "source": "/mycontext", "type": "order.created.v1"}


def _same(event: cloudevent.Event) -> cloudevent.Event:
    return event


def structured(**changes: Any) -> bytes:
    document = {**EVENT, **changes}
    return json.dumps({k: v for k, v in document.items() if v is not ...}).encode()


def test_binary_mode_keeps_the_body_bytes() -> None:
    body = b'{ "a" : 1 }'
    mode, [event] = binding.parse_http({**BINARY, "ce-myext": "caf%C3%A9"}, body, _same)
    assert mode == "binary"
    assert event.get_data() == body
    assert event.get_datacontenttype() == "application/json"
    assert event.get_extension("myext") == "café"
    stored = json.loads(cloudevent.to_stored(event))
    assert base64.b64decode(stored["data_base64"]) == body


def _binary(body: bytes, content_type: str = "application/json") -> cloudevent.Event:
    _, [event] = binding.parse_http({**BINARY, "Content-Type": content_type}, body, _same)
    return event


def test_a_compact_json_body_is_stored_as_data_and_delivered_as_its_bytes() -> None:
    """Stored as data_base64 it took a third more bytes in JetStream than the body itself."""
    body = '{"order":"café","n":[1,-0.5,true,null],"s":"a\\"b"}'.encode()
    stored_bytes = cloudevent.to_stored(_binary(body))
    stored = json.loads(stored_bytes)
    assert "data_base64" not in stored
    assert stored["data"] == json.loads(body)
    assert body in stored_bytes  # the very bytes, not a re-encoding of them
    headers, delivered = cloudevent.to_binary_request(stored_bytes, "order.created.v1")
    assert delivered == body
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{ "a" : 1 }', "application/json"),  # delivered compactly it would change
        (b'{"a":1}\n', "application/json"),
        (b'{"a":1e3}', "application/json"),
        (b'{"a":1,"a":2}', "application/json"),
        (b'"\\ud800"', "application/json"),  # a lone surrogate: no UTF-8 holds it
        (b"null", "application/json"),  # "data": null would be no data
        (b"NaN", "application/json"),
        (b"\xef\xbb\xbf{}", "application/json"),  # a UTF-8 byte order mark
        (b"\xff{}", "application/json"),
        (b'{"a":1}', "text/plain"),  # not declared JSON: delivered as bytes either way
    ],
)
def test_other_bodies_are_stored_as_base64_and_delivered_as_their_bytes(
    body: bytes, content_type: str
) -> None:
    stored_bytes = cloudevent.to_stored(_binary(body, content_type))
    stored = json.loads(stored_bytes)
    assert "data" not in stored
    assert base64.b64decode(stored["data_base64"]) == body
    assert cloudevent.to_binary_request(stored_bytes, "order.created.v1")[1] == body


def test_a_json_body_stored_as_base64_by_the_previous_version_is_delivered_as_its_bytes() -> None:
    body = b'{"order":"x"}'
    old = json.dumps(
        {**EVENT, "datacontenttype": "application/json"}
        | {"data_base64": base64.b64encode(body).decode()}
    ).encode()
    assert cloudevent.to_binary_request(old, "order.created.v1")[1] == body


def test_structured_mode_keeps_json_data_as_a_value() -> None:
    mode, [event] = binding.parse_http(
        {"Content-Type": "application/cloudevents+json; charset=utf-8"},
        structured(
            data={"a": [1, 2]}, datacontenttype="application/json", time="2020-04-02T21:37:00Z"
        ),
        _same,
    )
    assert mode == "structured"
    stored = json.loads(cloudevent.to_stored(event))
    assert stored["data"] == {"a": [1, 2]}
    assert stored["time"] == "2020-04-02T21:37:00Z"
    assert cloudevent.from_stored(cloudevent.to_stored(event)).get_data() == {"a": [1, 2]}


def test_structured_data_base64_becomes_bytes() -> None:
    _, [event] = binding.parse_http(
        STRUCTURED, structured(data_base64=base64.b64encode(b"\x00\x01").decode()), _same
    )
    assert event.get_data() == b"\x00\x01"


def test_batch_mode_reads_every_event() -> None:
    body = json.dumps([{**EVENT, "id": str(i)} for i in range(3)]).encode()
    mode, events = binding.parse_http(BATCH, body, _same)
    assert mode == "batch"
    assert [e.get_id() for e in events] == ["0", "1", "2"]


def test_batch_reports_every_invalid_event_by_index() -> None:
    body = json.dumps([EVENT, {**EVENT, "id": ""}, 7, {**EVENT, "specversion": "0.3"}]).encode()
    with pytest.raises(InvalidBatch) as caught:
        binding.parse_http(BATCH, body, _same)
    assert sorted(caught.value.errors) == [1, 2, 3]
    assert caught.value.errors[1].attribute == "id"
    assert caught.value.errors[3].attribute == "specversion"


@pytest.mark.parametrize("body", [b"[]", b"{}", b"", b"[1"])
def test_batch_body_must_be_a_non_empty_array(body: bytes) -> None:
    with pytest.raises(InvalidEvent):
        binding.parse_http(BATCH, body, _same)


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "application/json"}, {"content-type": "text/plain", "ce-id": "1"}],
)
def test_no_cloudevent_is_unsupported_media_type(headers: dict[str, str]) -> None:
    with pytest.raises(UnsupportedMode) as caught:
        binding.parse_http(headers, b'{"a": 1}', _same)
    assert caught.value.status == 415


def test_other_cloudevents_formats_are_unsupported() -> None:
    with pytest.raises(UnsupportedMode, match="unsupported CloudEvents format"):
        binding.parse_http({"content-type": "application/cloudevents+xml"}, b"<e/>", _same)


@pytest.mark.parametrize(
    ("body", "attribute", "expected"),
    [
        (structured(id=...), "id", "required"),
        (structured(source=""), "source", "required"),
        (structured(type=3), "type", "non-empty string"),
        (structured(specversion="0.3"), "specversion", "'1.0'"),
        (structured(source="has space"), "source", "URI-reference"),
        (structured(time="yesterday"), "time", "RFC 3339"),
        (structured(time="2020-13-02T21:37:00Z"), "time", "RFC 3339"),
        (structured(datacontenttype="json"), "datacontenttype", "media type"),
        (structured(dataschema="relative/path"), "dataschema", "absolute URI"),
        (structured(subject=""), "subject", "non-empty"),
        (structured(Bad_Name="x"), "Bad_Name", "lower-case"),
        (structured(myext={"nested": 1}), "myext", "string, integer or boolean"),
        (structured(myext=2**40), "myext", "32 bits"),
        (structured(data="x", data_base64="eA=="), "data", "not both"),
        (structured(data_base64="***"), "data_base64", "base64"),
        (structured(data={"a": 1}, datacontenttype="text/plain"), "data", "must be a string"),
        (b"[1]", "body", "JSON object"),
        (b"\xff\xfe", "body", "UTF-8"),
        (b"{" * 100_000, "body", "JSON"),
        (b'{"id": 1' + b"0" * 5000 + b"}", "body", "not valid JSON"),
    ],
)
def test_invalid_structured_events_name_the_attribute(
    body: bytes, attribute: str, expected: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        binding.parse_http(STRUCTURED, body, _same)
    assert caught.value.attribute == attribute
    assert expected in str(caught.value)


def test_binary_mode_refuses_non_utf8_percent_encoding() -> None:
    with pytest.raises(InvalidEvent) as caught:
        binding.parse_http({**BINARY, "ce-myext": "%FF"}, b"", _same)
    assert caught.value.attribute == "ce-myext"  # the header is named


def test_binary_mode_refuses_the_reserved_data_extension() -> None:
    with pytest.raises(InvalidEvent):
        binding.parse_http({**BINARY, "ce-data": "x"}, b"", _same)


def test_error_messages_are_cut_short() -> None:
    with pytest.raises(InvalidEvent) as caught:
        binding.parse_http(STRUCTURED, structured(myext=["x" * 10_000]), _same)
    assert len(str(caught.value)) < 200


def test_trace_headers_become_extensions() -> None:
    extensions = binding.trace_extensions(
        [
            ("traceparent", TRACEPARENT),
            ("X-B3-TraceId", "t1"),
            ("X-B3-Sampled", "1"),
            ("Accept", "*/*"),
        ]
    )
    assert extensions == {"traceparent": TRACEPARENT, "b3traceid": "t1", "b3sampled": "1"}


def test_extensions_set_by_the_publisher_win_unless_replaced() -> None:
    mine, header = TRACEPARENT, TRACEPARENT.replace("-01", "-00")
    _, [event] = binding.parse_http(STRUCTURED, structured(traceparent=mine), _same)
    kept = cloudevent.with_extensions(event, replacing={}, adding={"traceparent": header})
    replaced = cloudevent.with_extensions(event, replacing={"traceparent": header}, adding={})
    assert kept.get_extension("traceparent") == mine
    assert replaced.get_extension("traceparent") == header


def test_errors_of_prepare_count_per_batch_index() -> None:
    def refuse_second(event: cloudevent.Event) -> str:
        if event.get_id() == "2":
            raise InvalidEvent("no", attribute="type")
        return event.get_id()

    body = json.dumps([{**EVENT, "id": "1"}, {**EVENT, "id": "2"}, {**EVENT, "id": ""}]).encode()
    with pytest.raises(InvalidBatch) as caught:
        binding.parse_http(BATCH, body, refuse_second)
    assert sorted(caught.value.errors) == [1, 2]


def test_extensions_are_stored_after_the_events_own_replacing_before_adding() -> None:
    """The stored form workers read is made in one step; its attribute order is the one the
    proxy always stored: the event's own, then ``originaltype``, then trace extensions."""
    _, [event] = binding.parse_http(STRUCTURED, structured(tracestate="mine=1", data=1), _same)
    stored = cloudevent.with_extensions(
        event,
        replacing={"originaltype": event.get_type()},
        adding={"tracestate": "header=2", "b3sampled": "1"},
    )
    assert list(json.loads(cloudevent.to_stored(stored))) == [
        *event.attributes,
        "originaltype",
        "b3sampled",
        "data",
    ]
    assert stored.get_extension("tracestate") == "mine=1"
