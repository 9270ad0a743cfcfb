"""CloudEvents in and out: the three HTTP modes, validation, and the stored form (pure).

The sole importer of the cloudevents SDK. The SDK fills in a missing ``id`` or ``time`` instead of
refusing the event, accepts any ``source`` and reports a bad ``time`` as a bare ``ValueError``, so
we check the raw input ourselves first, with messages that name the attribute and say what was
expected, and only then build the SDK's ``CloudEvent``, whose JSON format gives the stored form.

What is stored in JetStream is the event in the structured JSON format: ``data`` as a JSON value
when it arrived as one (structured mode, legacy events), ``data_base64`` when it arrived as bytes
(binary mode), so a sink later receives the very bytes the publisher sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from cloudevents.core.bindings.http import to_binary
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from eventing.errors import InvalidBatch, InvalidEvent, UnsupportedMode

#: The SDK's event class is our event model.
Event = CloudEvent
T = TypeVar("T")

STRUCTURED: Final = "application/cloudevents+json"
BATCH: Final = "application/cloudevents-batch+json"
JSON: Final = "application/json"

_REQUIRED: Final = ("specversion", "id", "source", "type")
_CONTEXT: Final = frozenset({*_REQUIRED, "datacontenttype", "dataschema", "subject", "time"})
_EXTENSION_NAME = re.compile(r"^[a-z0-9]+$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+(\s*;.*)?$")
_JSON_MEDIA_TYPE = re.compile(r"^(application|text)/([\w.-]+\+)?json(\s*;.*)?$", re.IGNORECASE)
_INT32 = range(-(2**31), 2**31)
_FORMAT = JSONFormat()

#: Request headers that carry trace context, and the extension each one becomes (§2.8).
TRACE_HEADERS: Final = {
    "traceparent": "traceparent",
    "tracestate": "tracestate",
    "x-b3-traceid": "b3traceid",
    "x-b3-parentspanid": "b3parentspanid",
    "x-b3-spanid": "b3spanid",
    "x-b3-sampled": "b3sampled",
    "x-b3-flags": "b3flags",
}


def media_type(content_type: str | None) -> str:
    """The bare, lower-cased media type of a Content-Type value (parameters dropped)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """Whether a datacontenttype declares JSON content (``application/json``, ``…+json``)."""
    return bool(content_type and _JSON_MEDIA_TYPE.match(content_type))


