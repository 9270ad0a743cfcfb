"""The interop matrix's events and how to compare them the way the CloudEvents spec reads them.

Every event is reduced to a :class:`SpecEvent`: each attribute and extension in the type system's
canonical string form (``true``, ``42``, the RFC 3339 text) and the data as bytes. What a publisher
put on the wire is read with the HTTP binding (percent-decoding binary-mode headers, the JSON
format for structured and batch bodies); that is what every receiver must then hold, whatever
the SDK on the publishing side made of the application's intent.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

SOURCE = "interop"
TYPE = "interop.event.v1"
BASE_TIME = "2026-03-01T10:11:07Z"
NON_ASCII = "Grüße 🌍"
RESERVED = 'say "hi" 100 % sure'  #: space, quote and percent: percent-encoded in binary mode
NON_UTF8 = b"\x00\x01\x80\xfe\xff binary \xc3\x28"

#: What the proxy may add: the type as published, and trace context taken from request headers.
TRACE_EXTENSIONS = frozenset(
    {"traceparent", "tracestate", "b3traceid", "b3spanid", "b3parentspanid", "b3sampled", "b3flags"}
)


def _case(**overrides: Any) -> dict[str, Any]:
    case: dict[str, Any] = {"time": BASE_TIME, "datacontenttype": "application/json"}
    case.update(overrides)
    return case


#: case name -> the event's fields besides id, source and type (the application's intent).
CASES: dict[str, dict[str, Any]] = {
    "non-ascii-subject": _case(subject=NON_ASCII),
    "non-ascii-extension": _case(extensions={"greeting": NON_ASCII}),
    "reserved-chars": _case(subject=RESERVED, extensions={"quoted": RESERVED}),
    "boolean": _case(extensions={"flag": True, "off": False}),
    "integer": _case(extensions={"count": 42, "negative": -7}),
    "nanosecond-time": _case(time="2026-03-01T10:11:07.123456789Z"),
    "millisecond-time": _case(time="2026-03-01T10:11:07.491Z"),
    "no-time": _case(time=None),
    "binary-data": _case(
        datacontenttype="application/octet-stream",
        data_base64=base64.b64encode(NON_UTF8).decode(),
    ),
    "empty-data": _case(datacontenttype=None),
    "implied-json": _case(datacontenttype=None, data_json={"implied": "application/json"}),
    "json-data": _case(
        data_json={"text": NON_ASCII, "n": 1, "ok": True, "none": None, "list": [1.5, "x"]}
    ),
}


def neutral_event(event_id: str, case: str) -> dict[str, Any]:
    """The case as the JSON line every SDK program reads (null fields left out)."""
    fields = {"id": event_id, "source": SOURCE, "type": TYPE, **CASES[case]}
    if case != "empty-data" and "data_base64" not in fields and "data_json" not in fields:
        fields["data_json"] = {"case": case}
    return {name: value for name, value in fields.items() if value is not None}


def intended(event_id: str, case: str) -> SpecEvent:
    """What the application meant to send, read as the spec would."""
    fields = neutral_event(event_id, case)
    extensions = fields.pop("extensions", {})
    if "data_json" in fields:
        fields["data"] = fields.pop("data_json")
    return read_structured({"specversion": "1.0", **extensions, **fields})


@dataclass(frozen=True)
class SpecEvent:
    attributes: dict[str, str]  #: attribute and extension names -> canonical string form
    data: bytes = b""  #: no data and empty data are the same in binary mode
    notes: tuple[str, ...] = ()  #: how the reading departed from the binding's rules
    json_data: bool = False  #: data came as a JSON value, so only its value has to match
    raw_non_ascii: bool = False  #: a ``ce-*`` header held bytes above 0x7F, unencoded


def canonical(value: Any) -> str:
    """The type system's string encoding: Boolean ``true``/``false``, Integer in decimal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def read_structured(document: dict[str, Any]) -> SpecEvent:
    """One event in the JSON format (structured mode, or one element of a batch)."""
    fields = dict(document)
    data_base64, data = fields.pop("data_base64", None), fields.pop("data", None)
    attributes = {name: canonical(value) for name, value in fields.items() if value is not None}
    if data_base64 is not None:
        return SpecEvent(attributes, base64.b64decode(data_base64))
    if data is None:
        return SpecEvent(attributes)
    if isinstance(data, str) and not is_json(attributes.get("datacontenttype", "application/json")):
        return SpecEvent(attributes, data.encode())
    return SpecEvent(attributes, json.dumps(data, ensure_ascii=False).encode(), json_data=True)


