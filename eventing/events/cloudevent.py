"""CloudEvents in and out: the three HTTP modes, validation, and the stored form (pure).

What a sink receives is what the publisher sent: every attribute keeps the value and the text it
was published with, and nothing is added but the documented ``originaltype`` and the trace
extensions taken from request headers. That is why the event model is ours and not the
cloudevents SDK's: the SDK's event fills in a missing ``id`` and ``time``, holds ``time`` as a
datetime (nanoseconds cut to microseconds, ``.491Z`` written back as ``.491000Z``, a leap second
refused), renders a boolean extension as Python's ``True``, and its JSON writer, whose JSON check
is case-sensitive, stores ``Application/JSON`` data as a Python repr. We check the raw input
ourselves, with messages that name the attribute (or header) and say what was expected.

What is stored in JetStream is the event in the structured JSON format: ``data`` as a JSON value
when it arrived as one (structured mode, legacy events), ``data_base64`` when it arrived as bytes
(binary mode), so a sink later receives the very bytes the publisher sent.

Header values are read as a WSGI server passes them (PEP 3333: the bytes, latin-1-decoded), as
UTF-8, then percent-decoded (``ce-*`` only), as the CloudEvents HTTP binding says. Two things a
server may do to a value cannot be undone, so such values are refused (400) instead of stored
changed: granian (in its WSGI and RSGI interfaces alike, and so in the environ proxy.bodies
builds) passes ``""`` for a value with bytes outside visible ASCII, and joins repeated header
lines with ``,``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote, urlsplit

from eventing.errors import InvalidBatch, InvalidEvent, UnsupportedMode

#: An attribute value: a string, or a JSON boolean or integer (extensions only).
Value = str | bool | int
T = TypeVar("T")

STRUCTURED: Final = "application/cloudevents+json"
BATCH: Final = "application/cloudevents-batch+json"
JSON: Final = "application/json"

_REQUIRED: Final = ("specversion", "id", "source", "type")
_CONTEXT: Final = frozenset({*_REQUIRED, "datacontenttype", "dataschema", "subject", "time"})
#: Headers whose value is the event's identity or routing: a comma there may be two header lines
#: joined by the server, and a merged id or type would be stored as another event.
_SINGLE_HEADERS: Final = frozenset({"ce-specversion", "ce-id", "ce-source", "ce-type"})
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

#: W3C Trace Context (https://www.w3.org/TR/trace-context/): version, trace id, parent id, flags,
#: and after a version above 00 possibly more fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACESTATE_KEY = re.compile(
    r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
)
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_TRACESTATE_MEMBERS = 32
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")

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


def parse_http(
    headers: Mapping[str, str], body: bytes, prepare: Callable[[Event], T]
) -> tuple[str, list[T]]:
    """Read the CloudEvent(s) of a ``POST /publish`` request.

    Parameters:
        headers: request headers as a WSGI server passes them (PEP 3333); names are matched
            case-insensitively. A ``Content-Type`` the server could not read must be passed
            as ``""``, not left out.
        body: the raw request body.
        prepare: applied to each valid event (e.g. to find its subject); an
            :class:`InvalidEvent` it raises counts as that event's error.

    Returns:
        The mode (``"binary"``, ``"structured"`` or ``"batch"``) and what ``prepare`` made of
        each event.

    Raises:
        UnsupportedMode: neither a CloudEvents content type nor a ``ce-specversion`` header.
        InvalidBatch: some events of a batch are invalid (each error keyed by index).
        InvalidEvent: the single event is invalid, or a header it needs cannot be read.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    content_type = lowered.get("content-type")
    if content_type is not None:
        content_type = header_text("content-type", content_type)
    mode = media_type(content_type)
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
    """A binary-mode event: attributes from ``ce-*`` headers (lower-case names), data = body.

    Values are percent-decoded as UTF-8 (HTTP binding 3.1.3.2); a comma in ``ce-id``,
    ``ce-source``, ``ce-type`` or ``ce-specversion`` must come as ``%2C``, as the server may
    have joined two header lines with one.
    """
    attributes: dict[str, Any] = {}
    for name, value in headers.items():
        if name.startswith("ce-"):
            text = header_text(name, value)
            if name in _SINGLE_HEADERS and "," in text:
                raise InvalidEvent(
                    f"header {name}: a ',' cannot be told from two {name} headers, which the"
                    " HTTP server joins with one; send a comma in the value as %2C",
                    attribute=name,
                )
            try:
                attributes[name[3:]] = unquote(text, errors="strict")
            except UnicodeDecodeError:
                raise InvalidEvent(
                    f"header {name}: percent-encoded bytes must be UTF-8", attribute=name
                ) from None
    if "content-type" in headers:
        attributes["datacontenttype"] = header_text("content-type", headers["content-type"])
    return build(attributes, body if body else None)


def header_text(name: str, value: str) -> str:
    """A header value as text: the bytes a PEP 3333 server passes (latin-1) read as UTF-8.

    Raises:
        InvalidEvent: the value is empty (granian passes a value it cannot read as ``""``, so
            an empty one may have been anything), or its bytes are not UTF-8.
    """
    if not value:
        raise InvalidEvent(
            f"header {name}: empty, or it held bytes outside printable ASCII, which the proxy's"
            " HTTP server passes on as an empty value; send non-ASCII characters percent-encoded"
            " as UTF-8 (é as %C3%A9), as the CloudEvents HTTP binding does",
            attribute=name,
        )
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise InvalidEvent(f"header {name}: the value is not UTF-8", attribute=name) from None


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
            got = "nothing" if value is None else _show(value)
            raise InvalidEvent(f"{name}: required, a non-empty string; got {got}", attribute=name)
    if attributes["specversion"] != "1.0":
        raise InvalidEvent(
            f"specversion: expected '1.0', got {_show(attributes['specversion'])}",
            attribute="specversion",
        )
    _check_uri_reference("source", attributes["source"])
    for name, value in attributes.items():
        if name in _CONTEXT:
            _check_context_value(name, value)
        else:
            _check_extension_value(name, value)
    return Event(dict(attributes), data)