def parse_http(
    headers: Mapping[str, str], body: bytes, prepare: Callable[[Event], T]
) -> tuple[str, list[T]]:
    """Read the CloudEvent(s) of a ``POST /publish`` request.

    Parameters:
        headers: request headers; names are matched case-insensitively.
        body: the raw request body.
        prepare: applied to each valid event (e.g. to find its subject); an
            :class:`InvalidEvent` it raises counts as that event's error.

    Returns:
        The mode (``"binary"``, ``"structured"`` or ``"batch"``) and what ``prepare`` made of
        each event.

    Raises:
        UnsupportedMode: neither a CloudEvents content type nor a ``ce-specversion`` header.
        InvalidBatch: some events of a batch are invalid (each error keyed by index).
        InvalidEvent: the single event is invalid.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    mode = media_type(lowered.get("content-type"))
    if mode == BATCH:
        return "batch", parse_batch(body, prepare)
    if mode == STRUCTURED:
        return "structured", [prepare(parse_structured(body))]
    if mode.startswith("application/cloudevents"):
        raise UnsupportedMode(
            f"unsupported CloudEvents format {_show(mode)}: expected {STRUCTURED} or {BATCH}",
            attribute="content-type",
        )
    if "ce-specversion" in lowered:
        return "binary", [prepare(parse_binary(lowered, body))]
    raise UnsupportedMode(
        "the request is no CloudEvent: expected binary mode (ce-specversion, ce-id, ce-source and"
        f" ce-type headers), or Content-Type {STRUCTURED} or {BATCH}",
        attribute="content-type",
    )


def parse_binary(headers: Mapping[str, str], body: bytes) -> Event:
    """A binary-mode event: attributes from ``ce-*`` headers (lower-case names), data = body."""
    attributes: dict[str, Any] = {}
    for name, value in headers.items():
        if name.startswith("ce-"):
            attribute = name[3:]
            try:
                attributes[attribute] = unquote(value, errors="strict")
            except UnicodeDecodeError:
                raise InvalidEvent(
                    f"header {name}: percent-encoded bytes must be UTF-8", attribute=attribute
                ) from None
    if "content-type" in headers:
        attributes["datacontenttype"] = headers["content-type"]
    return build(attributes, body if body else None)


def parse_structured(body: bytes) -> Event:
    """A structured-mode event: one JSON object in the body."""
    document = _load_json(body)
    if not isinstance(document, dict):
        raise InvalidEvent(
            f"the body must be a JSON object (a CloudEvent), got a JSON {_json_kind(document)}",
            attribute="body",
        )
    return from_json_object(document)


def parse_batch(body: bytes, prepare: Callable[[Event], T]) -> list[T]:
    """A batch: a non-empty JSON array of structured events, all valid or none accepted."""
    document = _load_json(body)
    if not isinstance(document, list):
        raise InvalidEvent(
            f"a batch must be a JSON array of CloudEvents, got a JSON {_json_kind(document)}",
            attribute="body",
        )
    if not document:
        raise InvalidEvent("a batch must hold at least one CloudEvent", attribute="body")
    events: list[T] = []
    errors: dict[int, InvalidEvent] = {}
    for index, item in enumerate(document):
        try:
            if not isinstance(item, dict):
                raise InvalidEvent(
                    f"expected a JSON object (a CloudEvent), got a JSON {_json_kind(item)}",
                    attribute="body",
                )
            events.append(prepare(from_json_object(item)))
        except InvalidEvent as exc:
            errors[index] = exc
    if errors:
        raise InvalidBatch(errors)
    return events


def from_json_object(document: Mapping[str, Any]) -> Event:
    """A structured JSON object to an event (``data`` or ``data_base64``, not both)."""
    attributes = {
        k: v for k, v in document.items() if k not in ("data", "data_base64") and v is not None
    }
    if document.get("data") is not None and document.get("data_base64") is not None:
        raise InvalidEvent(
            "an event carries either data or data_base64, not both", attribute="data"
        )
    data: Any = document.get("data")
    if document.get("data_base64") is not None:
        encoded = document["data_base64"]
        if not isinstance(encoded, str):
            raise InvalidEvent("data_base64 must be a base64 string", attribute="data_base64")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEvent("data_base64 is not valid base64", attribute="data_base64") from None
    elif data is not None and not isinstance(data, str):
        content_type = attributes.get("datacontenttype")
        if content_type is not None and isinstance(content_type, str) and not is_json(content_type):
            raise InvalidEvent(
                "data must be a string (or data_base64) when datacontenttype is"
                f" {_show(content_type)}; JSON values need a JSON datacontenttype",
                attribute="data",
            )
    return build(attributes, data)


def build(attributes: dict[str, Any], data: Any) -> Event:
    """Validate raw attributes and make the event.

    Parameters:
        attributes: attribute name → value as received; JSON booleans and integers allowed for
            extensions, strings everywhere else.
        data: ``bytes`` (binary), a JSON value, or ``None``.

    Raises:
        InvalidEvent: naming the first invalid attribute and what was expected.
    """
    for name in _REQUIRED:
        value = attributes.get(name)
        if not isinstance(value, str) or not value:
            got = "nothing" if value is None else _show(value)
            raise InvalidEvent(f"{name}: required, a non-empty string; got {got}", attribute=name)
    if attributes["specversion"] != "1.0":
        raise InvalidEvent(
            f"specversion: expected '1.0', got {_show(attributes['specversion'])}",
            attribute="specversion",
        )
    _check_uri_reference("source", attributes["source"])
    values: dict[str, Any] = {}
    for name, value in attributes.items():
        if name in _CONTEXT:
            values[name] = _context_value(name, value)
        else:
            values[name] = _extension_value(name, value)
    try:
        return CloudEvent(values, data)
    except BaseCloudEventException as exc:  # our checks are stricter; this is a safety net
        raise InvalidEvent(f"not a valid CloudEvent: {exc}") from None


def with_extensions(event: Event, extensions: Mapping[str, str], *, replace: bool) -> Event:
    """A copy of ``event`` with extra extension attributes.

    ``replace=False`` keeps values the event already has (trace context set by the publisher
    wins over request headers).
    """
    attributes = dict(event.get_attributes())
    for name, value in extensions.items():
        if replace or name not in attributes:
            attributes[name] = value
    return CloudEvent(attributes, event.get_data())


def trace_extensions(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Trace-context request headers as CloudEvent extensions (traceparent, B3)."""
    found: dict[str, str] = {}
    for name, value in headers:
        extension = TRACE_HEADERS.get(name.lower())
        if extension and value:
            found[extension] = value
    return found


def to_stored(event: Event) -> bytes:
    """The event in the structured JSON format, as stored in JetStream."""
    return _FORMAT.write(event)


