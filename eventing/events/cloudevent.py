"""The CloudEvent: our model of one, its validation, and its JSON forms (pure).

What a sink receives is what the publisher sent: every attribute keeps the value and the text it
was published with, and nothing is added but the documented ``originaltype`` and the trace
extensions taken from request headers. That is why the event model is ours and not the
cloudevents SDK's: the SDK's event fills in a missing ``id`` and ``time``, holds ``time`` as a
datetime (nanoseconds cut to microseconds, ``.491Z`` written back as ``.491000Z``, a leap second
refused), renders a boolean extension as Python's ``True``, and its JSON writer, whose JSON check
is case-sensitive, stores ``Application/JSON`` data as a Python repr. We check the raw input
ourselves, with messages that name the attribute (or header) and say what was expected.

What is stored in JetStream is the event in the structured JSON format: ``data`` as a JSON value
when it arrived as one (structured mode, legacy events, and a binary-mode JSON body that a worker
delivers as the same bytes), ``data_base64`` when it arrived as other bytes (binary mode), so a
sink later receives the very bytes the publisher sent. The proxy makes it
once per event (:func:`to_stored`, after one :func:`with_extensions`); a worker reads it back
once into the binary-mode request a sink receives (:func:`to_binary_request`).

Why one module of about 450 lines: the model, the rules every attribute is checked by, and the
JSON formats (structured, batch, stored) are one noun, the event as JSON, and each JSON reader
ends in those rules. The HTTP binding of requests (which mode a request is in, ``ce-*`` headers)
is :mod:`eventing.events.binding`; trace context is :mod:`eventing.events.tracecontext`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlsplit

from eventing.errors import InvalidBatch, InvalidEvent
from eventing.events import tracecontext

#: An attribute value: a string, or a JSON boolean or integer (extensions only).
Value = str | bool | int
T = TypeVar("T")

STRUCTURED: Final = "application/cloudevents+json"
BATCH: Final = "application/cloudevents-batch+json"
JSON: Final = "application/json"

_REQUIRED: Final = ("specversion", "id", "source", "type")
_CONTEXT: Final = frozenset({*_REQUIRED, "datacontenttype", "dataschema", "subject", "time"})
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))"
)
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
#: RFC 9110 media type; parameters in printable ASCII, as it is sent as Content-Type unencoded.
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}([ \t]*;[\x20-\x7e\t]*)?")
_JSON_MEDIA_TYPE = re.compile(r"(application|text)/([\w.-]+\+)?json(\s*;.*)?", re.IGNORECASE)
_INT32 = range(-(2**31), 2**31)
#: A JSON string escape of a UTF-16 surrogate: only then can a parsed document hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")

#: What the HTTP binding (3.1.3.2) lets stand in a ``ce-*`` value: printable ASCII but space,
#: ``"`` and ``%``. Everything else is percent-encoded, non-ASCII as its UTF-8 bytes.
_CE_HEADER_SAFE: Final = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"%')


@dataclass(frozen=True, slots=True)
class Event:
    """A valid CloudEvent, every attribute as it was published.

    ``attributes`` maps names to strings (``time`` too: the published text), or JSON booleans
    and integers for extensions; ``data`` is ``bytes`` (binary mode), a JSON value, or None.
    The getters are named as the cloudevents SDK names them.
    """

    attributes: Mapping[str, Value]
    data: Any = field(default=None)

    def get_id(self) -> str:
        return str(self.attributes["id"])

    def get_source(self) -> str:
        return str(self.attributes["source"])

    def get_type(self) -> str:
        return str(self.attributes["type"])

    def get_specversion(self) -> str:
        return str(self.attributes["specversion"])

    def get_datacontenttype(self) -> str | None:
        value = self.attributes.get("datacontenttype")
        return None if value is None else str(value)

    def get_time(self) -> str | None:
        value = self.attributes.get("time")
        return None if value is None else str(value)

    def get_extension(self, name: str) -> Value | None:
        return self.attributes.get(name)

    def get_attributes(self) -> dict[str, Value]:
        return dict(self.attributes)

    def get_data(self) -> Any:
        return self.data


def media_type(content_type: str | None) -> str:
    """The bare, lower-cased media type of a Content-Type value (parameters dropped)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """Whether a datacontenttype declares JSON content (``application/json``, ``…+json``)."""
    return bool(content_type and _JSON_MEDIA_TYPE.fullmatch(content_type))


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
                f" {show(content_type)}; JSON values need a JSON datacontenttype",
                attribute="data",
            )
    return build(attributes, data)