def with_extensions(event: Event, extensions: Mapping[str, str], *, replace: bool) -> Event:
    """A copy of ``event`` with extra extension attributes.

    ``replace=False`` keeps values the event already has (trace context set by the publisher
    wins over request headers).
    """
    attributes = event.get_attributes()
    for name, value in extensions.items():
        if replace or name not in attributes:
            attributes[name] = value
    return Event(attributes, event.data)


def trace_extensions(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Trace-context request headers as CloudEvent extensions (traceparent, B3).

    Raises:
        InvalidEvent: a trace header is empty or unreadable, ``traceparent`` or ``tracestate``
            is not W3C Trace Context, or a B3 value is not visible ASCII.
    """
    found: dict[str, str] = {}
    for name, value in headers:
        extension = TRACE_HEADERS.get(name.lower())
        if extension:
            text = header_text(name.lower(), value)
            _check_trace_value(extension, text, attribute=name.lower())
            found[extension] = text
    return found


def to_stored(event: Event) -> bytes:
    """The event in the structured JSON format, as stored in JetStream."""
    document: dict[str, Any] = event.get_attributes()
    if isinstance(event.data, bytes):
        document["data_base64"] = base64.b64encode(event.data).decode("ascii")
    elif event.data is not None:
        document["data"] = event.data
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


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
            got = "nothing" if value is None else _show(value)
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
    event = from_stored(stored)
    headers: dict[str, str] = {}
    for name, value in {**event.attributes, "type": event_type}.items():
        text = header_form(value)
        if name in _TRACE_OUT:
            headers[_TRACE_OUT[name]] = text
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
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
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
        f"time: expected an RFC 3339 timestamp such as 2020-04-02T21:37:00Z, got {_show(value)}",
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


def _check_context_value(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidEvent(
            f"{name}: expected a non-empty string, got {_show(value)}", attribute=name
        )
    if name == "time":
        check_time(value)
    if name == "datacontenttype" and not _MEDIA_TYPE.fullmatch(value):
        raise InvalidEvent(
            "datacontenttype: expected a media type such as application/json, in printable"
            f" ASCII (it is delivered as the Content-Type header), got {_show(value)}",
            attribute=name,
        )
    if name == "dataschema":
        _check_uri_reference(name, value)
        if not urlsplit(value).scheme:
            raise InvalidEvent(
                f"dataschema: expected an absolute URI, got {_show(value)}", attribute=name
            )


def _check_extension_value(name: str, value: Any) -> None:
    if not _EXTENSION_NAME.fullmatch(name) or name == "data":
        raise InvalidEvent(
            f"extension {_show(name)}: names are lower-case letters and digits only, and 'data'"
            " is reserved",
            attribute=name,
        )
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT32:
        raise InvalidEvent(
            f"extension {name!r}: integers must fit in 32 bits, got {value}", attribute=name
        )
    if not isinstance(value, bool | str | int):
        raise InvalidEvent(
            f"extension {name!r}: expected a string, integer or boolean, got {_show(value)}",
            attribute=name,
        )
    if name in _TRACE_OUT:
        _check_trace_value(name, header_form(value), attribute=name)


def _check_trace_value(extension: str, value: str, *, attribute: str) -> None:
    """Trace context must be what its spec says: it is delivered as a header of its own."""
    if extension == "traceparent":
        problem = _traceparent_problem(value)
    elif extension == "tracestate":
        problem = _tracestate_problem(value)
    else:
        problem = None if _VISIBLE_ASCII.fullmatch(value) else "expected visible ASCII (B3)"
    if problem:
        raise InvalidEvent(f"{attribute}: {problem}, got {_show(value)}", attribute=attribute)


def _traceparent_problem(value: str) -> str | None:
    found = _TRACEPARENT.fullmatch(value)
    expected = "expected a W3C traceparent such as 00-<32 hex digits>-<16 hex digits>-01"
    if not found:
        return expected
    version, trace_id, parent_id, _, rest = found.groups()
    if version == "ff" or (version == "00" and rest):
        return f"{expected} (version {version} admits no other form)"
    if rest and not _VISIBLE_ASCII.fullmatch(rest):
        return expected
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return f"{expected}, W3C: an all-zero trace id or parent id is invalid"
    return None


def _tracestate_problem(value: str) -> str | None:
    expected = "expected a W3C tracestate: up to 32 key=value members separated by commas"
    members = [member.strip(" \t") for member in value.split(",")]
    keys: set[str] = set()
    for member in filter(None, members):
        key, equals, member_value = member.partition("=")
        if not equals or not _TRACESTATE_KEY.fullmatch(key):
            return expected
        if not _TRACESTATE_VALUE.fullmatch(member_value):
            return f"{expected}, values in printable ASCII without ',' and '='"
        if key in keys:
            return f"{expected}, W3C: each key at most once"
        keys.add(key)
    if len(keys) > _TRACESTATE_MEMBERS:
        return f"{expected}, W3C: at most {_TRACESTATE_MEMBERS} members"
    return None
