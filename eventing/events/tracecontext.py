"""Trace context: the headers that carry it, the extensions they become, what a value may be (pure).

Kyma's proxy turns W3C Trace Context and B3 request headers into CloudEvent extensions, and a
delivery turns them back into the same headers (kyma-eventing.md §2.8). A trace value travels
as a header of its own at both ends, so it must be what its spec says, whether it came as a
header or as an extension the publisher set: :func:`problem` says what is wrong with one.
"""

from __future__ import annotations

import re
from typing import Final

#: W3C Trace Context (https://www.w3.org/TR/trace-context/): version, trace id, parent id, flags,
#: and after a version above 00 possibly more fields.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_TRACESTATE_KEY = re.compile(
    r"[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
)
_TRACESTATE_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_TRACESTATE_MEMBERS = 32
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")

#: Request headers (lower case) that carry trace context, and the extension each one becomes.
EXTENSION_OF_HEADER: Final = {
    "traceparent": "traceparent",
    "tracestate": "tracestate",
    "x-b3-traceid": "b3traceid",
    "x-b3-parentspanid": "b3parentspanid",
    "x-b3-spanid": "b3spanid",
    "x-b3-sampled": "b3sampled",
    "x-b3-flags": "b3flags",
}
#: Trace extensions and the HTTP header each one goes back to when delivered.
HEADER_OF_EXTENSION: Final = {
    "traceparent": "traceparent",
    "tracestate": "tracestate",
    "b3traceid": "X-B3-TraceId",
    "b3parentspanid": "X-B3-ParentSpanId",
    "b3spanid": "X-B3-SpanId",
    "b3sampled": "X-B3-Sampled",
    "b3flags": "X-B3-Flags",
}


def problem(extension: str, value: str) -> str | None:
    """What is wrong with ``value`` as the trace extension ``extension``; None: nothing."""
    if extension == "traceparent":
        return _traceparent_problem(value)
    if extension == "tracestate":
        return _tracestate_problem(value)
    return None if _VISIBLE_ASCII.fullmatch(value) else "expected visible ASCII (B3)"


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