def build(attributes: Mapping[str, Any], data: Any) -> Event:
    """Validate raw attributes and make the event, every value kept as it came.

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
            got = "nothing" if value is None else show(value)
            raise InvalidEvent(f"{name}: required, a non-empty string; got {got}", attribute=name)
    if attributes["specversion"] != "1.0":
        raise InvalidEvent(
            f"specversion: expected '1.0', got {show(attributes['specversion'])}",
            attribute="specversion",
        )
    _check_uri_reference("source", attributes["source"])
    for name, value in attributes.items():
        if name in _CONTEXT:
            _check_context_value(name, value)
        else:
            _check_extension_value(name, value)
    return Event(dict(attributes), data)


def with_extensions(
    event: Event, *, replacing: Mapping[str, str], adding: Mapping[str, str]
) -> Event:
    """A copy of ``event`` with extra extension attributes, made in one step.

    ``replacing`` overwrites what the event has (``originaltype``); ``adding`` keeps values the
    event already has (trace context set by the publisher wins over request headers). New
    attributes follow the event's own, ``replacing`` before ``adding``, as they are stored.
    """
    attributes = {**event.attributes, **replacing}
    for name, value in adding.items():
        attributes.setdefault(name, value)
    return Event(attributes, event.data)


def to_stored(event: Event) -> bytes:
    """The event in the structured JSON format, as stored in JetStream.

    Binary-mode bytes are stored as ``data_base64``, a third larger, unless they are a JSON
    value that a worker delivers as the very same bytes (:func:`json_body`; a compact JSON body,
    the usual case): then as ``data``, which the readers of the stored form read as structured
    mode's. Either way the sink receives the bytes that were published.
    """
    document: dict[str, Any] = event.get_attributes()
    data = event.data
    if isinstance(data, bytes):
        value = _verbatim_json(data) if is_json(event.get_datacontenttype()) else _NO_VALUE
        if value is _NO_VALUE:
            document["data_base64"] = base64.b64encode(data).decode("ascii")
        else:
            document["data"] = value
    elif data is not None:
        document["data"] = data
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def json_body(value: Any) -> bytes:
    """A JSON value as the body a sink receives: compact, UTF-8, as :func:`to_stored` relies on."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


#: :func:`_verbatim_json` of bytes that cannot be stored as a JSON value.
_NO_VALUE: Final[Any] = object()


def _verbatim_json(data: bytes) -> Any:
    """The JSON value ``data`` holds if :func:`json_body` gives back exactly ``data``, else
    :data:`_NO_VALUE`. ``null`` is kept as bytes (a stored ``"data": null`` is no data), and
    so are ``NaN`` and infinities (not JSON, which other readers of the stream refuse)."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
        if value is not None and json_body(value) == data:
            return value
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        pass
    return _NO_VALUE


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def from_stored(payload: bytes) -> Event:
    """An event read back from JetStream (written by :func:`to_stored`).

    The proxy validated it on the way in, but anyone with NATS access may have written the
    stream, so what delivery relies on is checked again where it costs little: the required
    attributes, and strict base64 (lenient decoding turns ``!!!!abcd`` into other bytes).

    Raises:
        InvalidEvent: a required attribute is missing or empty, or ``data_base64`` is no base64.
        ValueError: the payload is no JSON object.
    """
    document = json.loads(payload)
    if not isinstance(document, dict):
        raise ValueError(f"a stored event is a JSON object, got {type(document).__name__}")
    for name in _REQUIRED:
        value = document.get(name)
        if not isinstance(value, str) or not value:
            got = "nothing" if value is None else show(value)
            raise InvalidEvent(f"{name}: required, a non-empty string; got {got}", attribute=name)
    data: Any = document.pop("data", None)
    encoded = document.pop("data_base64", None)
    if encoded is not None:
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InvalidEvent("data_base64 is not valid base64", attribute="data_base64") from None
    return Event(document, data)


def to_binary_request(stored: bytes, event_type: str) -> tuple[dict[str, str], bytes]:
    """Headers and body that deliver a stored event in binary mode, typed ``event_type``.

    Trace extensions become trace headers again, ``datacontenttype`` the Content-Type (none if
    the publisher set none), everything else a ``ce-*`` header: strings as published, booleans
    ``true``/``false``, integers in decimal, percent-encoded as the HTTP binding requires and
    no further. The body is the data as the publisher sent it: binary-mode bytes unchanged, a
    JSON value serialised compactly (a JSON string keeps its quotes, as JSON requires).
    """
    return binary_request(from_stored(stored), event_type)


def binary_request(event: Event, event_type: str) -> tuple[dict[str, str], bytes]:
    """:func:`to_binary_request` of an event read already (a worker keeps its source and id)."""
    headers: dict[str, str] = {}
    for name, value in {**event.attributes, "type": event_type}.items():
        text = header_form(value)
        if name in tracecontext.HEADER_OF_EXTENSION:
            headers[tracecontext.HEADER_OF_EXTENSION[name]] = text
        elif name == "datacontenttype":
            headers["content-type"] = text
        else:
            headers[f"ce-{name}"] = quote(text, safe=_CE_HEADER_SAFE)
    data = event.data
    content_type = event.get_datacontenttype()
    body: bytes
    if data is None:
        body = b""
    elif isinstance(data, bytes):
        body = data
    elif content_type is None or is_json(content_type):
        body = json_body(data)
    else:
        body = str(data).encode()
    return headers, body


def header_form(value: Value) -> str:
    """An attribute value as CloudEvents writes it in text (spec, "Type System")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_time(value: str) -> str:
    """An RFC 3339 timestamp (``2020-04-02T21:37:00Z``), returned unchanged.

    Any number of fractional digits and a leap second (``23:59:60Z``) are valid; the date must
    exist and the clock fields be in range.

    Raises:
        InvalidEvent: not RFC 3339.
    """
    found = _RFC3339.fullmatch(value)
    if found:
        hour, minute, second = (int(part) for part in found.groups()[3:6])
        offset_hour, offset_minute = (int(part or 0) for part in found.groups()[6:])
        clock_in_range = hour <= 23 and minute <= 59 and second <= 60  # 60: a leap second
        if clock_in_range and offset_hour <= 23 and offset_minute <= 59 and _is_date(found):
            return value
    raise InvalidEvent(
        f"time: expected an RFC 3339 timestamp such as 2020-04-02T21:37:00Z, got {show(value)}",
        attribute="time",
    )