def read_binary(headers: dict[str, str], body: bytes) -> SpecEvent:
    """Binary mode: ``ce-*`` headers percent-decoded (HTTP binding 3.1.3.2), the body as data.

    Header text arrives as ISO-8859-1 (WSGI). A value with bytes the binding says must be
    percent-encoded is read as UTF-8 all the same, and noted."""
    attributes: dict[str, str] = {}
    notes: list[str] = []
    raw_non_ascii = False
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "content-type":
            attributes["datacontenttype"] = value
        elif lowered.startswith("ce-"):
            raw = value.encode("latin-1")
            if re.search(rb'[^\x21-\x7e]|"', raw):
                notes.append(f"{lowered} not percent-encoded: {raw!r}")
                raw_non_ascii = raw_non_ascii or re.search(rb"[\x80-\xff]", raw) is not None
            text = raw.decode("utf-8", errors="replace")
            attributes[lowered[3:]] = unquote(text, errors="strict")
    return SpecEvent(attributes, body, tuple(notes), raw_non_ascii=raw_non_ascii)


def read_request(headers: dict[str, str], body: bytes) -> list[SpecEvent]:
    """Every event of one HTTP request, in whichever mode it came."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/cloudevents-batch+json":
        return [read_structured(item) for item in json.loads(body)]
    if content_type == "application/cloudevents+json":
        return [read_structured(json.loads(body))]
    return [read_binary(headers, body)]


def read_sdk_output(line: dict[str, Any]) -> SpecEvent:
    """A receiver program's line: attributes as its SDK typed them, data in base64."""
    attributes = {name: canonical(value) for name, value in line["attributes"].items()}
    data = base64.b64decode(line["data_base64"]) if line["data_base64"] is not None else b""
    return SpecEvent(attributes, data)


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", re.I)


def instant(text: str) -> tuple[str, int] | None:
    """(seconds in UTC as text, nanoseconds), None if it is no RFC 3339 time this reads.

    Only UTC offsets matter here: every SDK writes Z or +00:00."""
    match = _TIME.match(text)
    if match is None or match.group(3).upper() not in ("Z", "+00:00"):
        return None
    return match.group(1), int((match.group(2) or "0")[:9].ljust(9, "0"))


@dataclass(frozen=True)
class Receiver:
    """How one receiver holds what arrives: a limit of its SDK, not of the system under test."""

    name: str
    decodes_percent: bool  #: the SDK percent-decodes binary-mode header values itself
    time_digits: int | None  #: fractional digits its time type keeps; None: the text is kept
    stamps_time: bool = False  #: the SDK gives an event without ``time`` the current time
    seen_encoded: set[str] = field(default_factory=set)  #: attributes the test had to decode


def differences(published: SpecEvent, got: SpecEvent, receiver: Receiver) -> list[str]:
    """Attribute by attribute, what ``receiver`` holds that the publisher did not send."""
    found: list[str] = []
    for name in sorted(published.attributes.keys() | got.attributes.keys()):
        sent, held = published.attributes.get(name), got.attributes.get(name)
        if held is None:
            found.append(f"{name}: missing, sent {sent!r}")
        elif sent is None:
            allowed = (
                (name == "originaltype" and held == published.attributes.get("type"))
                or name in TRACE_EXTENSIONS
                or (name == "time" and receiver.stamps_time)
            )
            if not allowed:
                found.append(f"{name}: added {held!r}, none sent")
        elif name == "time" and receiver.time_digits is not None:
            if not _same_instant(sent, held, receiver.time_digits):
                found.append(
                    f"time: {held!r}, sent {sent!r} (as instants at 1e-{receiver.time_digits} s)"
                )
        elif held != sent:
            if not receiver.decodes_percent and unquote(held, errors="strict") == sent:
                receiver.seen_encoded.add(name)
            else:
                found.append(f"{name}: {held!r}, sent {sent!r}")
    if not _same_data(published, got):
        found.append(f"data: {got.data!r}, sent {published.data!r}")
    return found


def _same_instant(sent: str, held: str, digits: int) -> bool:
    sent_at, held_at = instant(sent), instant(held)
    if sent_at is None or held_at is None:
        return sent == held
    unit = 10 ** (9 - digits)
    return sent_at[0] == held_at[0] and sent_at[1] // unit == held_at[1] // unit


def _same_data(published: SpecEvent, got: SpecEvent) -> bool:
    if published.data == got.data:
        return True
    if not (published.json_data or is_json(published.attributes.get("datacontenttype"))):
        return False
    try:
        return bool(json.loads(published.data) == json.loads(got.data))
    except ValueError:
        return False
