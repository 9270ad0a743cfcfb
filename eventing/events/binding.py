"""The CloudEvents HTTP binding, inbound: the event(s) of a request, from its headers and body
(pure).

A request is in binary mode (attributes in ``ce-*`` headers, the body is the data), structured
mode or batch mode (the JSON formats of :mod:`eventing.events.cloudevent`); trace-context
headers become extensions (:mod:`eventing.events.tracecontext`).

Header values are read as a WSGI server passes them (PEP 3333: the bytes, latin-1-decoded), as
UTF-8, then percent-decoded (``ce-*`` only), as the CloudEvents HTTP binding says. Two things a
server may do to a value cannot be undone, so such values are refused (400) instead of stored
changed: granian (in its WSGI and RSGI interfaces alike, and so in the environ proxy.bodies
builds) passes ``""`` for a value with bytes outside visible ASCII, and joins repeated header
lines with ``,``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar
from urllib.parse import unquote

from eventing.errors import InvalidEvent, UnsupportedMode
from eventing.events import cloudevent, tracecontext

T = TypeVar("T")

#: Headers whose value is the event's identity or routing: a comma there may be two header lines
#: joined by the server, and a merged id or type would be stored as another event.
_SINGLE_HEADERS: Final = frozenset({"ce-specversion", "ce-id", "ce-source", "ce-type"})


def parse_http(
    headers: Mapping[str, str], body: bytes, prepare: Callable[[cloudevent.Event], T]
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
    mode = cloudevent.media_type(content_type)
    if mode == cloudevent.BATCH:
        return "batch", cloudevent.parse_batch(body, prepare)
    if mode == cloudevent.STRUCTURED:
        return "structured", [prepare(cloudevent.parse_structured(body))]
    if mode.startswith("application/cloudevents"):
        raise UnsupportedMode(
            f"unsupported CloudEvents format {cloudevent.show(mode)}: expected"
            f" {cloudevent.STRUCTURED} or {cloudevent.BATCH}",
            attribute="content-type",
        )
    if "ce-specversion" in lowered:
        return "binary", [prepare(parse_binary(lowered, body))]
    raise UnsupportedMode(
        "the request is no CloudEvent: expected binary mode (ce-specversion, ce-id, ce-source and"
        f" ce-type headers), or Content-Type {cloudevent.STRUCTURED} or {cloudevent.BATCH}",
        attribute="content-type",
    )


def parse_binary(headers: Mapping[str, str], body: bytes) -> cloudevent.Event:
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
    return cloudevent.build(attributes, body if body else None)


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


def trace_extensions(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Trace-context request headers as CloudEvent extensions (traceparent, B3).

    Raises:
        InvalidEvent: a trace header is empty or unreadable, ``traceparent`` or ``tracestate``
            is not W3C Trace Context, or a B3 value is not visible ASCII.
    """
    found: dict[str, str] = {}
    for name, value in headers:
        extension = tracecontext.EXTENSION_OF_HEADER.get(name.lower())
        if extension:
            text = header_text(name.lower(), value)
            cloudevent.check_trace_value(extension, text, attribute=name.lower())
            found[extension] = text
    return found
    return found