def from_stored(payload: bytes) -> Event:
    """An event read back from JetStream (written by :func:`to_stored`)."""
    event = _FORMAT.read(CloudEvent, payload)
    assert isinstance(event, CloudEvent)
    return event


#: Trace extensions and the HTTP header each one goes back to when delivered (§2.8).
_TRACE_OUT: Final = {
    "traceparent": "traceparent",
    "tracestate": "tracestate",
    "b3traceid": "X-B3-TraceId",
    "b3parentspanid": "X-B3-ParentSpanId",
    "b3spanid": "X-B3-SpanId",
    "b3sampled": "X-B3-Sampled",
    "b3flags": "X-B3-Flags",
}


def to_binary_request(stored: bytes, event_type: str) -> tuple[dict[str, str], bytes]:
    """Headers and body that deliver a stored event in binary mode, typed ``event_type``.

    Trace extensions become trace headers again; everything else is a ``ce-*`` header. The body
    is the data as the publisher sent it: binary-mode bytes unchanged, a JSON value serialised
    compactly (a JSON string keeps its quotes, as JSON requires).
    """
    event = from_stored(stored)
    attributes = dict(event.get_attributes())
    attributes["type"] = event_type
    trace = {
        _TRACE_OUT[name]: str(attributes.pop(name))
        for name in list(attributes)
        if name in _TRACE_OUT
    }
    data = event.get_data()
    content_type = attributes.get("datacontenttype")
    body: bytes
    if data is None:
        body = b""
    elif isinstance(data, bytes):
        body = data
    elif content_type is None or is_json(content_type):
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        attributes.setdefault("datacontenttype", JSON)
    else:
        body = str(data).encode()
    message = to_binary(CloudEvent(attributes, body), _FORMAT)
    return {**message.headers, **trace}, message.body


def _load_json(body: bytes) -> Any:
    if not body:
        raise InvalidEvent("the body is empty; expected JSON", attribute="body")
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"the body is not UTF-8 (byte {exc.start})", attribute="body") from None
    except RecursionError:
        raise InvalidEvent("the body is JSON nested too deeply", attribute="body") from None
    except ValueError as exc:
        raise InvalidEvent(f"the body is not valid JSON: {exc}", attribute="body") from None


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message, cut short so a hostile body cannot bloat the answer."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _json_kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, int | float) else "null"
    )


def _check_uri_reference(name: str, value: str) -> None:
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidEvent(
            f"{name}: must be a URI-reference (RFC 3986) without spaces or control characters,"
            f" got {_show(value)}",
            attribute=name,
        )
    try:
        urlsplit(value)
    except ValueError as exc:
        raise InvalidEvent(
            f"{name}: must be a URI-reference (RFC 3986): {exc}", attribute=name
        ) from None


def _context_value(name: str, value: Any) -> Any:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(
            f"{name}: expected a non-empty string, got {_show(value)}", attribute=name
        )
    if name == "time":
        return parse_time(value)
    if name == "datacontenttype" and not _MEDIA_TYPE.match(value):
        raise InvalidEvent(
            f"datacontenttype: expected a media type such as application/json, got {_show(value)}",
            attribute=name,
        )
    if name == "dataschema":
        _check_uri_reference(name, value)
        if not urlsplit(value).scheme:
            raise InvalidEvent(
                f"dataschema: expected an absolute URI, got {_show(value)}", attribute=name
            )
    return value


def _extension_value(name: str, value: Any) -> Any:
    if not _EXTENSION_NAME.match(name) or name == "data":
        raise InvalidEvent(
            f"extension {_show(name)}: names are lower-case letters and digits only, and 'data'"
            " is reserved",
            attribute=name,
        )
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if value not in _INT32:
            raise InvalidEvent(
                f"extension {name!r}: integers must fit in 32 bits, got {value}", attribute=name
            )
        return value
    raise InvalidEvent(
        f"extension {name!r}: expected a string, integer or boolean, got {_show(value)}",
        attribute=name,
    )


def parse_time(value: str) -> datetime:
    """An RFC 3339 timestamp (``2020-04-02T21:37:00Z``); nanoseconds are cut to microseconds.

    Raises:
        InvalidEvent: not RFC 3339.
    """
    if _RFC3339.match(value):
        try:
            return datetime.fromisoformat(value.upper())
        except ValueError:
            pass
    raise InvalidEvent(
        f"time: expected an RFC 3339 timestamp such as 2020-04-02T21:37:00Z, got {_show(value)}",
        attribute="time",
    )