def _is_date(found: re.Match[str]) -> bool:
    try:
        datetime.date(*(int(part) for part in found.groups()[:3]))
    except ValueError:
        return False
    return True


def refuse_lone_surrogates(body: bytes, document: Any) -> None:
    """Refuse parsed JSON holding a lone UTF-16 surrogate (``"\\ud800"``): it is no character,
    no UTF-8 can carry it, and a worker could not encode it for the sink.

    Raises:
        InvalidEvent: a string of ``document`` holds one.
    """
    if not _SURROGATE_ESCAPE.search(body):
        return
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(
            "the body escapes a lone UTF-16 surrogate (such as \\ud800), which is no character",
            attribute="body",
        ) from None


def _load_json(body: bytes) -> Any:
    if not body:
        raise InvalidEvent("the body is empty; expected JSON", attribute="body")
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"the body is not UTF-8 (byte {exc.start})", attribute="body") from None
    except RecursionError:
        raise InvalidEvent("the body is JSON nested too deeply", attribute="body") from None
    except ValueError as exc:
        raise InvalidEvent(f"the body is not valid JSON: {exc}", attribute="body") from None
    refuse_lone_surrogates(body, document)
    return document


def show(value: Any, limit: int = 60) -> str:
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
            f" got {show(value)}",
            attribute=name,
        )
    try:
        urlsplit(value)
    except ValueError as exc:
        raise InvalidEvent(
            f"{name}: must be a URI-reference (RFC 3986): {exc}", attribute=name
        ) from None


def _check_context_value(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(
            f"{name}: expected a non-empty string, got {show(value)}", attribute=name
        )
    if name == "time":
        check_time(value)
    if name == "datacontenttype" and not _MEDIA_TYPE.fullmatch(value):
        raise InvalidEvent(
            "datacontenttype: expected a media type such as application/json, in printable"
            f" ASCII (it is delivered as the Content-Type header), got {show(value)}",
            attribute=name,
        )
    if name == "dataschema":
        _check_uri_reference(name, value)
        if not urlsplit(value).scheme:
            raise InvalidEvent(
                f"dataschema: expected an absolute URI, got {show(value)}", attribute=name
            )


def _check_extension_value(name: str, value: Any) -> None:
    if not _EXTENSION_NAME.fullmatch(name) or name == "data":
        raise InvalidEvent(
            f"extension {show(name)}: names are lower-case letters and digits only, and 'data'"
            " is reserved",
            attribute=name,
        )
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT32:
        raise InvalidEvent(
            f"extension {name!r}: integers must fit in 32 bits, got {value}", attribute=name
        )
    if not isinstance(value, bool | str | int):
        raise InvalidEvent(
            f"extension {name!r}: expected a string, integer or boolean, got {show(value)}",
            attribute=name,
        )
    if name in tracecontext.HEADER_OF_EXTENSION:
        check_trace_value(name, header_form(value), attribute=name)


def check_trace_value(extension: str, value: str, *, attribute: str) -> None:
    """Trace context must be what its spec says: it is delivered as a header of its own.

    Raises:
        InvalidEvent: naming ``attribute`` (the extension, or the header it came in).
    """
    problem = tracecontext.problem(extension, value)
    if problem:
        raise InvalidEvent(f"{attribute}: {problem}, got {show(value)}", attribute=attribute)
